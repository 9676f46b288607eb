"""Host kind and the control plane's side of the agent protocol.

A Host record is written by its agent's heartbeats (zone, capacity, version, endpoint, last heartbeat). Each
agent authenticates with a per-host token that lets it read the records it serves and write only the status,
events and cleanup of records placed on its own host (plus the host-independent kinds it realises locally).
"""

from __future__ import annotations

import builtins
import heapq

__all__ = [
    "HOST_KIND",
    "AGENT_KINDS",
    "HOSTLESS_KINDS",
    "SCOPED_KINDS",
    "GLOBAL_KINDS",
    "register_host",
    "host_token",
    "heartbeat",
    "host_view",
    "visible_to",
    "apply_ops",
    "Heartbeat",
    "AgentOp",
    "AgentOps",
    "AgentService",
    "HostJoin",
    "set_cordoned",
    "join_host",
    "remove_host",
    "host_lock",
    "UP",
    "SUSPECT",
    "FENCED",
    "LEASE_EXPIRED",
    "DOWN",
]

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.resource import HOST, IMAGE, INSTANCE, HostSpec, HostStatus
from cloudlet.core.clock import Clock, RealClock
from cloudlet.core.context import HOST_ROLE, SYSTEM_TENANT, Caller
from cloudlet.core.errors import BadRequest, Conflict, Forbidden
from cloudlet.core.records import Resource, check_name
from cloudlet.core.store import Store
from cloudlet.core.watch import Watch
from cloudlet.lb.resource import LOADBALANCER
from cloudlet.network.resource import ELASTIC_IP, NETWORK, SECGROUP
from cloudlet.stacks.resource import STACK
from cloudlet.storage.resource import BACKUP, BACKUP_TARGET, REPLICA, SNAPSHOT, VOLUME

HOST_KIND = HOST
log = logging.getLogger("cloudlet.hosts")
# what an agent watches; Network, Image, BackupTarget, SecurityGroup and ElasticIP records are not placed on a host
# but every host needs them
HOSTLESS_KINDS = (NETWORK, IMAGE, BACKUP_TARGET, SECGROUP, ELASTIC_IP, STACK)  # Stack: metadata serves its flags
AGENT_KINDS = (*HOSTLESS_KINDS, INSTANCE, VOLUME, SNAPSHOT, BACKUP, LOADBALANCER, REPLICA)
# every agent sees every instance and load balancer, wherever placed: names resolve, security groups admit their
# members and load balancers reach theirs across hosts; each agent runs only its own (KindReconciler.serves)
SHARED_KINDS = (*HOSTLESS_KINDS, INSTANCE, LOADBALANCER)
# an agent with a scoped view (config.agent_view "tenants": large clouds) gets those of the tenants it runs something
# for only; Image and BackupTarget records every host needs, whoever it runs for
SCOPED_KINDS = (NETWORK, SECGROUP, ELASTIC_IP, STACK, INSTANCE, LOADBALANCER)
GLOBAL_KINDS = tuple(k for k in SHARED_KINDS if k not in SCOPED_KINDS)
STALE_AFTER = 5.0  # seconds without a heartbeat before a host shows as not ready
# a host's phases (resilience/monitor.py writes all but up): a heartbeat brings a fenced or lease-expired host
# back up only from a new incarnation of its agent (a new process, or one that has self-fenced since)
UP, SUSPECT, FENCED, LEASE_EXPIRED = "up", "suspect", "fenced", "lease-expired"
DOWN = "down"  # its agent said it is shutting down (`cloudlet down`): silence is expected, nothing is fenced
_host_locks: dict[str, threading.Lock] = {}
_host_locks_guard = threading.Lock()


