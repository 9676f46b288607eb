"""Networks: create, list, show, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cloudlet.api.deps import NamePath, caller, get_cloud, page
from cloudlet.api.routes.labels import label_selector
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.labels import Selector
from cloudlet.network import networks

router = APIRouter(prefix="/v1/networks", tags=["networks"])


@router.get("")
def list_networks(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    return page(
        [networks.network_view(r) for r in cloud.store.list(networks.KIND, tenant=who.tenant) if sel.matches(r.labels)]
    )


@router.post("", status_code=201)
def create_network(
    body: networks.NetworkCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return networks.network_view(
        networks.create_network(cloud, who, body.name, body.subnet, body.labels, egress=body.egress)
    )


@router.get("/{name}")
def show_network(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return networks.network_view(cloud.store.get(networks.KIND, who.tenant, name))


@router.patch("/{name}")
def update_network(
    name: NamePath, body: networks.NetworkUpdate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Egress NAT on or off."""
    return networks.network_view(networks.set_egress(cloud, who, name, body.egress))


@router.delete("/{name}", status_code=202)
def delete_network(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return networks.network_view(networks.delete_network(cloud, who, name))
