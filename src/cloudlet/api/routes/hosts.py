"""Hosts (admin: list, show) and the agent protocol: list, watch, outbox ops, heartbeats (host tokens only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from cloudlet.api.deps import agent_caller, caller, get_cloud, page
from cloudlet.api.routes.labels import label_selector
from cloudlet.compute.hosts import HOST_KIND, AgentOps, Heartbeat, host_view
from cloudlet.core.context import SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.labels import Selector

router = APIRouter(tags=["hosts"])
OWN_AUTH = True  # users' routes and the agent protocol take different tokens
KINDS = Query(..., max_length=200, pattern=r"^[A-Za-z,]+$", description="comma-separated kinds")


def host_names(cloud: Cloud) -> list[str]:
    return [h.name for h in cloud.store.list(HOST_KIND, tenant=SYSTEM_TENANT)]


@router.get("/v1/hosts")
def list_hosts(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    who.require_admin("listing hosts")
    return page([host_view(h) for h in cloud.store.list(HOST_KIND, tenant=SYSTEM_TENANT) if sel.matches(h.labels)])


@router.get("/v1/hosts/{name}")
def show_host(name: str, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("showing hosts")
    return host_view(cloud.store.get(HOST_KIND, SYSTEM_TENANT, name))


@router.post("/v1/hosts/{name}/heartbeat")
def heartbeat(
    name: str, body: Heartbeat, cloud: Cloud = Depends(get_cloud), agent: Caller = Depends(agent_caller)
) -> dict[str, Any]:
    return host_view(cloud.agent_api.heartbeat(agent, name, body))


@router.get("/v1/agent/records")
def agent_list(
    kinds: str = KINDS, cloud: Cloud = Depends(get_cloud), agent: Caller = Depends(agent_caller)
) -> dict[str, Any]:
    return cloud.agent_api.list(agent, kinds.split(","))


@router.get("/v1/agent/watch")
def agent_watch(
    rev: int = Query(..., ge=0),
    kinds: str = KINDS,
    timeout: float = Query(20.0, ge=0, le=60),
    cloud: Cloud = Depends(get_cloud),
    agent: Caller = Depends(agent_caller),
) -> dict[str, Any]:
    """Changes after `rev`, waiting up to `timeout` seconds for the first one (long-poll)."""
    return cloud.agent_api.wait(agent, rev, kinds.split(","), timeout)


@router.post("/v1/agent/ops")
def agent_ops(
    body: AgentOps, cloud: Cloud = Depends(get_cloud), agent: Caller = Depends(agent_caller)
) -> dict[str, int]:
    return cloud.agent_api.apply(agent, body)
