"""Elastic IPs: allocate, list, show, associate, disassociate, release."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cloudlet.api.deps import NamePath, caller, get_cloud, page
from cloudlet.api.routes.labels import label_selector
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.labels import Selector
from cloudlet.network import eips

router = APIRouter(prefix="/v1/eips", tags=["eips"])


@router.get("")
def list_eips(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    return page([eips.eip_view(r) for r in cloud.store.list(eips.KIND, tenant=who.tenant) if sel.matches(r.labels)])


@router.post("", status_code=201)
def allocate_eip(
    body: eips.EipCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return eips.eip_view(eips.allocate_eip(cloud, who, body.name, body.labels))


@router.get("/{name}")
def show_eip(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return eips.eip_view(cloud.store.get(eips.KIND, who.tenant, name))


@router.post("/{name}/association")
def associate_eip(
    name: NamePath, body: eips.EipAssociate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Points the EIP at an instance or load balancer; one already held moves (its old holder loses it)."""
    return eips.eip_view(eips.associate_eip(cloud, who, name, body.kind, body.target))


@router.delete("/{name}/association")
def disassociate_eip(
    name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return eips.eip_view(eips.disassociate_eip(cloud, who, name))


@router.delete("/{name}", status_code=202)
def release_eip(
    name: NamePath, force: bool = False, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Gives the address back; refused (409) while associated unless `force`."""
    return eips.eip_view(eips.release_eip(cloud, who, name, force))
