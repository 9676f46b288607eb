"""Host kind and the control plane's side of the agent protocol.

A Host record is written by its agent's heartbeats (zone, capacity, version, endpoint, last heartbeat). Each
agent authenticates with a per-host token that lets it read the records it serves and write only the status,
events and cleanup of records placed on its own host (plus the host-independent kinds it realises locally).
"""

from __future__ import annotations

import builtins

__all__ = [
    "HOST_KIND",
    "AGENT_KINDS",
    "HOSTLESS_KINDS",
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
]

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.resource import HOST, IMAGE, INSTANCE, HostSpec, HostStatus
from cloudlet.core.context import HOST_ROLE, SYSTEM_TENANT, Caller
from cloudlet.core.errors import BadRequest, Forbidden
from cloudlet.core.records import Resource, check_name
from cloudlet.core.store import Store
from cloudlet.core.watch import Watch
from cloudlet.lb.resource import LOADBALANCER
from cloudlet.network.resource import ELASTIC_IP, NETWORK, SECGROUP
from cloudlet.stacks.resource import STACK
from cloudlet.storage.resource import BACKUP, BACKUP_TARGET, SNAPSHOT, VOLUME

HOST_KIND = HOST
log = logging.getLogger("cloudlet.hosts")
# what an agent watches; Network, Image, BackupTarget, SecurityGroup and ElasticIP records are not placed on a host
# but every host needs them
HOSTLESS_KINDS = (NETWORK, IMAGE, BACKUP_TARGET, SECGROUP, ELASTIC_IP, STACK)  # Stack: metadata serves its flags
AGENT_KINDS = (*HOSTLESS_KINDS, INSTANCE, VOLUME, SNAPSHOT, BACKUP, LOADBALANCER)
STALE_AFTER = 5.0  # seconds without a heartbeat before a host shows as not ready


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zone: str = Field(max_length=63, pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
    cpus: int = Field(ge=1, le=4096)
    memory_mib: int = Field(ge=16, le=1 << 30)
    version: str = Field(max_length=64)
    endpoint: str = Field("", max_length=200)
    key: str = Field("", max_length=128)
    dns_port: int | None = Field(None, ge=0, le=65535)


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
    """A host's zone is fixed when it joins; its capacity follows what its agent reports."""
    spec = HostSpec(cpus=cpus, memory_mib=memory_mib).dump()
    for res in store.list(HOST_KIND, tenant=SYSTEM_TENANT, name=name):
        if res.spec != spec:
            res = store.update_spec(res.id, spec)
        return res
    res = Resource(kind=HOST_KIND, tenant=SYSTEM_TENANT, name=name, zone=zone, spec=spec, phase="up")
    return store.create(res, created=f"host {name} joined {zone}")


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


def heartbeat(store: Store, caller: Caller, name: str, beat: Heartbeat) -> Resource:
    if caller.host != name:
        raise Forbidden(f"this token belongs to host {caller.host}, not {name}")
    res = register_host(store, name, beat.zone, beat.cpus, beat.memory_mib)
    status = HostStatus(
        version=beat.version, endpoint=beat.endpoint, key=beat.key, dns_port=beat.dns_port, last_heartbeat=time.time()
    )
    return store.update_status(res.id, status=status.dump(), phase="up")


def host_view(res: Resource) -> dict[str, Any]:
    spec, st = HostSpec.of(res), HostStatus.of(res)
    age = time.time() - (st.last_heartbeat or 0)
    return {
        "name": res.name,
        "zone": res.zone,
        "state": res.phase if age <= STALE_AFTER else "unreachable",
        "cpus": spec.cpus,
        "memory_mib": spec.memory_mib,
        "version": st.version,
        "endpoint": st.endpoint,
        "dns_port": st.dns_port,
        "last_heartbeat": st.last_heartbeat,
        "heartbeat_age_s": round(age, 2) if st.last_heartbeat else None,
    }


def visible_to(host: str) -> Callable[[Resource], bool]:
    """What an agent sees: its host's records and the host-less kinds (not unplaced ones: none are its work)."""

    def visible(res: Resource) -> bool:
        return res.kind in HOSTLESS_KINDS or res.host == host

    return visible


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


class AgentService:
    """The control plane's end of the agent protocol, shared by the HTTP routes and in-process agents."""

    def __init__(self, store: Store, on_purged: Callable[[Resource], None]) -> None:
        self.store = store
        self.watch = Watch(store)
        self.on_purged = on_purged

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

    def list(self, caller: Caller, kinds: builtins.list[str]) -> dict[str, Any]:
        items, rev = self.watch.list(self._kinds(kinds), visible_to(self._host(caller)))
        return {"items": items, "rev": rev}

    def wait(self, caller: Caller, rev: int, kinds: builtins.list[str], timeout: float) -> dict[str, Any]:
        host = self._host(caller)
        events, latest = self.watch.wait(rev, self._kinds(kinds), host, HOSTLESS_KINDS, timeout, visible_to(host))
        return {"events": events, "rev": latest}

    def apply(self, caller: Caller, ops: AgentOps) -> dict[str, int]:
        self._host(caller)
        return {"applied": apply_ops(self.store, caller, ops.ops, self.on_purged)}

    def heartbeat(self, caller: Caller, name: str, beat: Heartbeat) -> Resource:
        self._host(caller)
        return heartbeat(self.store, caller, name, beat)
