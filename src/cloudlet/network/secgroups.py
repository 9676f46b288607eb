"""SecurityGroup kind: ingress rules for instances, their service functions and the agent's plumber.

A group holds ingress rules (protocol, ports, and a CIDR or a source group, stored by id). An instance is in
one to 16 groups (`InstanceSpec.secgroups`, ids); launched without one it is in its tenant's `default` group,
made on demand. Traffic into an instance is let in if it is part of a connection the instance made, comes from a
member of one of its groups, or matches a rule of one of them; the rest is dropped. The agent enforces this
(network/nft_secgroups.py), so it holds while cloudletd is down. Groups carry no finalizer: nothing of theirs
needs removing that the next load of each instance's table does not remove.
"""

from __future__ import annotations

__all__ = [
    "KIND",
    "DEFAULT",
    "MAX_RULES",
    "MAX_GROUPS",
    "RuleCreate",
    "SecGroupCreate",
    "MemberRequest",
    "rule_id",
    "normal_rule",
    "create_secgroup",
    "ensure_default_secgroup",
    "resolve_secgroups",
    "add_rule",
    "delete_rule",
    "delete_secgroup",
    "attach",
    "detach",
    "secgroup_view",
    "SecurityGroupPlumber",
]

import hashlib
import ipaddress
import logging
import re
import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.resource import INSTANCE, InstanceSpec, InstanceStatus
from cloudlet.core.context import Caller, Cloud, HostContext
from cloudlet.core.errors import Conflict, DriverError, InvalidSpec, NotFound
from cloudlet.core.labels import Labels
from cloudlet.core.reconcile import Result, Watches
from cloudlet.core.records import Name, NameRef, Resource, Text, check_name, record_view
from cloudlet.lb.resource import LOADBALANCER, LoadBalancerStatus, members_of
from cloudlet.network.nft_secgroups import render_antispoof, render_ingress
from cloudlet.network.resource import SECGROUP, SecurityGroupRule, SecurityGroupSpec

KIND = SECGROUP
DEFAULT = "default"
MAX_RULES = 64  # per group: each is an nft rule in every member's table
MAX_GROUPS = 16  # per instance
MAX_PER_TENANT = 128  # groups are quota-free but not unbounded
DEBOUNCE = 0.05  # seconds: a burst of changes (a stack's launch) is one load per table
_TABLES = "tables"  # the plumber's one key: every change leads to it
_lock = threading.RLock()  # rules and memberships are read-modify-write of a spec
log = logging.getLogger("cloudlet.secgroups")
PORTS_RE = re.compile(r"^([0-9]{1,5})(-([0-9]{1,5}))?$")


class RuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    protocol: Literal["tcp", "udp", "icmp", "all"]
    ports: str | None = Field(
        None, pattern=PORTS_RE.pattern, description='tcp and udp only: "80" or "8000-8100"; omit for every port'
    )
    cidr: str | None = Field(None, max_length=18, description="IPv4 source network, e.g. 10.240.0.0/12 or 0.0.0.0/0")
    source_group: NameRef | None = Field(None, description="let in the members of this group (of the same tenant)")


class SecGroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    name: Name
    description: Text = Field("", max_length=255)
    rules: list[RuleCreate] = Field(default_factory=list, max_length=MAX_RULES)


class MemberRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instance: NameRef


def rule_id(protocol: str, ports: str | None, cidr: str | None, source_group: str | None) -> str:
    """Derived from what the rule says: stable, and the same rule added twice has the same id."""
    return hashlib.sha256(f"{protocol}|{ports}|{cidr}|{source_group}".encode()).hexdigest()[:8]


def normal_rule(protocol: str, ports: str | None, cidr: str | None) -> tuple[str | None, str | None]:
    """A rule's ports and cidr as stored (and hashed into its id): "80-80" is "80", 10.0.0.1 is 10.0.0.1/32.
    InvalidSpec saying what to fix when they are not a port range within 1-65535 and an IPv4 network."""
    port_range = None
    if ports is not None:
        if protocol not in ("tcp", "udp"):
            raise InvalidSpec(f"ports apply to tcp and udp only, not to {protocol}; leave them out")
        m = PORTS_RE.fullmatch(ports)
        lo, hi = (int(m.group(1)), int(m.group(3) or m.group(1))) if m else (0, 0)
        if not 1 <= lo <= hi <= 65535:
            raise InvalidSpec(f"ports {ports!r}: give a port or a range low-high within 1-65535")
        port_range = str(lo) if lo == hi else f"{lo}-{hi}"
    network = None
    if cidr is not None:
        try:
            network = str(ipaddress.IPv4Network(cidr))
        except ValueError as exc:
            raise InvalidSpec(f"cidr {cidr!r}: {exc} (give an IPv4 network like 10.240.0.0/12)") from None
    return port_range, network


