"""Network kind: tenant networks (a bridge per network, gateway .1, subnet from 10.240.0.0/12)."""

from __future__ import annotations

import ipaddress
import threading
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.resource import INSTANCE, InstanceSpec
from cloudlet.core import quota
from cloudlet.core.conditions import set_condition
from cloudlet.core.context import Caller, Cloud, HostContext, Records
from cloudlet.core.errors import Conflict
from cloudlet.core.labels import Labels
from cloudlet.core.reconcile import KindReconciler, Result, Watches
from cloudlet.core.records import FINALIZER, Name, Resource, check_name, record_view
from cloudlet.network import ipam
from cloudlet.network.drivers.base import short
from cloudlet.network.resource import NETWORK, NetworkSpec, NetworkStatus

__all__ = [
    "KIND",
    "NetworkCreate",
    "NetworkUpdate",
    "set_egress",
    "create_network",
    "ensure_default_network",
    "delete_network",
    "NetworkReconciler",
    "BridgeReconciler",
    "network_view",
]

KIND = NETWORK
DEFAULT = "default"
_create_lock = threading.Lock()  # subnets are unique across tenants: the quota's per-tenant lock does not cover it
# a network being deleted still holds its subnet, so it counts until it is gone; the default, 5, and the largest
# network a tenant may make keep one tenant from exhausting the address space (the arithmetic: network/ipam.py)
quota.register_meter(quota.Meter("networks", KIND, lambda r: 1, 5))


def _subnet_pattern() -> str:
    """What ipam.parse_subnet() takes from the admin, as a regex for the schema: a network (host bits zero) inside
    the tenant space with a prefix from /16 to /29 (a tenant's from /20); empty means pick one."""
    heads = "|".join(
        str(n.network_address).rsplit(".", 2)[0].replace(".", r"\.") for n in ipam.SPACE.subnets(new_prefix=16)
    )
    octet = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    branches = []
    for prefix in range(ipam.ADMIN_MIN_PREFIX, ipam.MAX_PREFIX + 1):
        step = 1 << (24 - prefix) if prefix <= 24 else 1 << (32 - prefix)
        values = "|".join(str(v) for v in range(0, 256, step))
        branches.append(rf"({values})\.0/{prefix}" if prefix <= 24 else rf"{octet}\.({values})/{prefix}")
    return rf"^(({heads})\.({'|'.join(branches)}))?$"


Subnet = Annotated[
    str,
    Field(
        description=f"a free network inside {ipam.SPACE} with a prefix from /{ipam.TENANT_MIN_PREFIX} to "
        f"/{ipam.MAX_PREFIX} (the admin's from /{ipam.ADMIN_MIN_PREFIX}), e.g. 10.240.5.0/24; omit it for the next "
        "free /24",
        json_schema_extra={"pattern": _subnet_pattern()},
    ),
]


class NetworkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    name: Name
    subnet: Subnet | None = None
    egress: bool = Field(
        False, strict=True, description="NAT its traffic to the outside namespace's range (off by default)"
    )


class NetworkUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    egress: bool = Field(strict=True)


def create_network(
    cloud: Cloud,
    caller: Caller,
    name: str,
    subnet: str | None = None,
    labels: dict[str, str] | None = None,
    owner: str | None = None,
    egress: bool = False,
) -> Resource:
    check_name("network", name)
    with _create_lock:
        taken = [NetworkSpec.of(n).subnet for n in cloud.store.list(KIND)]
        if subnet:
            net = ipam.parse_subnet(subnet, ipam.ADMIN_MIN_PREFIX if caller.is_admin else ipam.TENANT_MIN_PREFIX)
            ipam.check_free(net, taken)
        else:
            net = ipam.pick_subnet(taken)
        res = Resource(
            kind=KIND,
            tenant=caller.tenant,
            name=name,
            owner=owner,
            zone=cloud.config.zone,
            finalizers=[FINALIZER],
            labels=labels or {},
            spec=NetworkSpec(subnet=str(net), gateway=ipam.gateway_of(net), egress=egress).dump(),
        )
        cloud.store.create(
            res, created=f"network {name} {net} created", guard=quota.guard(caller.tenant, {"networks": 1})
        )
    return res


