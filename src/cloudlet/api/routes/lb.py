"""Load balancers: create, list, show, delete, browsing-only mode, members and drain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from cloudlet.api.deps import NamePath, caller, get_cloud, page
from cloudlet.api.routes.labels import label_selector
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.labels import Selector
from cloudlet.core.records import NameRef
from cloudlet.lb import loadbalancers as lbs

router = APIRouter(prefix="/v1/loadbalancers", tags=["loadbalancers"])


class ReadOnly(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool = Field(strict=True)


class Drain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member: NameRef
    drained: bool = Field(True, strict=True)


@router.get("")
def list_lbs(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    return page([lbs.lb_view(r) for r in cloud.store.list(lbs.KIND, tenant=who.tenant) if sel.matches(r.labels)])


@router.post("", status_code=201)
def create_lb(
    body: lbs.LoadBalancerCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return lbs.lb_view(lbs.create_lb(cloud, who, body))


@router.get("/{name}")
def show_lb(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return lbs.lb_view(lbs.get_lb(cloud, who, name))


@router.delete("/{name}", status_code=202)
def delete_lb(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return lbs.lb_view(lbs.delete_lb(cloud, who, name))


@router.post("/{name}/readonly")
def set_readonly(
    name: NamePath, body: ReadOnly, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return lbs.lb_view(lbs.set_readonly(cloud, who, name, body.on))


@router.post("/{name}/members")
def change_members(
    name: NamePath, body: lbs.MembersChange, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return lbs.lb_view(lbs.change_members(cloud, who, name, body))


@router.post("/{name}/drain")
def drain(
    name: NamePath, body: Drain, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return lbs.lb_view(lbs.set_member_drained(cloud, who, name, body.member, body.drained))