def _rule(cloud: Cloud, tenant: str, req: RuleCreate, own: tuple[str, str]) -> SecurityGroupRule:
    """`own` is the (name, id) of the group the rule goes in: it may name itself as the source."""
    if (req.cidr is None) == (req.source_group is None):
        raise InvalidSpec("a rule takes exactly one of cidr (e.g. 0.0.0.0/0) or source_group")
    ports, cidr = normal_rule(req.protocol, req.ports, req.cidr)
    source: str | None = None
    if req.source_group == own[0]:
        source = own[1]
    elif req.source_group is not None:
        source = _get(cloud, tenant, req.source_group).id
    return SecurityGroupRule(
        id=rule_id(req.protocol, ports, cidr, source),
        protocol=req.protocol,
        ports=ports,
        cidr=cidr,
        source_group=source,
    )


def _get(cloud: Cloud, tenant: str, name: str) -> Resource:
    """A live group by name; the tenant's default one is made if it is asked for and missing."""
    if name == DEFAULT:
        return ensure_default_secgroup(cloud, tenant)
    try:
        res = cloud.store.get(KIND, tenant, name)
    except NotFound:
        raise NotFound(f"security group {name!r} not found; create it with 'cloudlet secgroup create'") from None
    if res.deleting:
        raise Conflict(f"security group {name!r} is being deleted")
    return res


def create_secgroup(cloud: Cloud, caller: Caller, req: SecGroupCreate, owner: str | None = None) -> Resource:
    """`owner`: the record it belongs to (a stack's groups go with their stack)."""
    check_name("security group", req.name)
    with _lock:
        if len(cloud.store.list(KIND, tenant=caller.tenant)) >= MAX_PER_TENANT:
            raise Conflict(f"a tenant may have at most {MAX_PER_TENANT} security groups; delete one first")
        res = Resource(
            kind=KIND, tenant=caller.tenant, name=req.name, labels=req.labels, phase="ready", spec={}, owner=owner
        )
        rules: dict[str, SecurityGroupRule] = {}
        for r in req.rules:
            rule = _rule(cloud, caller.tenant, r, (req.name, res.id))
            rules[rule.id] = rule
        res.spec = SecurityGroupSpec(description=req.description, rules=list(rules.values())).dump()
        cloud.store.create(res, created=f"security group {req.name} created with {len(rules)} rules")
    return res


def ensure_default_secgroup(cloud: Cloud, tenant: str) -> Resource:
    for res in cloud.store.list(KIND, tenant=tenant, name=DEFAULT):
        return res
    try:
        return create_secgroup(
            cloud, Caller(tenant), SecGroupCreate(name=DEFAULT, description="members reach each other")
        )
    except Conflict:  # a parallel launch made it meanwhile
        for res in cloud.store.list(KIND, tenant=tenant, name=DEFAULT):
            return res
        raise


def resolve_secgroups(cloud: Cloud, tenant: str, names: list[str]) -> list[str]:
    """Group names (none: the tenant's default) as ids, in order, once each."""
    if not names:
        return [ensure_default_secgroup(cloud, tenant).id]
    unique = list(dict.fromkeys(names))
    if len(unique) > MAX_GROUPS:
        raise InvalidSpec(f"an instance may be in at most {MAX_GROUPS} security groups, not {len(unique)}")
    return [_get(cloud, tenant, n).id for n in unique]


def add_rule(cloud: Cloud, caller: Caller, name: str, req: RuleCreate) -> Resource:
    with _lock:
        res = _get(cloud, caller.tenant, name)
        spec = SecurityGroupSpec.of(res)
        rule = _rule(cloud, caller.tenant, req, (name, res.id))
        if any(r.id == rule.id for r in spec.rules):
            raise Conflict(f"security group {name} already has this rule ({rule.id})")
        if len(spec.rules) >= MAX_RULES:
            raise Conflict(f"security group {name} has {MAX_RULES} rules, the most a group may have; delete one")
        spec.rules.append(rule)
        res = cloud.store.update_spec(res.id, spec.dump())
    cloud.store.add_event(res, "RuleAdded", f"rule {rule.id} added to security group {name}")
    return res


