"""The agent's own HTTP API, on loopback, for the control plane (and `cloudlet down`): the things only the
host can do. Callers show the key the agent reported in its heartbeat (also in its 0600 endpoint file)."""

from __future__ import annotations

__all__ = ["create_agent_app"]

import hmac
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from cloudlet.agent.agent import Agent
from cloudlet.agent.client import ReplicaClient
from cloudlet.chaos.faults import FaultRequest
from cloudlet.compute.drivers.base import CONSOLE_PAGE
from cloudlet.core.errors import CloudletError, Conflict, Unauthorized
from cloudlet.storage import replication


class ExecBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: list[str] = Field(min_length=1, max_length=256)
    timeout: float = Field(60.0, gt=0, le=3600)


class ShutdownBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purge: bool = False


class ShipBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(max_length=63, pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
    endpoint: str = Field(max_length=200, pattern=r"^https?://")
    token: str = Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]+$")


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    into: str = Field(pattern=r"^(disks|volumes)/[0-9a-z]{26}$")


def _id() -> Any:
    """Ids name host paths, so nothing but an id gets through (one fresh parameter per route)."""
    return PathParam(pattern=r"^[0-9a-z]{26}$")


def _area() -> Any:
    """Replicas are only ever of instance root disks and volumes."""
    return PathParam(pattern=r"^(disks|volumes)$")


