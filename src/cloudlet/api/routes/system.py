"""Info, tenants and repair."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from cloudlet import repair
from cloudlet.api.app import caller, get_cloud, page
from cloudlet.core.context import ADMIN_TENANT, PUBLIC_TENANT, SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.errors import Conflict
from cloudlet.core.records import Resource, check_name
from cloudlet.storage.volumes import quota_of

router = APIRouter(prefix="/v1", tags=["system"])
RESERVED = {ADMIN_TENANT, PUBLIC_TENANT, SYSTEM_TENANT}


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


@router.get("/info")
def info(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return {
        "version": "0.1.0", "cloud_id": cloud.config.cloud_id(), "tenant": who.tenant, "role": who.role,
        "host": cloud.config.host, "zone": cloud.config.zone, "compute_driver": cloud.compute.name,
        "dns": {"address": "127.0.0.1", "port": cloud.extras.get("dns_port")},
        "home": str(cloud.config.home), "database": cloud.store.engine.url.get_backend_name(),
        "hub_netns": cloud.net.hub_netns(),
    }


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantCreate, cloud: Cloud = Depends(get_cloud),
                  who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("creating tenants")
    check_name("tenant", body.name)
    if body.name in RESERVED or cloud.store.has_tenant(body.name):
        raise Conflict(f"tenant {body.name!r} already exists")
    token = secrets.token_urlsafe(32)
    cloud.store.create(Resource(kind="Tenant", tenant=body.name, name=body.name, spec={}, phase="ready"),
                       created=f"tenant {body.name} created")
    cloud.store.add_token(token, body.name, "member")
    return {"name": body.name, "token": token}


class QuotaUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volumes: int | None = Field(None, ge=0, le=1_000_000)
    volume_gib: int | None = Field(None, ge=0, le=1_000_000_000)
    snapshots: int | None = Field(None, ge=0, le=1_000_000)


@router.put("/tenants/{name}/quota")
def set_quota(name: str, body: QuotaUpdate, cloud: Cloud = Depends(get_cloud),
              who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("setting quotas")
    res = cloud.store.get("Tenant", name, name)
    quota = {**res.spec.get("quota", {}), **body.model_dump(exclude_none=True)}
    res = cloud.store.update_spec(res.id, {**res.spec, "quota": quota})
    cloud.store.add_event(res, "QuotaSet", f"quota {quota}")
    return {"name": name, "quota": quota_of(cloud, name)}


@router.get("/tenants")
def list_tenants(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("listing tenants")
    return page([{"name": r.name, "created_at": r.created_at} for r in cloud.store.list("Tenant")])


@router.get("/repair")
def repair_check(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("repair")
    return page([f.as_dict() for f in repair.scan(cloud)])


@router.post("/repair")
def repair_fix(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("repair")
    findings = repair.scan(cloud)
    return {"findings": [f.as_dict() for f in findings], "actions": repair.fix(cloud, findings)}
