"""LoadBalancer kind: service functions for the API, the control plane's placement and the agent's reconciler.

The control plane places a new LB on a host and gives it an address on its network (like an instance). The
agent of that host gives it a netns on the network (the network driver's port, named from the LB's id), renders
its HAProxy config from the spec and the members' current addresses, starts or reloads HAProxy when the config
changes, and runs its weight controller (lb/controller.py). An instance coming, going or changing address
re-renders every LB it belongs to (a declared watch), so the spec holds names and never addresses.
"""

from __future__ import annotations

__all__ = [
    "KIND",
    "LoadBalancerCreate",
    "MembersChange",
    "create_lb",
    "get_lb",
    "delete_lb",
    "set_readonly",
    "set_member_drained",
    "change_members",
    "lb_view",
    "members_of",
    "LbPlacer",
    "LoadBalancerReconciler",
    "stop_all",
]

import contextlib
import ipaddress
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.resource import INSTANCE, InstanceStatus
from cloudlet.core import quota
from cloudlet.core.conditions import set_condition
from cloudlet.core.context import Caller, Cloud, HostContext, Records
from cloudlet.core.errors import Conflict, DriverError, InvalidSpec, NotFound, TerminalError
from cloudlet.core.labels import Labels
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import FINALIZER, Int, Name, NameRef, Resource, check_name, record_view
from cloudlet.lb.controller import LbController, Member, Settings
from cloudlet.lb.haproxy import Frontend, HAProxy, Server, processes_under, render
from cloudlet.lb.resource import (
    LAYER_LABEL,
    LOADBALANCER,
    STACK_LABEL,
    Balance,
    LoadBalancerSpec,
    LoadBalancerStatus,
    MemberStatus,
    members_of,
)
from cloudlet.lb.weights import MAX_WEIGHT
from cloudlet.network import ipam, networks
from cloudlet.network.drivers.base import PortSpec
from cloudlet.network.resource import NETWORK, NetworkSpec

KIND = LOADBALANCER
quota.register_meter(quota.Meter("loadbalancers", KIND, lambda r: 0 if r.deleting else 1, 10))

