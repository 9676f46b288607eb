"""Info, tenants and repair."""

from __future__ import annotations

import secrets
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from cloudlet import __version__
from cloudlet.api.deps import NamePath, caller, get_cloud, page
from cloudlet.api.routes.hosts import host_names
from cloudlet.compute import idmap
from cloudlet.compute.hosts import HOST_KIND, host_view
from cloudlet.core import quota
from cloudlet.core.context import ADMIN_TENANT, PUBLIC_TENANT, SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.errors import Conflict
from cloudlet.core.kinds import TENANT
from cloudlet.core.records import JsonNumber, Name, Resource, check_name
from cloudlet.network import ipam
from cloudlet.network.outside import EIP_POOL_SIZE
from cloudlet.storage.resource import TenantSpec

router = APIRouter(prefix="/v1", tags=["system"])
RESERVED = {ADMIN_TENANT, PUBLIC_TENANT, SYSTEM_TENANT}


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name


@router.get("/info")
def info(request: Request, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    hosts = [host_view(h) for h in cloud.store.list(HOST_KIND)]
    api_port = request.url.port
    return {
        "version": __version__,
        "cloud_id": cloud.config.cloud_id(),
        "tenant": who.tenant,
        "role": who.role,
        "api": str(request.base_url).rstrip("/"),
        "zone": cloud.config.zone,
        "compute_driver": cloud.config.compute_driver,
        "home": str(cloud.config.home),
        "database": cloud.store.engine.url.get_backend_name(),
        "hosts": [{k: h[k] for k in ("name", "zone", "state", "endpoint", "dns_port")} for h in hosts],
        "ports": {
            "api": api_port,
            **{f"dns@{h['name']}": h["dns_port"] for h in hosts},
            **{f"agent@{h['name']}": _port(h["endpoint"]) for h in hosts},
        },
    }


def _port(url: str | None) -> int | None:
    return int(url.rsplit(":", 1)[1]) if url and ":" in url.removeprefix("http://") else None


@router.post("/shutdown", status_code=202)
def shutdown(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    """Stops cloudletd (not the agents: `cloudlet down` stops those first, through their own API)."""
    who.require_admin("shutting the control plane down")
    stop = getattr(request.app.state, "shutdown", None)
    if stop is not None:
        threading.Timer(0.1, stop).start()  # answer first
    return {"stopping": stop is not None}


@router.post("/tenants", status_code=201)
def create_tenant(
    body: TenantCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    who.require_admin("creating tenants")
    check_name("tenant", body.name)
    if body.name in RESERVED or cloud.store.has_tenant(body.name):
        raise Conflict(f"tenant {body.name!r} already exists")
    token = secrets.token_urlsafe(32)
    with idmap.lock:
        spec = TenantSpec(uid_slot=idmap.next_slot(cloud)).dump()
        cloud.store.create(
            Resource(kind=TENANT, tenant=body.name, name=body.name, spec=spec, phase="ready"),
            created=f"tenant {body.name} created",
        )
    cloud.store.add_token(token, body.name, "member")
    return {"name": body.name, "token": token}


class QuotaUpdate(BaseModel):
    """New limits (core/quota.py); those not given stay as they are. A lower limit than the usage refuses only
    what would add to it."""

    model_config = ConfigDict(extra="forbid")
    instances: Annotated[int, Field(ge=0, le=100_000), JsonNumber] | None = None
    vcpus: Annotated[int, Field(ge=0, le=1_000_000), JsonNumber] | None = None
    memory_mib: Annotated[int, Field(ge=0, le=1 << 30), JsonNumber] | None = None
    # at most half the address space in /20s, so one tenant never exhausts it (network/ipam.py)
    networks: Annotated[int, Field(ge=0, le=ipam.MAX_TENANT_NETWORKS), JsonNumber] | None = None
    addresses: Annotated[int, Field(ge=0, le=ipam.SPACE.num_addresses), JsonNumber] | None = None
    volumes: Annotated[int, Field(ge=0, le=1_000_000), JsonNumber] | None = None
    volume_gib: Annotated[int, Field(ge=0, le=1_000_000_000), JsonNumber] | None = None
    snapshots: Annotated[int, Field(ge=0, le=1_000_000), JsonNumber] | None = None
    eips: Annotated[int, Field(ge=0, le=EIP_POOL_SIZE), JsonNumber] | None = None  # a cloud's pool holds no more
    stacks: Annotated[int, Field(ge=0, le=10_000), JsonNumber] | None = None


def _tenant_view(cloud: Cloud, name: str) -> dict[str, Any]:
    """A tenant and, per quota, what it uses and its limit (none for the admin)."""
    created = None if name == ADMIN_TENANT else cloud.store.get(TENANT, name, name).created_at
    return {"name": name, "created_at": created, "quota": quota.report(cloud.store, name)}


@router.get("/tenants/{name}")
def show_tenant(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    if name != who.tenant:
        who.require_admin("showing another tenant")
    return _tenant_view(cloud, name)


@router.put("/tenants/{name}/quota")
def set_quota(
    name: NamePath, body: QuotaUpdate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    who.require_admin("setting quotas")
    res = cloud.store.get(TENANT, name, name)
    spec = TenantSpec.of(res)
    spec.quota = {**spec.quota, **body.model_dump(exclude_none=True)}
    res = cloud.store.update_spec(res.id, spec.dump())
    cloud.store.add_event(res, "QuotaSet", f"quota {spec.quota}")
    return _tenant_view(cloud, name)


@router.get("/tenants")
def list_tenants(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("listing tenants")
    return page([{"name": r.name, "created_at": r.created_at} for r in cloud.store.list(TENANT)])


@router.get("/repair")
def repair_check(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Each host's agent matches its artefacts to the records it serves."""
    who.require_admin("repair")
    return page([f for h in host_names(cloud) for f in cloud.hosts.agent(h).repair(fix=False)["findings"]])


@router.post("/repair")
def repair_fix(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("repair")
    results = [cloud.hosts.agent(h).repair(fix=True) for h in host_names(cloud)]
    return {
        "findings": [f for r in results for f in r["findings"]],
        "actions": [a for r in results for a in r["actions"]],
    }