def create_agent_app(agent: Agent, uploads: Path, on_shutdown: Callable[[], None]) -> FastAPI:
    app = FastAPI(title="cloudlet agent", version="0.2.0", openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(CloudletError)
    async def _error(_: Request, exc: CloudletError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": {"code": exc.code, "message": exc.message}})

    def authorized(request: Request) -> None:
        _, _, key = request.headers.get("authorization", "").partition(" ")
        if not hmac.compare_digest(key.strip().encode(), agent.key.encode()):
            raise Unauthorized("this agent answers only its control plane")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"host": agent.host, "connected": agent.connected}

    @app.get("/lease")
    def lease() -> dict[str, Any]:
        """For peer agents deciding whether to self-fence (resilience/lease.py): no key, three fields, read-only."""
        return agent.lease.answer()

    # execs wait on threads of their own: long ones must not take the shared pool the other routes run in
    exec_threads = anyio.CapacityLimiter(agent.ctx.config.exec_total)

    @app.post("/instances/{iid}/exec", dependencies=[Depends(authorized)])
    async def exec_(body: ExecBody, iid: str = _id()) -> dict[str, Any]:
        run = partial(agent.exec_instance, iid, body.command, body.timeout)
        result: dict[str, Any] = await anyio.to_thread.run_sync(run, limiter=exec_threads)
        return result

    @app.get("/instances/{iid}/console", dependencies=[Depends(authorized)])
    def console(
        iid: str = _id(), offset: int | None = Query(None, ge=0), limit: int = Query(65536, ge=1, le=CONSOLE_PAGE)
    ) -> dict[str, Any]:
        return agent.console_log(iid, offset, limit)

    @app.get("/instances/{iid}/stats", dependencies=[Depends(authorized)])
    def stats(iid: str = _id()) -> dict[str, Any]:
        return agent.stats(iid)

    @app.post("/instances/{iid}/chaos", dependencies=[Depends(authorized)])
    def chaos(body: FaultRequest, iid: str = _id()) -> dict[str, Any]:
        return agent.chaos_instance(iid, body.model_dump(exclude_none=True))

    @app.get("/volumes/{vid}/usage", dependencies=[Depends(authorized)])
    def volume_usage(vid: str = _id()) -> dict[str, int]:
        return agent.volume_usage(vid)

    @app.get("/storage/usage", dependencies=[Depends(authorized)])
    def storage_usage() -> dict[str, Any]:
        return agent.storage_report()

    @app.get("/storage/garbage", dependencies=[Depends(authorized)])
    def garbage() -> list[dict[str, Any]]:
        return agent.garbage(collect=False)

    @app.post("/storage/garbage", dependencies=[Depends(authorized)])
    def collect() -> list[dict[str, Any]]:
        return agent.garbage(collect=True)

    @app.get("/repair", dependencies=[Depends(authorized)])
    def repair_check() -> dict[str, Any]:
        return agent.repair(fix=False)

    @app.post("/repair", dependencies=[Depends(authorized)])
    def repair_fix() -> dict[str, Any]:
        return agent.repair(fix=True)

    @app.put("/images/{digest}", dependencies=[Depends(authorized)])
    async def import_image(
        request: Request, digest: str = PathParam(pattern=r"^import-[0-9a-f]{16}$")
    ) -> dict[str, Any]:
        fd, tmp = tempfile.mkstemp(dir=uploads, suffix=".tar")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
            await run_in_threadpool(agent.import_image, digest, Path(tmp))
        finally:
            os.unlink(tmp)
        return {"digest": digest}

    def replica_holder(request: Request, area: str = _area(), sid: str = _id()) -> str:
        """A peer agent shipping a volume here shows the token the control plane made for this volume and this
        host's key (storage/replication.py): one volume's replicas, nothing else. Answers the volume's name."""
        volume = f"{area}/{sid}"
        _, _, token = request.headers.get("authorization", "").partition(" ")
        if not hmac.compare_digest(token.strip().encode(), replication.replica_token(agent.key, volume).encode()):
            raise Unauthorized(f"no replica of {volume} is to be kept on host {agent.host}")
        return volume

    receives = anyio.CapacityLimiter(2)  # each holds a btrfs receive and a thread
    receiving: dict[str, threading.Lock] = {}

    @app.get("/replicas/{area}/{sid}")
    def replica_seqs(volume: str = Depends(replica_holder)) -> dict[str, Any]:
        return {"seqs": replication.seqs(agent.ctx.pool, volume)}

    @app.put("/replicas/{area}/{sid}")
    async def replica_receive(
        request: Request,
        volume: str = Depends(replica_holder),
        seq: int = Query(ge=1, le=1 << 62),
        parent: int | None = Query(None, ge=1, le=1 << 62),
    ) -> dict[str, Any]:
        body = request.stream().__aiter__()

        async def next_chunk() -> bytes:
            return await body.__anext__()

        def chunks() -> Iterator[bytes]:  # the body, read on the event loop, for the receive's thread
            while True:
                try:
                    yield anyio.from_thread.run(next_chunk)
                except StopAsyncIteration:
                    return

        def receive() -> dict[str, Any]:
            lock = receiving.setdefault(volume, threading.Lock())
            if not lock.acquire(blocking=False):
                raise Conflict(f"a replica of {volume} is being received already")
            try:
                return replication.receive(agent.ctx.pool, volume, seq, chunks())
            finally:
                lock.release()

        result: dict[str, Any] = await anyio.to_thread.run_sync(receive, limiter=receives)
        return result

    @app.delete("/replicas/{area}/{sid}")
    def replica_drop(volume: str = Depends(replica_holder)) -> dict[str, Any]:
        replication.drop(agent.ctx.pool, volume)
        return {"volume": volume}

    @app.post("/replicas/{area}/{sid}/promote", dependencies=[Depends(authorized)])
    def replica_promote(body: PromoteBody, area: str = _area(), sid: str = _id()) -> dict[str, Any]:
        return replication.promote(agent.ctx.pool, f"{area}/{sid}", body.into)

    shippers: dict[tuple[str, str, str], ReplicaClient] = {}  # one connection pool per (host, endpoint, token)

    @app.post("/replicas/{area}/{sid}/ship", dependencies=[Depends(authorized)])
    def replica_ship(body: ShipBody, area: str = _area(), sid: str = _id()) -> dict[str, Any]:
        """One replica of this host's volume shipped now to the host the body names, with the token the control
        plane made for it there (a drain's pre-copy and last delta, resilience/drain.py)."""
        key = (body.host, body.endpoint, body.token)
        client = shippers.get(key) or shippers.setdefault(key, ReplicaClient(*key))
        return replication.ship_once(agent.ctx.pool, f"{area}/{sid}", client)

    @app.post("/replicas/{area}/{sid}/promote-over", dependencies=[Depends(authorized)])
    def replica_promote_over(body: PromoteBody, area: str = _area(), sid: str = _id()) -> dict[str, Any]:
        """promote, replacing `into` left by a move that stopped half way (resilience/drain.py); refused while a
        record placed on this host owns it."""
        owner = agent.ctx.store.get_by_id(body.into.partition("/")[2])
        if owner is not None and owner.host == agent.host:
            raise Conflict(f"{body.into} belongs to {owner.kind.lower()} {owner.name}, which runs on this host")
        if agent.ctx.pool.exists(body.into):
            agent.ctx.pool.delete(body.into)
        return replication.promote(agent.ctx.pool, f"{area}/{sid}", body.into)

    @app.post("/shutdown", dependencies=[Depends(authorized)])
    def shutdown(body: ShutdownBody) -> dict[str, Any]:
        agent.shutdown_host(body.purge)
        threading.Timer(0.1, on_shutdown).start()  # answer first, then stop serving
        return {"host": agent.host, "purged": body.purge}

    return app