def host_lock(name: str) -> threading.Lock:
    """Serialises a host's heartbeats with the monitor's phase changes: a renewal never lands between the
    monitor's decision and its write."""
    with _host_locks_guard:
        return _host_locks.setdefault(name, threading.Lock())


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zone: str = Field(max_length=63, pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
    cpus: int = Field(ge=1, le=4096)
    memory_mib: int = Field(ge=16, le=1 << 30)
    version: str = Field(max_length=64)
    endpoint: str = Field("", max_length=200)
    key: str = Field("", max_length=128)
    dns_port: int | None = Field(None, ge=0, le=65535)
    pressure: float = Field(0.0, ge=0, le=100, description="CPU PSI some avg10 (%), 0 if the host has none")
    incarnation: str = Field("", max_length=64, description="the agent's boot id (resilience/lease.py)")
    replied: bool = Field(True, description="whether the agent's previous heartbeat got its reply")
    stopping: bool = Field(False, description="the agent's last beat before an orderly shutdown")
    images: list[Annotated[str, Field(max_length=96, pattern=r"^[a-z0-9][a-z0-9.-]*$")]] = Field(
        default_factory=list, max_length=4096, description="digests of the images the host's pool holds"
    )


class AgentOp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["status", "event", "finalize"]
    seq: int = Field(ge=0)
    id: str = Field(max_length=26)
    values: dict[str, Any] | None = None
    uid: str | None = Field(None, max_length=64)
    reason: str | None = Field(None, max_length=64)
    message: str | None = Field(None, max_length=4096)
    type: str | None = Field(None, max_length=16)
    time: float | None = None


class AgentOps(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ops: builtins.list[AgentOp] = Field(max_length=10_000)


def register_host(store: Store, name: str, zone: str, cpus: int, memory_mib: int) -> Resource:
    """A host's zone is fixed when it joins; its capacity follows what its agent reports (a cordon stays)."""
    spec = HostSpec(cpus=cpus, memory_mib=memory_mib).dump()
    res = store.cached(HOST_KIND).get(SYSTEM_TENANT, name)  # every heartbeat: kept in memory, current
    if res is not None:
        spec = HostSpec.of(res).model_copy(update={"cpus": cpus, "memory_mib": memory_mib}).dump()
        if res.spec != spec:
            res = store.update_spec(res.id, spec)
        return res
    res = Resource(kind=HOST_KIND, tenant=SYSTEM_TENANT, name=name, zone=zone, spec=spec, phase="up")
    return store.create(res, created=f"host {name} joined {zone}")


class HostJoin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=63, pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
    zone: str = Field(max_length=63, pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def join_host(store: Store, join: HostJoin) -> tuple[Resource, str]:
    """A host's record and a new agent token (any earlier one of the host is revoked: a host that comes back
    wiped joins again with the same name). Its zone is fixed while the record exists."""
    found = store.list(HOST_KIND, tenant=SYSTEM_TENANT, name=join.name)
    if found and found[0].zone != join.zone:
        raise Conflict(f"host {join.name} is in {found[0].zone}; remove it before adding it to {join.zone}")
    res = found[0] if found else None
    if res is None:
        spec = HostSpec(cpus=1, memory_mib=16).dump()  # until its agent's first heartbeat says what it has
        res = Resource(kind=HOST_KIND, tenant=SYSTEM_TENANT, name=join.name, zone=join.zone, spec=spec, phase="joining")
        res = store.create(res, created=f"host {join.name} added to {join.zone}")
    token = secrets.token_urlsafe(32)
    store.revoke_tokens(SYSTEM_TENANT, f"{HOST_ROLE}:{join.name}")
    store.add_token(token, SYSTEM_TENANT, f"{HOST_ROLE}:{join.name}")
    return res, token


def remove_host(store: Store, name: str, force: bool) -> builtins.list[Resource]:
    """Removes the host's record and revokes its token. Records still placed there refuse it, unless force:
    then they are released (instances and load balancers go back to the scheduler, the rest are purged with the
    host's disks). Returns what was released or purged."""
    res = store.get(HOST_KIND, SYSTEM_TENANT, name)
    placed = [r for kind in AGENT_KINDS if kind not in HOSTLESS_KINDS for r in store.list(kind, host=name)]
    if placed and not force:
        sample = ", ".join(f"{r.kind.lower()} {r.name}" for r in placed[:5])
        raise Conflict(
            f"host {name} still holds {len(placed)} records ({sample}); drain it first, or remove it with --force"
        )
    for r in placed:
        if r.kind in (INSTANCE, LOADBALANCER) and not r.deleting:
            status = {**r.status, "state": "pending", "pid": None, "run_nonce": None, "placement": None}
            store.place(r.id, None, phase="pending", status=status)
            store.add_event(r, "HostRemoved", f"host {name} was removed by force; placing it again", "Warning")
        else:
            store.purge_lost(r.id)
    store.revoke_tokens(SYSTEM_TENANT, f"{HOST_ROLE}:{name}")
    store.purge_lost(res.id)
    return placed


def set_cordoned(store: Store, name: str, on: bool) -> Resource:
    """Cordoned, placement puts nothing new on the host; what runs there stays."""
    res = store.get(HOST_KIND, SYSTEM_TENANT, name)
    spec = HostSpec.of(res)
    if spec.cordoned != on:
        spec.cordoned = on
        res = store.update_spec(res.id, spec.dump())
        what = "cordoned: nothing new is placed here" if on else "uncordoned: placement may use it again"
        store.add_event(res, "Cordoned" if on else "Uncordoned", f"host {name} {what}")
    return res


def host_token(store: Store, name: str, path: Path) -> str:
    """The agent's credential, kept 0600 at path; made once per host."""
    check_name("host", name)
    token = path.read_text().strip() if path.exists() else ""
    found = store.lookup_token(token) if token else None
    if found is None or found != (SYSTEM_TENANT, f"{HOST_ROLE}:{name}"):
        token = secrets.token_urlsafe(32)
        store.add_token(token, SYSTEM_TENANT, f"{HOST_ROLE}:{name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    return token


LEASE_PEERS = 8  # hosts a lease names to ask when it runs out: one answer is enough, and a beat stays small


def lease_peers(hosts: builtins.list[Resource], name: str) -> builtins.list[Resource]:
    """The LEASE_PEERS hosts after `name` in name order, wrapping around (in a smaller cloud, every other host),
    none being removed: O(hosts) a beat, where naming every host made each beat's reply and record O(hosts) too."""
    others = [h for h in hosts if h.name != name and not h.deleting]
    return heapq.nsmallest(LEASE_PEERS, others, key=lambda h: (h.name < name, h.name))


def heartbeat(store: Store, caller: Caller, name: str, beat: Heartbeat, now: float, lease_s: float) -> dict[str, Any]:
    """Renews the host's lease (now: the control plane's clock) and answers with it and the peers its agent asks
    before it self-fences; a fenced or lease-expired host's old incarnation gets no renewal (`revoked`)."""
    if caller.host != name:
        raise Forbidden(f"this token belongs to host {caller.host}, not {name}")
    with host_lock(name):
        res = register_host(store, name, beat.zone, beat.cpus, beat.memory_mib)
        old, was = HostStatus.of(res), res.phase
        if was in (FENCED, LEASE_EXPIRED) and beat.incarnation == (old.incarnation or ""):
            return {**host_view(res), "lease": None, "revoked": was}
        if beat.stopping:  # the monitor leaves a host that is down alone; its next start beats it up again
            status = old.model_copy(update={"phase_since": time.time()})
            res = store.update_status(res.id, status=status.dump(), phase=DOWN)
            return {**host_view(res), "lease": None, "revoked": DOWN}
        peers = lease_peers(store.cached(HOST_KIND).list(), name)
        steady = was == UP and beat.replied and old.up_since is not None
        status = old.model_copy(
            update={
                "version": beat.version,
                "endpoint": beat.endpoint,
                "key": beat.key,
                "dns_port": beat.dns_port,
                "last_heartbeat": time.time(),
                "pressure": beat.pressure,
                "images": beat.images,
                "incarnation": beat.incarnation,
                "renewed_at": now,
                "lease_until": now + lease_s,
                "up_since": old.up_since if steady else now,
                "lease_peers": [p.name for p in peers],
                "phase_since": old.phase_since if was == UP else time.time(),
            }
        )
        res = store.update_status(res.id, status=status.dump(), phase=UP)
    if was in (SUSPECT, FENCED, LEASE_EXPIRED):
        down = time.time() - (old.phase_since or time.time())
        store.add_event(res, "HostRecovered", f"host {name} is up again after {down:.1f} s {was}")
    urls = {p.name: p.status.get("endpoint") for p in peers}  # HostStatus's field, unparsed
    lease = {"valid_for": lease_s, "peers": [{"host": n, "url": f"{u}/lease" if u else ""} for n, u in urls.items()]}
    return {**host_view(res), "lease": lease}


def host_view(res: Resource) -> dict[str, Any]:
    spec, st = HostSpec.of(res), HostStatus.of(res)
    age = time.time() - (st.last_heartbeat or 0)
    return {
        "name": res.name,
        "zone": res.zone,
        "state": res.phase,
        "since": st.phase_since,
        "cpus": spec.cpus,
        "memory_mib": spec.memory_mib,
        "cordoned": spec.cordoned,
        "pressure": st.pressure,
        "version": st.version,
        "endpoint": st.endpoint,
        "dns_port": st.dns_port,
        "incarnation": st.incarnation,
        "last_heartbeat": st.last_heartbeat,
        "heartbeat_age_s": round(age, 2) if st.last_heartbeat else None,
        # the last drain's outcome; each move's numbers are in GET /v1/hosts/NAME/drain (resilience/drain.py)
        "drain": {k: v for k, v in st.drain.items() if k != "moves"} if st.drain else None,
    }


def visible_to(host: str, tenants: Iterable[str] | None = None) -> Callable[[Resource], bool]:
    """What an agent sees: its host's records and the shared kinds (not unplaced records of other kinds: none are
    its work); with `tenants` (a scoped view), the scoped kinds of those tenants only."""
    if tenants is None:
        return lambda res: res.kind in SHARED_KINDS or res.host == host
    scope = frozenset(tenants)
    return lambda res: (
        res.host == host or res.kind in GLOBAL_KINDS or (res.kind in SCOPED_KINDS and res.tenant in scope)
    )


def _may_write(host: str | None, res: Resource, op: str) -> bool:
    """An agent writes what it realises: records of its own host; of the host-less kinds only an image's
    status and events (each host makes its own copy); it never finalizes a shared record."""
    if res.host is not None:
        return res.host == host
    return res.kind == IMAGE and op != "finalize"


def apply_ops(store: Store, caller: Caller, ops: builtins.list[AgentOp], on_purged: Callable[[Resource], None]) -> int:
    """Applies an agent's outbox in order; ops on records already gone, or not the agent's to write, are
    dropped (logged), so one bad op never blocks the rest. Returns the last seq handled."""
    host = caller.host
    last = 0
    for op in ops:
        res = store.get_by_id(op.id)
        if res is not None and not _may_write(host, res, op.op):
            log.warning("host %s may not %s %s %s; dropped", host, op.op, res.kind, res.name)
        elif res is not None:
            if op.op == "status":
                values = {k: v for k, v in (op.values or {}).items() if k in ("status", "phase", "observed_generation")}
                store.update_status(res.id, writer=host, **values)
            elif op.op == "event":
                store.add_event(res, op.reason or "", op.message or "", op.type or "Normal", uid=op.uid, at=op.time)
            elif store.finalize(res.id):
                on_purged(res)
        last = op.seq
    return last


# what an agent never gets of another host's instance: it resolves, admits and balances to it, never boots it
FOREIGN_SECRETS = ("user_data",)


def _redacted(item: dict[str, Any], host: str) -> dict[str, Any]:
    """A wire record as host's agent may see it: another host's instance without its boot-time secrets (a host
    broken into must not give away every tenant's user-data)."""
    if item["kind"] == INSTANCE and item.get("host") != host and any(k in item["spec"] for k in FOREIGN_SECRETS):
        item["spec"] = {k: v for k, v in item["spec"].items() if k not in FOREIGN_SECRETS}
    return item


class AgentService:
    """The control plane's end of the agent protocol, shared by the HTTP routes and in-process agents."""

    def __init__(
        self,
        store: Store,
        on_purged: Callable[[Resource], None],
        clock: Clock | None = None,
        lease_s: float = 10.0,
    ) -> None:
        self.store = store
        self.watch = Watch(store)
        self.on_purged = on_purged
        self.clock = clock or RealClock()  # lease renewals are stamped on it (resilience/monitor.py reads them)
        self.lease_s = lease_s

    @staticmethod
    def _kinds(kinds: builtins.list[str]) -> builtins.list[str]:
        bad = sorted(set(kinds) - set(AGENT_KINDS))
        if bad:
            raise BadRequest(f"agents cannot watch {', '.join(bad)}; choose from {', '.join(AGENT_KINDS)}")
        return kinds

    @staticmethod
    def _host(caller: Caller) -> str:
        if caller.host is None:
            raise Forbidden("only a host agent's token may use the agent API")
        return caller.host

    def list(
        self, caller: Caller, kinds: builtins.list[str], tenants: builtins.list[str] | None = None
    ) -> dict[str, Any]:
        """What host's agent sees of kinds; with `tenants`, its scoped view (the scoped kinds read by tenant)."""
        host = self._host(caller)
        fetch = None
        if tenants is not None:
            fetch = partial(self._scoped_records, host, sorted(set(tenants)))
        items, rev = self.watch.list(self._kinds(kinds), visible_to(host, tenants), fetch)
        return {"items": [_redacted(item, host) for item in items], "rev": rev}

    def _scoped_records(self, host: str, tenants: builtins.list[str], kind: str) -> builtins.list[Resource]:
        if kind not in SCOPED_KINDS:
            return self.store.list(kind)
        found = {r.id: r for r in self.store.list(kind, host=host)}
        found.update((r.id, r) for tenant in tenants for r in self.store.list(kind, tenant=tenant))
        return list(found.values())

    def wait(
        self,
        caller: Caller,
        rev: int,
        kinds: builtins.list[str],
        timeout: float,
        tenants: builtins.list[str] | None = None,
    ) -> dict[str, Any]:
        """Changes after rev that host's agent sees; with `tenants`, in its scoped view."""
        host = self._host(caller)
        hostless = SHARED_KINDS if tenants is None else GLOBAL_KINDS
        visible = visible_to(host, tenants)
        events, latest = self.watch.wait(
            rev, self._kinds(kinds), host, hostless, timeout, visible, tenants, SCOPED_KINDS
        )
        for event in events:
            if event["object"] is not None:
                event["object"] = _redacted(event["object"], host)
        return {"events": events, "rev": latest}

    def apply(self, caller: Caller, ops: AgentOps) -> dict[str, int]:
        self._host(caller)
        return {"applied": apply_ops(self.store, caller, ops.ops, self.on_purged)}

    def heartbeat(self, caller: Caller, name: str, beat: Heartbeat) -> dict[str, Any]:
        self._host(caller)
        return heartbeat(self.store, caller, name, beat, self.clock.now(), self.lease_s)
