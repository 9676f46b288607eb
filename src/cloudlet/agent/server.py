"""The agent's own HTTP API, on loopback, for the control plane (and `cloudlet down`): the things only the
host can do. Callers show the key the agent reported in its heartbeat (also in its 0600 endpoint file)."""

from __future__ import annotations

__all__ = ["create_agent_app"]

import hmac
import os
import tempfile
import threading
from collections.abc import Callable
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
from cloudlet.compute.drivers.base import CONSOLE_PAGE
from cloudlet.core.errors import CloudletError, Unauthorized


class ExecBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: list[str] = Field(min_length=1, max_length=256)
    timeout: float = Field(60.0, gt=0, le=3600)


class ShutdownBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purge: bool = False


def _id() -> Any:
    """Ids name host paths, so nothing but an id gets through (one fresh parameter per route)."""
    return PathParam(pattern=r"^[0-9a-z]{26}$")


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

    @app.post("/shutdown", dependencies=[Depends(authorized)])
    def shutdown(body: ShutdownBody) -> dict[str, Any]:
        agent.shutdown_host(body.purge)
        threading.Timer(0.1, on_shutdown).start()  # answer first, then stop serving
        return {"host": agent.host, "purged": body.purge}

    return app