def delete_rule(cloud: Cloud, caller: Caller, name: str, rid: str) -> Resource:
    with _lock:
        res = _get(cloud, caller.tenant, name)
        spec = SecurityGroupSpec.of(res)
        kept = [r for r in spec.rules if r.id != rid]
        if len(kept) == len(spec.rules):
            raise NotFound(f"security group {name} has no rule {rid!r}; 'cloudlet secgroup show {name}' lists them")
        spec.rules = kept
        res = cloud.store.update_spec(res.id, spec.dump())
    cloud.store.add_event(res, "RuleDeleted", f"rule {rid} deleted from security group {name}")
    return res


def _members(cloud: Cloud, res: Resource) -> list[Resource]:
    return [
        i
        for i in cloud.store.list(INSTANCE, tenant=res.tenant)
        if res.id in InstanceSpec.of(i).secgroups and not i.deleting
    ]


def delete_secgroup(cloud: Cloud, caller: Caller, name: str) -> Resource:
    with _lock:
        res = cloud.store.get(KIND, caller.tenant, name)
        users = sorted(i.name for i in _members(cloud, res))
        if users:
            raise Conflict(
                f"security group {name} is used by instances {', '.join(users)}; detach it or delete them first"
            )
        referrers = sorted(
            g.name
            for g in cloud.store.list(KIND, tenant=caller.tenant)
            if g.id != res.id and any(r.source_group == res.id for r in SecurityGroupSpec.of(g).rules)
        )
        if referrers:
            raise Conflict(
                f"security group {name} is the source of rules of groups {', '.join(referrers)}; delete those first"
            )
        cloud.store.add_event(res, "Deleted", f"security group {name} deleted")
        return cloud.store.mark_deleted(res.id)


def attach(cloud: Cloud, caller: Caller, name: str, instance: str) -> Resource:
    """Puts a (running or not) instance into a group; its agent reloads its table at once."""
    with _lock:
        group = _get(cloud, caller.tenant, name)
        try:
            inst = _instance(cloud, caller, instance)
        except NotFound:  # 409: the group exists, the instance named in the body does not (404 would say the group)
            raise Conflict(f"instance {instance!r} not found; launch it before attaching it to a group") from None
        spec = InstanceSpec.of(inst)
        if group.id in spec.secgroups:
            raise Conflict(f"instance {instance} is already in security group {name}")
        if len(spec.secgroups) >= MAX_GROUPS:
            raise Conflict(f"instance {instance} is in {MAX_GROUPS} security groups, the most it may be in")
        spec.secgroups.append(group.id)
        cloud.store.update_spec(inst.id, spec.dump())
    cloud.store.add_event(inst, "SecurityGroupAttached", f"security group {name} attached")
    return group


def detach(cloud: Cloud, caller: Caller, name: str, instance: str) -> Resource:
    with _lock:
        group = cloud.store.get(KIND, caller.tenant, name)
        inst = _instance(cloud, caller, instance)
        spec = InstanceSpec.of(inst)
        if group.id not in spec.secgroups:
            raise Conflict(f"instance {instance} is not in security group {name}")
        if len(spec.secgroups) == 1:
            raise Conflict(f"security group {name} is the only one of instance {instance}; attach another first")
        spec.secgroups.remove(group.id)
        cloud.store.update_spec(inst.id, spec.dump())
    cloud.store.add_event(inst, "SecurityGroupDetached", f"security group {name} detached")
    return group


def _instance(cloud: Cloud, caller: Caller, name: str) -> Resource:
    inst = cloud.store.get(INSTANCE, caller.tenant, name)
    if inst.deleting:
        raise Conflict(f"instance {name} is being deleted")
    return inst


def secgroup_view(cloud: Cloud, res: Resource) -> dict[str, Any]:
    """Rules with their ids (a source group by name) and the member instances."""
    names = {g.id: g.name for g in cloud.store.list(KIND, tenant=res.tenant)}
    spec = SecurityGroupSpec.of(res)
    rules = [
        {
            "id": r.id,
            "protocol": r.protocol,
            "ports": r.ports,
            "cidr": r.cidr,
            "source_group": names.get(r.source_group, r.source_group) if r.source_group else None,
        }
        for r in spec.rules
    ]
    members = sorted(i.name for i in _members(cloud, res))
    return record_view(
        res,
        description=spec.description,
        rules=rules,
        members=members,
        state="deleting" if res.deleting else res.phase,
    )