Layer = Annotated[
    str, Field(pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?/[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", description="STACK/LAYER")
]
HealthCheck = Annotated[
    str, Field(pattern=r"^(tcp|http:/[A-Za-z0-9._~/?=&%-]{0,200})$", description="http:/PATH (2xx or 3xx) or tcp")
]

# the LB's netns takes the place of an instance's security groups: its listening port is open, the rest closed
LB_INGRESS = """table inet cl_sg
delete table inet cl_sg
table inet cl_sg {{
    chain input {{
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif "lo" accept
        tcp dport {port} accept
    }}
}}
"""


class LoadBalancerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    name: Name
    network: NameRef = networks.DEFAULT
    port: Int = Field(80, ge=1, le=65535)
    target_port: Int | None = Field(None, ge=1, le=65535, description="the members' port; default: port")
    members: list[NameRef] = Field(default_factory=list, max_length=256, description="instance names")
    layer: Layer | None = Field(None, description="members: the live instances of this stack layer")
    health_check: HealthCheck = "http:/health"
    balance: Balance = "latency"
    readonly: bool = Field(False, strict=True)
    server_timeout_ms: Int = Field(5000, ge=50, le=600_000, description="idempotent requests retry elsewhere after")
    zone: NameRef | None = None


class MembersChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    add: list[NameRef] = Field(default_factory=list, max_length=256)
    remove: list[NameRef] = Field(default_factory=list, max_length=256)


def create_lb(cloud: Cloud, caller: Caller, req: LoadBalancerCreate, owner: str | None = None) -> Resource:
    """`owner`: the record it belongs to (a stack's LBs go with their stack)."""
    check_name("load balancer", req.name)
    if req.members and req.layer:
        raise InvalidSpec("give either members or a layer, not both")
    if req.network == networks.DEFAULT:
        net = networks.ensure_default_network(cloud, caller.tenant)
    else:
        try:
            net = cloud.store.get(NETWORK, caller.tenant, req.network)
        except NotFound:
            raise NotFound(f"network {req.network!r} not found; create it with 'cloudlet network create'") from None
    if net.deleting:
        raise Conflict(f"network {req.network!r} is being deleted")
    spec = LoadBalancerSpec(
        network=net.name,
        network_id=net.id,
        port=req.port,
        target_port=req.target_port,
        members=sorted(set(req.members)),
        layer=req.layer,
        health_check=req.health_check,
        balance=req.balance,
        readonly=req.readonly,
        server_timeout_ms=req.server_timeout_ms,
        zone=req.zone,
    )
    res = Resource(
        kind=KIND,
        tenant=caller.tenant,
        name=req.name,
        owner=owner,
        spec=spec.dump(),
        finalizers=[FINALIZER],
        labels=req.labels,
        status=LoadBalancerStatus().dump(),
    )
    what = f"layer {req.layer}" if req.layer else f"members {', '.join(spec.members) or '(none yet)'}"
    cloud.store.create(
        res,
        created=f"load balancer {req.name} on port {req.port} of network {net.name}, {what}",
        guard=quota.guard(caller.tenant, {"loadbalancers": 1}),
    )
    return res


def get_lb(cloud: Cloud, caller: Caller, name: str) -> Resource:
    try:
        return cloud.store.get(KIND, caller.tenant, name)
    except NotFound:
        raise NotFound(f"load balancer {name!r} not found; see 'cloudlet lb list'") from None


def _get(cloud: Cloud, caller: Caller, name: str) -> Resource:
    res = get_lb(cloud, caller, name)
    if res.deleting:
        raise Conflict(f"load balancer {name} is being deleted")
    return res


def _update(cloud: Cloud, res: Resource, spec: LoadBalancerSpec, reason: str, message: str) -> Resource:
    if spec.dump() == res.spec:
        return res
    res = cloud.store.update_spec(res.id, spec.dump())
    cloud.store.add_event(res, reason, message)
    return res


def set_readonly(cloud: Cloud, caller: Caller, name: str, on: bool) -> Resource:
    """Browsing-only mode: GET and HEAD are served, other methods get a 503 page saying so."""
    res = _get(cloud, caller, name)
    spec = LoadBalancerSpec.of(res)
    spec.readonly = on
    return _update(cloud, res, spec, "ReadOnly" if on else "ReadWrite", f"browsing-only mode {'on' if on else 'off'}")


def set_member_drained(cloud: Cloud, caller: Caller, lb: str, member: str, drained: bool) -> Resource:
    """Takes a member out of the LB (no new requests; open ones finish) or puts it back."""
    res = _get(cloud, caller, lb)
    spec = LoadBalancerSpec.of(res)
    names = set(spec.drained)
    names = names | {member} if drained else names - {member}
    spec.drained = sorted(names)
    verb = "drained" if drained else "back in service"
    return _update(cloud, res, spec, "MemberDrained" if drained else "MemberReady", f"member {member} {verb}")


def change_members(cloud: Cloud, caller: Caller, name: str, change: MembersChange) -> Resource:
    res = _get(cloud, caller, name)
    spec = LoadBalancerSpec.of(res)
    if spec.layer and (change.add or change.remove):
        raise Conflict(f"load balancer {name} follows layer {spec.layer}; its members come from the stack")
    spec.members = sorted((set(spec.members) | set(change.add)) - set(change.remove))
    return _update(cloud, res, spec, "MembersChanged", f"members now {', '.join(spec.members) or '(none)'}")


def delete_lb(cloud: Cloud, caller: Caller, name: str) -> Resource:
    res = get_lb(cloud, caller, name)
    if not res.deleting:
        res = cloud.store.mark_deleted(res.id)
        cloud.store.add_event(res, "Deleting", f"load balancer {name} marked for deletion")
    return res


def lb_view(res: Resource) -> dict[str, Any]:
    spec, st = LoadBalancerSpec.of(res), LoadBalancerStatus.of(res)
    return record_view(
        res,
        state="deleting" if res.deleting else st.state,
        network=spec.network,
        ip=st.ip,
        port=spec.port,
        target_port=spec.target_port or spec.port,
        balance=spec.balance,
        health_check=spec.health_check,
        readonly=spec.readonly,
        layer=spec.layer,
        members=spec.members,
        drained=spec.drained,
        server_timeout_ms=spec.server_timeout_ms,
        host=res.host,
        zone=res.zone,
        message=st.message,
        member_status=[m.model_dump() for m in st.members],
        conditions=st.conditions,
    )


def _set_state(records: Records, res: Resource, state: str, **fields: Any) -> None:
    old = LoadBalancerStatus.of(res)
    new = old.model_copy(update={**fields, "state": state})
    new.conditions = set_condition(
        old.conditions, "Ready", state == "running", state.capitalize(), new.message, res.generation
    )
    status = new.dump()
    if status != res.status or res.phase != state or res.observed_generation != res.generation:
        records.update_status(res.id, status=status, phase=state, observed_generation=res.generation)


class LbPlacer(KindReconciler):
    """Control plane: places a new LB on a host and allocates its address; collects one deleted unplaced."""

    kind = KIND

    def __init__(self, cloud: Cloud) -> None:
        super().__init__(cloud.store)
        self.cloud = cloud

    def reconcile(self, rid: str) -> Result:
        store = self.cloud.store
        res = store.get_by_id(rid)
        if res is None or res.host is not None:
            return Result()  # placed: its agent owns it from here, deletion included
        if res.deleting:
            store.finalize(rid)
            return Result()
        spec = LoadBalancerSpec.of(res)
        net = store.get_by_id(spec.network_id)
        if net is None or net.deleting:
            _set_state(store, res, "failed", message=f"network {spec.network} no longer exists")
            raise TerminalError(f"network of load balancer {res.name} is gone")
        try:
            d = self.cloud.placement.place(0, spec.zone)
        except InvalidSpec as exc:
            _set_state(store, res, "unschedulable", message=exc.message)
            return Result(requeue_after=30.0)
        ip = store.allocate_ip(net.id, res.id, ipam.host_addresses(NetworkSpec.of(net).subnet))
        status = LoadBalancerStatus.of(res).model_copy(update={"placement": d.record(), "state": "scheduled", "ip": ip})
        res = store.update_status(res.id, host=d.host, zone=d.zone, phase="scheduled", status=status.dump())
        store.add_event(res, "Scheduled", f"placed on host {d.host} in {d.zone} with address {ip}")
        return Result()


def _lb_dir(ctx: HostContext, rid: str) -> Path:
    return ctx.config.agent_dir(ctx.host) / "lb" / rid


class LoadBalancerReconciler(KindReconciler):
    """Agent: the LB's netns, its HAProxy and its weight controller, kept in line with spec and members."""

    kind = KIND

    def __init__(self, ctx: HostContext) -> None:
        super().__init__(ctx.store)
        self.ctx = ctx
        self.controllers: dict[str, LbController] = {}
        self._ingress: dict[str, str] = {}  # the ingress table last loaded in each LB's netns
        self._lock = threading.Lock()
        self.watches = {INSTANCE: self._lbs_of_instance, NETWORK: self._lbs_on_network}

    def serves(self, res: Resource) -> bool:
        return res.host == self.ctx.host

    def _mine(self, tenant: str) -> list[Resource]:
        return self.records.list(KIND, tenant=tenant, host=self.ctx.host)  # what serves() takes

    def _lbs_of_instance(self, inst: Resource) -> list[str]:
        out = []
        for lb in self._mine(inst.tenant):
            spec = LoadBalancerSpec.of(lb)
            if inst.name in spec.members or (
                spec.layer and spec.layer == f"{inst.labels.get(STACK_LABEL)}/{inst.labels.get(LAYER_LABEL)}"
            ):
                out.append(lb.id)
            elif any(m.name == inst.name for m in LoadBalancerStatus.of(lb).members):
                out.append(lb.id)  # was a member (its labels changed)
        return out

    def _lbs_on_network(self, net: Resource) -> list[str]:
        return [lb.id for lb in self._mine(net.tenant) if LoadBalancerSpec.of(lb).network_id == net.id]

    def converge(self, res: Resource) -> Result:
        spec, status = LoadBalancerSpec.of(res), LoadBalancerStatus.of(res)
        net = self.records.get_by_id(spec.network_id)
        if net is None or net.deleting:
            _set_state(self.records, res, "failed", message=f"network {spec.network} no longer exists")
            raise TerminalError(f"network of load balancer {res.name} is gone")
        if not status.ip:
            raise TerminalError(f"load balancer {res.name} was placed without an address")
        target = spec.target_port or spec.port
        members = sorted(
            (Member(i.name, ip, target) for i in members_of(self.records, res) if (ip := InstanceStatus.of(i).ip)),
            key=lambda m: m.name,
        )
        if not self.ctx.compute.capabilities.real_processes:  # simulated host: nothing to run
            _set_state(self.records, res, "running", message="")
            return Result()
        netspec = NetworkSpec.of(net)
        prefixlen = ipaddress.ip_network(netspec.subnet).prefixlen
        self.ctx.net.ensure_network(net.id, netspec.gateway, prefixlen)
        netns = Path(self.ctx.net.ensure_port(PortSpec(res.id, net.id, status.ip, prefixlen, netspec.gateway))).name
        ingress = LB_INGRESS.format(port=spec.port)
        if self._ingress.get(res.id) != ingress:  # its port from anywhere on the network (and EIPs), nothing else
            self.ctx.net.apply_ruleset("lb", ingress, res.id)
            self._ingress[res.id] = ingress
        drained = frozenset(spec.drained)
        servers = [Server(m.name, m.ip, m.port, 0 if m.name in drained else MAX_WEIGHT) for m in members]
        balance = "leastconn" if spec.balance == "leastconn" else "roundrobin"
        fe = Frontend(status.ip, spec.port, balance, spec.health_check, spec.readonly, spec.server_timeout_ms)
        proxy = HAProxy(_lb_dir(self.ctx, res.id), netns)
        try:
            done = proxy.ensure(render(proxy.dir, fe, servers))
        except DriverError as exc:  # shown once (state, message, event); retried with backoff
            if status.message != exc.message:
                _set_state(self.records, res, "error", message=exc.message)
                self.records.add_event(res, "HAProxyFailed", exc.message, "Warning")
            raise
        if done != "unchanged":
            self.records.add_event(res, "HAProxy" + done.capitalize(), f"HAProxy {done} with {len(servers)} members")
        self._control(res, proxy, netns).configure(
            Settings(
                members=tuple(members),
                health_path=spec.health_check.removeprefix("http:") if spec.health_check != "tcp" else None,
                adaptive=spec.balance == "latency",
                drained=drained,
                server_timeout_ms=spec.server_timeout_ms,
            )
        )
        _set_state(self.records, res, "running", message="")
        return Result()

    def _control(self, res: Resource, proxy: HAProxy, netns: str) -> LbController:
        with self._lock:
            ctl = self.controllers.get(res.id)
            if ctl is None or not ctl.alive:
                rid = res.id
                ctl = LbController(
                    proxy,
                    netns,
                    lambda members: self._report(rid, members),
                    lambda: self.ctx.manager.enqueue(KIND, rid),
                )
                self.controllers[res.id] = ctl
                ctl.start()
            return ctl

    def _report(self, rid: str, members: list[MemberStatus]) -> None:
        res = self.records.get_by_id(rid)
        if res is None or res.deleting:
            return
        status = LoadBalancerStatus.of(res)
        if status.members != members:
            status.members = members
            self.records.update_status(rid, status=status.dump())

    def cleanup(self, res: Resource) -> None:
        self.forget(res.id)

    def let_go(self, res: Resource) -> None:
        if res.id in self.controllers or self.ctx.net.port_exists(res.id):
            self.forget(res.id)

    def forget(self, rid: str) -> None:
        self._ingress.pop(rid, None)
        with self._lock:
            ctl = self.controllers.pop(rid, None)
        if ctl is not None:
            ctl.stop()
        state_dir = _lb_dir(self.ctx, rid)
        HAProxy(state_dir, "").stop()
        self.ctx.net.delete_port(rid)
        shutil.rmtree(state_dir, ignore_errors=True)


def stop_all(ctx: HostContext, purge: bool) -> None:
    """`cloudlet down`: stop every HAProxy of this host (the next `up` starts them again); purge: their files."""
    root = ctx.config.agent_dir(ctx.host) / "lb"
    if root.is_dir():
        for state_dir in root.iterdir():
            HAProxy(state_dir, "").stop()
            if purge:
                shutil.rmtree(state_dir, ignore_errors=True)
    for pid in processes_under(f"{root}/"):  # one whose state dir is gone (removed under it) is still ours
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
