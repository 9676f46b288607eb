"""Security groups: create, list, show, delete; rules add and delete; instances attached and detached."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from cloudlet.api.deps import NamePath, caller, get_cloud, page
from cloudlet.api.routes.labels import label_selector
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.labels import Selector
from cloudlet.network import secgroups

router = APIRouter(prefix="/v1/secgroups", tags=["secgroups"])
RuleId = Annotated[str, Path(pattern=r"^[0-9a-f]{8}$", description="a rule's id, as secgroup show lists it")]


@router.get("")
def list_secgroups(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    secgroups.ensure_default_secgroup(cloud, who.tenant)
    return page(
        [
            secgroups.secgroup_view(cloud, r)
            for r in cloud.store.list(secgroups.KIND, tenant=who.tenant)
            if sel.matches(r.labels)
        ]
    )


@router.post("", status_code=201)
def create_secgroup(
    body: secgroups.SecGroupCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return secgroups.secgroup_view(cloud, secgroups.create_secgroup(cloud, who, body))


@router.get("/{name}")
def show_secgroup(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return secgroups.secgroup_view(cloud, cloud.store.get(secgroups.KIND, who.tenant, name))


@router.delete("/{name}", status_code=202)
def delete_secgroup(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return secgroups.secgroup_view(cloud, secgroups.delete_secgroup(cloud, who, name))


@router.post("/{name}/rules", status_code=201)
def add_rule(
    name: NamePath, body: secgroups.RuleCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return secgroups.secgroup_view(cloud, secgroups.add_rule(cloud, who, name, body))


@router.delete("/{name}/rules/{rule_id}")
def delete_rule(
    name: NamePath, rule_id: RuleId, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return secgroups.secgroup_view(cloud, secgroups.delete_rule(cloud, who, name, rule_id))


@router.post("/{name}/members")
def attach(
    name: NamePath, body: secgroups.MemberRequest, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return secgroups.secgroup_view(cloud, secgroups.attach(cloud, who, name, body.instance))


@router.delete("/{name}/members/{instance}")
def detach(
    name: NamePath, instance: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return secgroups.secgroup_view(cloud, secgroups.detach(cloud, who, name, instance))