class SecurityGroupPlumber:
    """Agent: loads the hub's anti-spoofing table and each local instance's ingress table whenever a group or an
    instance changes (debounced: every change enqueues one key a moment later), skipping tables whose text (and,
    for an instance, netns: its pid) is what it last loaded. Group members are the instances of every host."""

    kind = KIND

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self.watches: Watches = {INSTANCE: lambda inst: [inst.id], LOADBALANCER: lambda lb: [lb.id]}
        self._loaded: dict[str | None, tuple[str, int | None]] = {}  # instance id (None: hub) -> (text, pid)
        self._macs: dict[str, tuple[int, str]] = {}  # instance id -> (pid, its port's MAC) as read then

    def reconcile(self, rid: str) -> Result:
        if rid != _TABLES:
            self.ctx.manager.enqueue(self.kind, _TABLES, after=DEBOUNCE)
            return Result()
        return Result(requeue_after=None if self._load_all() else 1.0)

    def _load_all(self) -> bool:
        """Loads what changed; False if a running instance's MAC could not be read yet (try again soon)."""
        store = self.ctx.store
        groups = {g.id: SecurityGroupSpec.of(g) for g in store.list(KIND) if not g.deleting}
        defaults = {g.tenant: g.id for g in store.list(KIND, name=DEFAULT) if not g.deleting}
        placed = [i for i in store.list(INSTANCE) if InstanceStatus.of(i).ip]
        local = [i for i in placed if i.host == self.ctx.host]
        ports = {inst.id: str(InstanceStatus.of(inst).ip) for inst in local}
        member_of: dict[str, list[str]] = {}
        members: dict[str, set[str]] = {}
        for inst in placed:  # members on every host: groups admit each other across hosts
            # an instance from before security groups (none in its spec) is in its tenant's default group
            gids = InstanceSpec.of(inst).secgroups or [d for d in [defaults.get(inst.tenant)] if d]
            member_of[inst.id] = gids
            if not inst.deleting:
                for gid in gids:
                    members.setdefault(gid, set()).add(str(InstanceStatus.of(inst).ip))
        # a load balancer reaches its members as if it were in their groups (its own netns admits only its port)
        for lb in store.list(LOADBALANCER):
            lb_ip = LoadBalancerStatus.of(lb).ip
            if lb_ip and not lb.deleting:
                for inst in members_of(store, lb):
                    for gid in member_of.get(inst.id, []):
                        members.setdefault(gid, set()).add(lb_ip)
        failed: list[str] = []
        macs = self._port_macs(local)
        self._load(None, render_antispoof(ports, macs), None, failed)
        for inst in local:
            pid = InstanceStatus.of(inst).pid
            if pid is not None:
                mine = [(gid, groups[gid].rules) for gid in member_of[inst.id] if gid in groups]
                self._load(inst.id, render_ingress(mine, members), pid, failed)
        for gone in set(self._loaded) - {None, *ports}:
            del self._loaded[gone]
        for gone in set(self._macs) - set(ports):
            del self._macs[gone]
        if failed:
            raise DriverError(f"security group tables not loaded: {'; '.join(failed)}")
        return all(i.id in macs for i in local if InstanceStatus.of(i).pid is not None)

    def _port_macs(self, local: list[Resource]) -> dict[str, str]:
        """The MAC of each running instance's port, read once per run (a restart makes a new port)."""
        macs = {}
        for inst in local:
            pid = InstanceStatus.of(inst).pid
            if pid is None:
                continue
            known = self._macs.get(inst.id)
            if known is None or known[0] != pid:
                try:
                    mac = self.ctx.net.port_mac(inst.id)
                except DriverError as exc:  # its netns went away meanwhile: its frames go nowhere anyway
                    log.info("no MAC address for instance %s: %s", inst.id, exc)
                    mac = None
                if mac is None:
                    continue
                known = self._macs[inst.id] = (pid, mac)
            macs[inst.id] = known[1]
        return macs

    def _load(self, iid: str | None, text: str, pid: int | None, failed: list[str]) -> None:
        if self._loaded.get(iid) == (text, pid):
            return
        try:
            self.ctx.net.apply_ruleset("secgroups", text, iid)
        except DriverError as exc:  # one instance's netns going away must not hold up the others
            failed.append(str(exc))
            return
        self._loaded[iid] = (text, pid)
