"""Elastic IPs: public addresses from this cloud's slice of 198.18.0.0/15 (network/outside.py), each pointing at
one instance or load balancer at a time.

allocate takes a free address (`Store.allocate_ip` under the pool's key: one owner per address by primary key)
within the tenant's `eips` quota; associate writes the one target into the spec (a later associate moves it, as
AWS's --allow-reassociation: concurrent associates serialise on the record, the last one holds it); release
frees the address, refused while associated unless forced. The control plane's `EipReconciler` reports the
holder's address and drops a target that is gone; each agent's `PublicReconciler` renders every EIP whose holder
it serves, and every network with egress, into the hub's NAT table (one nft transaction per change), so the data
plane keeps working while cloudletd is down.
"""

from __future__ import annotations

__all__ = [
    "KIND",
    "TARGET_KINDS",
    "EipCreate",
    "EipAssociate",
    "allocate_eip",
    "associate_eip",
    "disassociate_eip",
    "release_eip",
    "eip_view",
    "public_ip",
    "public_plan",
    "EipReconciler",
    "PublicReconciler",
]

import threading
from typing import Literal

from pydantic import BaseModel, ConfigDict

from cloudlet.compute.resource import INSTANCE
from cloudlet.core import quota
from cloudlet.core.context import Caller, Cloud, HostContext, Records
from cloudlet.core.errors import Conflict, InvalidSpec, NotFound
from cloudlet.core.kinds import kinds as registered_kinds
from cloudlet.core.labels import Labels
from cloudlet.core.reconcile import KindReconciler, Result, Watches
from cloudlet.core.records import Name, NameRef, Resource, check_name, record_view
from cloudlet.network.drivers.base import PublicPlan
from cloudlet.network.outside import pool_slice
from cloudlet.network.resource import ELASTIC_IP, NETWORK, EipTarget, ElasticIPSpec, ElasticIPStatus, NetworkSpec

KIND = ELASTIC_IP
LOAD_BALANCER = "LoadBalancer"  # lb/resource.py's kind, named here so the network domain does not import lb
TARGET_KINDS = (INSTANCE, LOAD_BALANCER)
POOL_KEY = "eip-pool"  # the public pool's key in the ip_allocations table (tenant networks use their ids)
ALL = "all"  # the agent's one key: every change re-renders the whole table
quota.register_meter(quota.Meter("eips", KIND, lambda r: 1, 5))


class EipCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    name: Name


class EipAssociate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: NameRef
    kind: Literal["Instance", "LoadBalancer"] = "Instance"


def allocate_eip(
    cloud: Cloud, caller: Caller, name: str, labels: dict[str, str] | None = None, owner: str | None = None
) -> Resource:
    """`owner`: the record it belongs to (a stack's EIPs go back to the pool with their stack)."""
    check_name("eip", name)
    sl = pool_slice(cloud.config.home, cloud.config.cloud_id())
    res = Resource(
        kind=KIND, tenant=caller.tenant, name=name, zone=cloud.config.zone, labels=labels or {}, spec={}, owner=owner
    )
    try:
        address = cloud.store.allocate_ip(POOL_KEY, res.id, sl.eip_candidates())
    except Conflict:
        raise Conflict(f"the public pool {sl.pool} has no free address left; release an unused EIP") from None
    res.spec = ElasticIPSpec(address=address).dump()
    res.phase = "allocated"
    try:
        cloud.store.create(
            res, created=f"EIP {name} {address} allocated", guard=quota.guard(caller.tenant, {"eips": 1})
        )
    except Exception:
        cloud.store.release_ips(res.id)
        raise
    return res


def _target(cloud: Cloud, caller: Caller, kind: str, name: str) -> Resource:
    if kind not in {k.name for k in registered_kinds()}:
        raise InvalidSpec(f"{kind} targets are not available in this cloud; associate an instance")
    try:
        target = cloud.store.get(kind, caller.tenant, name)
    except NotFound:  # 409: the EIP exists, what it should go to does not (a 404 would say the EIP is gone)
        raise Conflict(f"{kind.lower()} {name!r} not found; create it before associating an EIP with it") from None
    if target.deleting:
        raise Conflict(f"{kind.lower()} {name} is being deleted; associate another")
    return target


def associate_eip(cloud: Cloud, caller: Caller, name: str, kind: str, target_name: str) -> Resource:
    """Points the EIP at the target, moving it if another holds it (one spec write: one holder at any time)."""
    res = cloud.store.get(KIND, caller.tenant, name)
    if res.deleting:
        raise Conflict(f"EIP {name} is being released")
    target = _target(cloud, caller, kind, target_name)
    for other in cloud.store.list(KIND, tenant=caller.tenant):
        held = ElasticIPSpec.of(other).target
        if other.id != res.id and held is not None and held.id == target.id and not other.deleting:
            raise Conflict(f"{kind.lower()} {target_name} already holds EIP {other.name}; disassociate that one first")
    spec = ElasticIPSpec.of(res)
    before = spec.target
    spec.target = EipTarget(kind=kind, name=target.name, id=target.id)
    res = cloud.store.update_spec(res.id, spec.dump())
    moved = f" (moved from {before.kind.lower()} {before.name})" if before and before.id != target.id else ""
    cloud.store.add_event(res, "Associated", f"EIP {name} {spec.address} -> {kind.lower()} {target_name}{moved}")
    return res


