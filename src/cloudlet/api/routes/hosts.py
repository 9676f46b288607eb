"""Hosts (admin: list, show) and the agent protocol: list, watch, outbox ops, heartbeats (host tokens only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from cloudlet.api.deps import agent_caller, caller, get_cloud, page
from cloudlet.api.routes.labels import label_selector
from cloudlet.compute.hosts import (
    FENCED,
    HOST_KIND,
    LEASE_EXPIRED,
    AgentOps,
    Heartbeat,
    HostJoin,
    host_view,
    join_host,
    remove_host,
    set_cordoned,
)
from cloudlet.core.context import SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.errors import Conflict
from cloudlet.core.labels import Selector
from cloudlet.resilience.drain import drain_state, start_drain

router = APIRouter(tags=["hosts"])
OWN_AUTH = True  # users' routes and the agent protocol take different tokens
KINDS = Query(..., max_length=200, pattern=r"^[A-Za-z,]+$", description="comma-separated kinds")


def host_names(cloud: Cloud) -> list[str]:
    """The hosts whose agents a cloud-wide report asks: not one that never reported an agent (joining) or whose
    processes are gone (fenced, lease expired); a silent one that is still up answers 503, naming it."""
    return [
        h.name
        for h in cloud.store.list(HOST_KIND, tenant=SYSTEM_TENANT)
        if h.status.get("endpoint") and h.phase not in (FENCED, LEASE_EXPIRED)
    ]


@router.get("/v1/hosts")
def list_hosts(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    who.require_admin("listing hosts")
    return page([host_view(h) for h in cloud.store.list(HOST_KIND, tenant=SYSTEM_TENANT) if sel.matches(h.labels)])


@router.get("/v1/hosts/{name}")
def show_host(name: str, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("showing hosts")
    view = host_view(cloud.store.get(HOST_KIND, SYSTEM_TENANT, name))
    # its phase changes and fencing, with their timings (resilience/monitor.py): hosts are no tenant's
    events = cloud.store.list_events(SYSTEM_TENANT, name, 20)
    return {
        **view,
        "events": [{"time": e.time, "type": e.type, "reason": e.reason, "message": e.message} for e in events],
    }


@router.post("/v1/hosts", status_code=201)
def add_host(body: HostJoin, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Registers a host (or a wiped one again) and issues its agent token, shown this once."""
    who.require_admin("adding hosts")
    if body.name == cloud.config.host:  # a new token would cut the running agent of this machine's own host off
        raise Conflict(f"host {body.name} is the control plane machine's own host; choose another name")
    res, token = join_host(cloud.store, body)
    cloud.placement.invalidate()
    return {**host_view(res), "token": token}


@router.delete("/v1/hosts/{name}")
def delete_host(
    name: str, force: bool = False, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Removes a host that holds nothing (or, with force, re-places its instances and forgets its disks)."""
    who.require_admin("removing hosts")
    released = remove_host(cloud.store, name, force)
    cloud.placement.invalidate()
    return {"name": name, "released": [{"kind": r.kind, "name": r.name, "tenant": r.tenant} for r in released]}


def _cordon(cloud: Cloud, who: Caller, name: str, on: bool) -> dict[str, Any]:
    who.require_admin("cordoning hosts" if on else "uncordoning hosts")
    res = set_cordoned(cloud.store, name, on)
    cloud.placement.invalidate()
    return host_view(res)


@router.post("/v1/hosts/{name}/cordon")
def cordon(name: str, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Places nothing new on the host; what runs there stays."""
    return _cordon(cloud, who, name, True)


@router.post("/v1/hosts/{name}/uncordon")
def uncordon(name: str, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Lets placement use the host again."""
    return _cordon(cloud, who, name, False)


@router.post("/v1/hosts/{name}/drain", status_code=202)
def drain(name: str, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Cordons the host and moves every instance off it in the background (stop, ship the last disk delta, start
    on the target); again while one runs: its progress; again after: continues. GET .../drain follows it."""
    who.require_admin("draining hosts")
    return start_drain(cloud, name)


@router.get("/v1/hosts/{name}/drain")
def drain_progress(name: str, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """The running or last drain: state (running, done, failed, interrupted), moved, total, failed (instance and
    reason), moves (instance, to, downtime_s, bytes), started_at, took_s."""
    who.require_admin("showing drains")
    return drain_state(cloud, name)


@router.post("/v1/hosts/{name}/heartbeat")
def heartbeat(
    name: str, body: Heartbeat, cloud: Cloud = Depends(get_cloud), agent: Caller = Depends(agent_caller)
) -> dict[str, Any]:
    return cloud.agent_api.heartbeat(agent, name, body)  # the host's view plus its lease (resilience/lease.py)


# an agent with a scoped view names the tenants it runs something for (compute/hosts.py SCOPED_KINDS)
TENANTS = Query(None, max_length=1 << 20, description="comma-separated tenants of a scoped view; absent: every one")


def _tenants(tenants: str | None) -> list[str] | None:
    return None if tenants is None else [t for t in tenants.split(",") if t]


@router.get("/v1/agent/records")
def agent_list(
    kinds: str = KINDS,
    tenants: str | None = TENANTS,
    cloud: Cloud = Depends(get_cloud),
    agent: Caller = Depends(agent_caller),
) -> dict[str, Any]:
    return cloud.agent_api.list(agent, kinds.split(","), _tenants(tenants))


@router.get("/v1/agent/watch")
def agent_watch(
    rev: int = Query(..., ge=0),
    kinds: str = KINDS,
    timeout: float = Query(20.0, ge=0, le=60),
    tenants: str | None = TENANTS,
    cloud: Cloud = Depends(get_cloud),
    agent: Caller = Depends(agent_caller),
) -> dict[str, Any]:
    """Changes after `rev`, waiting up to `timeout` seconds for the first one (long-poll)."""
    return cloud.agent_api.wait(agent, rev, kinds.split(","), timeout, _tenants(tenants))


@router.post("/v1/agent/ops")
def agent_ops(
    body: AgentOps, cloud: Cloud = Depends(get_cloud), agent: Caller = Depends(agent_caller)
) -> dict[str, int]:
    return cloud.agent_api.apply(agent, body)