def ensure_default_network(cloud: Cloud, tenant: str) -> Resource:
    for res in cloud.store.list(KIND, tenant=tenant, name=DEFAULT):
        return res
    try:
        return create_network(cloud, Caller(tenant), DEFAULT)
    except Conflict:  # a parallel launch made it meanwhile; else (the quota) the refusal stands
        for res in cloud.store.list(KIND, tenant=tenant, name=DEFAULT):
            return res
        raise


def set_egress(cloud: Cloud, caller: Caller, name: str, egress: bool) -> Resource:
    """Turns egress NAT on or off (each agent reloads its public table when the record changes)."""
    res = cloud.store.get(KIND, caller.tenant, name)
    spec = NetworkSpec.of(res)
    if spec.egress != egress:
        spec.egress = egress
        res = cloud.store.update_spec(res.id, spec.dump())
        cloud.store.add_event(res, "Updated", f"network {name} egress {'on' if egress else 'off'}")
    return res


def delete_network(cloud: Cloud, caller: Caller, name: str) -> Resource:
    res = cloud.store.get(KIND, caller.tenant, name)
    users = [i.name for i in _users(cloud.store, res) if not i.deleting]
    if users:
        raise Conflict(f"network {name} is used by instances {', '.join(sorted(users))}; delete them first")
    if not res.deleting:
        res = cloud.store.mark_deleted(res.id)
        cloud.store.add_event(res, "Deleting", f"network {name} marked for deletion")
    return res


def _users(records: Records, net: Resource) -> list[Resource]:
    return [i for i in records.list(INSTANCE, tenant=net.tenant) if InstanceSpec.of(i).network_id == net.id]


def network_view(res: Resource) -> dict[str, object]:
    spec = NetworkSpec.of(res)
    return record_view(
        res,
        subnet=spec.subnet,
        gateway=spec.gateway,
        egress=spec.egress,
        zone=res.zone,
        state="deleting" if res.deleting else res.phase,
    )


class NetworkReconciler(KindReconciler):
    """Control plane: a network is ready once its addresses are allocated; it is collected only when no
    instance uses it any more (an instance going away wakes it)."""

    kind = KIND

    def __init__(self, cloud: Cloud) -> None:
        super().__init__(cloud.store)
        self.watches = {INSTANCE: lambda inst: [InstanceSpec.of(inst).network_id] if inst.deleting else []}

    def converge(self, res: Resource) -> Result:
        if res.phase != "ready":
            spec = NetworkSpec.of(res)
            status = NetworkStatus(
                bridge=f"br{short(res.id)}",
                conditions=set_condition(
                    NetworkStatus.of(res).conditions,
                    "Ready",
                    True,
                    "Allocated",
                    f"{spec.subnet} with gateway {spec.gateway}",
                    res.generation,
                ),
            )
            self.records.update_status(res.id, phase="ready", observed_generation=res.generation, status=status.dump())
            self.records.add_event(res, "Ready", f"network {spec.subnet} is ready")
        return Result()

    def cleanup(self, res: Resource) -> None:
        users = [i.name for i in _users(self.records, res)]
        if users:
            raise Conflict(f"network {res.name} still has instances {', '.join(users)} being removed")


class BridgeReconciler:
    """Agent: this host's bridge for every live network, removed when the network goes (even if the record is
    already gone: the bridge's name comes from the network's id)."""

    kind = KIND

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self.watches: Watches = {}

    def reconcile(self, rid: str) -> Result:
        res = self.ctx.store.get_by_id(rid)
        if res is None or res.deleting:
            self.ctx.net.delete_network(rid)
            return Result()
        spec = NetworkSpec.of(res)
        self.ctx.net.ensure_network(rid, spec.gateway, ipaddress.ip_network(spec.subnet).prefixlen)
        return Result()