def disassociate_eip(cloud: Cloud, caller: Caller, name: str) -> Resource:
    res = cloud.store.get(KIND, caller.tenant, name)
    spec = ElasticIPSpec.of(res)
    if spec.target is None:
        return res
    held, spec.target = spec.target, None
    res = cloud.store.update_spec(res.id, spec.dump())
    cloud.store.add_event(res, "Disassociated", f"EIP {name} {spec.address} left {held.kind.lower()} {held.name}")
    return res


def release_eip(cloud: Cloud, caller: Caller, name: str, force: bool = False) -> Resource:
    """Gives the address back to the pool (the record has no finalizer: it goes at once, and its address with it)."""
    res = cloud.store.get(KIND, caller.tenant, name)
    held = ElasticIPSpec.of(res).target
    if held is not None and not force:
        raise Conflict(
            f"EIP {name} is associated with {held.kind.lower()} {held.name}; disassociate it first, or release "
            "with --force"
        )
    if not res.deleting:
        cloud.store.add_event(res, "Released", f"EIP {name} {ElasticIPSpec.of(res).address} released")
        res = cloud.store.mark_deleted(res.id)
    return res


def eip_view(res: Resource) -> dict[str, object]:
    spec, st = ElasticIPSpec.of(res), ElasticIPStatus.of(res)
    return record_view(
        res,
        address=spec.address,
        target=f"{spec.target.kind.lower()}/{spec.target.name}" if spec.target else None,
        private_ip=st.private_ip if spec.target else None,
        state="released" if res.deleting else ("associated" if spec.target else "allocated"),
    )


def public_ip(records: Records, instance_id: str) -> str | None:
    """The public address of an instance (or load balancer), None without one. Should it hold two (associates
    racing), the one its own traffic leaves from: the first in the public table's order (network/outside.py)."""
    held = [
        spec.address
        for r in records.list(KIND)
        if not r.deleting and (t := (spec := ElasticIPSpec.of(r)).target) is not None and t.id == instance_id
    ]
    return min(held) if held else None


def _holds(records: Records, target: Resource) -> list[str]:
    """The EIPs pointing at target (a changed or deleted instance wakes them)."""
    return [
        r.id
        for r in records.list(KIND, tenant=target.tenant)
        if (t := ElasticIPSpec.of(r).target) is not None and t.id == target.id
    ]


class EipReconciler(KindReconciler):
    """Control plane: shows the holder's address; a holder that is gone (or going) lets go of its EIP."""

    kind = KIND

    def __init__(self, cloud: Cloud) -> None:
        super().__init__(cloud.store)
        self.store = cloud.store
        self.watches = {k: (lambda r: _holds(self.records, r)) for k in TARGET_KINDS}

    def converge(self, res: Resource) -> Result:
        spec = ElasticIPSpec.of(res)
        holder = self.records.get_by_id(spec.target.id) if spec.target else None
        if spec.target is not None and (holder is None or holder.deleting):
            self.store.add_event(res, "Disassociated", f"{spec.target.kind.lower()} {spec.target.name} is gone")
            spec.target = None
            self.store.update_spec(res.id, spec.dump())
            return Result()
        status = ElasticIPStatus(private_ip=holder.status.get("ip") if holder else None)
        phase = "associated" if holder else "allocated"
        if status.dump() != ElasticIPStatus.of(res).dump() or res.phase != phase:
            self.records.update_status(res.id, phase=phase, status=status.dump(), observed_generation=res.generation)
        return Result()


def public_plan(records: Records, host: str) -> PublicPlan:
    """What this host's hub NATs: EIPs whose holder is here (or hostless) and has an address; egress networks."""
    eips = []
    for r in records.list(KIND):
        target = ElasticIPSpec.of(r).target
        holder = records.get_by_id(target.id) if target and not r.deleting else None
        ip = holder.status.get("ip") if holder and not holder.deleting and holder.host in (None, host) else None
        if ip:
            eips.append((ElasticIPSpec.of(r).address, str(ip)))
    subnets = [NetworkSpec.of(n).subnet for n in records.list(NETWORK) if not n.deleting and NetworkSpec.of(n).egress]
    return PublicPlan(eips=tuple(sorted(eips)), egress_subnets=tuple(sorted(subnets)))


class PublicReconciler:
    """Agent: one table for the whole host, re-rendered on any change of an EIP, a holder or a network, and loaded
    only when it differs from what was loaded last."""

    kind = KIND

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self.watches: Watches = {k: (lambda r: [ALL]) for k in (*TARGET_KINDS, NETWORK)}
        self._lock = threading.Lock()  # workers of different keys may run at once; loads go one at a time
        self._loaded: PublicPlan | None = None

    def reconcile(self, rid: str) -> Result:
        with self._lock:
            plan = public_plan(self.ctx.store, self.ctx.host)
            if plan != self._loaded:
                self.ctx.net.set_public(plan)
                self._loaded = plan
        return Result()
