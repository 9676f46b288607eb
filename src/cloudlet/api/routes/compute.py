"""Instances: launch, list, show, actions, exec, console, delete."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from cloudlet.api.deps import NamePath, caller, get_cloud
from cloudlet.api.limits import ExecSlots
from cloudlet.api.listcache import RenderCache
from cloudlet.api.routes.labels import label_selector
from cloudlet.chaos import faults
from cloudlet.chaos.faults import FaultRequest
from cloudlet.compute import instances, placement
from cloudlet.compute.drivers.base import CONSOLE_PAGE
from cloudlet.compute.resource import InstanceStatus
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.errors import CloudletError, Conflict, Forbidden
from cloudlet.core.labels import Selector
from cloudlet.network.metadata import documents, metadata_of
from cloudlet.resilience import recovery
from cloudlet.storage import replication
from cloudlet.storage.resource import SNAPSHOT

router = APIRouter(prefix="/v1/instances", tags=["instances"])


@router.get("", response_class=Response)
def list_instances(
    request: Request,
    limit: int = Query(1000, ge=1, le=100_000),
    after: str | None = Query(None, max_length=26),
    who: Caller = Depends(caller),
    sel: Selector = Depends(label_selector),
) -> Response:
    cache: RenderCache = request.app.state.instance_list
    return Response(cache.page(who.tenant, limit, after, sel), media_type="application/json")


@router.post("", status_code=202)
def launch(
    body: instances.InstanceCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return instances.instance_view(instances.launch(cloud, who, body))


@router.get("/{name}")
def show_instance(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    res = cloud.store.get(instances.KIND, who.tenant, name)
    view = instances.instance_view(res)
    view["replica"] = replication.replica_view(replication.replica_of(cloud.store, res.id))
    view["stats"] = {}
    if InstanceStatus.of(res).state == "running" and res.host:
        try:
            view["stats"] = cloud.hosts.agent(res.host).stats(res.id)
        except CloudletError as exc:  # the record is still worth showing
            view["stats"] = {"error": exc.message}
    return view


@router.get("/{name}/why")
def why(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Why the instance is where it is, or is nowhere: every host the scheduler weighed (at most 64, `more`
    counts the rest) with its verdict and the filter that rejected it or the weights that ranked it."""
    return placement.explain(cloud.store.get(instances.KIND, who.tenant, name))


@router.post("/{name}/actions", status_code=202)
def act(
    name: NamePath, body: instances.InstanceAction, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return instances.instance_view(instances.act(cloud, who, name, body.action))


@router.post("/{name}/recover", status_code=202)
def recover(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Fence the instance, keep a forensic snapshot of its disk and start a replacement (replica, else newest
    snapshot, else image): what a failed health check does by itself. Progress is in its events."""
    res = cloud.store.get(instances.KIND, who.tenant, name)
    return instances.instance_view(recovery.request_recovery(cloud, res, "recovery requested by hand"))


@router.post("/{name}/replace", status_code=202)
def replace(
    name: NamePath, body: recovery.ReplaceRequest, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Swap the instance's root disk for a clone of an instance snapshot and restart it, keeping its names,
    address, EIP and load balancer membership (upgrade by clone-and-swap)."""
    res = cloud.store.get(instances.KIND, who.tenant, name)
    found = cloud.store.list(SNAPSHOT, tenant=who.tenant, name=body.from_snapshot)
    if not found:  # a 404 would say the instance is missing
        raise Conflict(f"snapshot {body.from_snapshot} does not exist; take one with 'cloudlet snapshot create {name}'")
    return instances.instance_view(recovery.replace_from_snapshot(cloud, res, found[0]))


@router.post("/{name}/exec")
async def exec_in(
    name: NamePath,
    body: instances.ExecRequest,
    request: Request,
    cloud: Cloud = Depends(get_cloud),
    who: Caller = Depends(caller),
) -> dict[str, Any]:
    """Runs a command in the instance and answers its exit code and output (each stream cut at a cap, then
    `truncated`); a tenant runs a few at a time (429 beyond), each for at most the cloud's maximum timeout."""
    most = cloud.config.exec_max_timeout
    if body.timeout > most:  # the cloud's setting, below the schema's bound: a refusal, not a malformed value
        raise Forbidden(f"timeout: {body.timeout:g} s is more than the maximum of {most:g} s an exec may run")
    slots: ExecSlots = request.app.state.exec_slots
    with slots.take(who.tenant):
        run = partial(instances.exec_in, cloud, who, name, body)
        result: dict[str, Any] = await anyio.to_thread.run_sync(run, limiter=slots.threads)
    return result


@router.post("/{name}/chaos")
def chaos(
    name: NamePath, body: FaultRequest, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Injects a fault into your own running instance, or undoes one (`cloudlet chaos`, cloudlet.chaos.actions):
    kill (SIGKILL of its init), pause/resume (cgroup freezer), throttle/unthrottle (CPU quota), drop (a share of
    packets) / partition / heal (nftables in its netns), bandwidth (tbf) / latency (netem, where the kernel has it) /
    unshape. Each is a Warning event on the instance."""
    return faults.inject_fault(cloud, who, name, body)


@router.get("/{name}/console")
def console(
    name: NamePath,
    offset: int | None = Query(None, ge=0, description="first byte to read; without it, the last `limit` bytes"),
    limit: int = Query(65536, ge=1, le=CONSOLE_PAGE, description="bytes to read at most"),
    cloud: Cloud = Depends(get_cloud),
    who: Caller = Depends(caller),
) -> dict[str, Any]:
    """A page of what the instance printed: `output` is bytes [offset, next_offset) of its console log, which is
    `size` bytes long now; read on from `next_offset`."""
    res = cloud.store.get(instances.KIND, who.tenant, name)
    empty = {"output": "", "offset": 0, "next_offset": 0, "size": 0}
    page = cloud.hosts.agent(res.host).console_log(res.id, offset, limit) if res.host else empty
    return {"name": name, **page}


@router.get("/{name}/metadata")
def metadata(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """What the instance reads from http://169.254.169.254/latest/ (served by its host's agent): every document by
    its path under /latest/."""
    res = cloud.store.get(instances.KIND, who.tenant, name)
    return {"name": name, "documents": documents(metadata_of(cloud.store, res, res.zone or cloud.config.zone))}


@router.delete("/{name}", status_code=202)
def delete(
    name: NamePath,
    cascade: bool = Query(False, description="also delete its snapshots and their clones"),
    cloud: Cloud = Depends(get_cloud),
    who: Caller = Depends(caller),
) -> dict[str, Any]:
    deleted = instances.delete_instance(cloud, who, name, cascade)
    return {**instances.instance_view(deleted[-1]), "deleted": [{"kind": r.kind, "name": r.name} for r in deleted]}
