"""An agent's view of the control plane's records: filled by list + watch, kept on local disk, written through.

Reconcilers read it like the store. Their writes (status, events, "cleanup done") apply here at once and queue
in an outbox that the agent sends to cloudletd whenever it is reachable, so the data plane keeps acting while
the control plane is down and nothing it did is lost or sent twice (events carry a uid; status is idempotent).

Status is the agent's to write: while a status write of ours is still in the outbox, the copy of that record
coming back from the control plane keeps our status, so an older server copy never undoes a newer local one.
"""

from __future__ import annotations

import builtins

__all__ = ["RecordCache", "Change"]

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudlet.core.errors import NotFound
from cloudlet.core.records import Resource, from_wire, new_id, to_wire

Change = tuple[str, str, Resource | None]  # ("upsert" | "delete", id, record)
STATUS_FIELDS = ("status", "phase", "observed_generation")
# a server copy that differs from ours in any of these is news for the reconcilers; a status echo is not
_NEWS = ("generation", "deleted_at", "host", "phase", "spec", "labels", "finalizers")


class RecordCache:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.listeners: builtins.list[Callable[[Resource, bool], None]] = []
        self.rev = 0
        self.listed = False
        # the tenants a scoped view holds the shared records of (agent.py catch_up); None: every tenant's
        self.scope: frozenset[str] | None = None
        self._items: dict[str, Resource] = {}
        # the same records by kind: every agent holds every instance of the cloud (SHARED_KINDS), and a listing of
        # one kind must not walk them all
        self._kinds: dict[str, dict[str, Resource]] = {}
        # and by (kind, host): an agent's own instances, among every instance of the cloud (records are replaced,
        # never changed in place, so an index entry moves with _put and _drop)
        self._placed: dict[tuple[str, str | None], dict[str, Resource]] = {}
        self._pending: dict[str, tuple[dict[str, Any], int]] = {}  # id -> (local status values, op seq)
        self._finalized: set[str] = set()  # cleaned up here; the control plane has not purged them yet
        self._outbox: builtins.list[dict[str, Any]] = []
        self._seq = 0
        self._dirty = False
        self._lock = threading.RLock()
        self.outbox_ready = threading.Condition(self._lock)

    # the Records protocol (core/context.py)
    def get_by_id(self, rid: str) -> Resource | None:
        with self._lock:
            return self._items.get(rid)

    def get(self, kind: str, tenant: str | None, name: str, parent: str = "") -> Resource:
        for res in self.list(kind, tenant, name=name, parent=parent):
            return res
        raise NotFound(f"{kind} {name!r} not found")

    def list(self, kind: str | None = None, tenant: str | None = None, **filters: Any) -> builtins.list[Resource]:
        with self._lock:
            if kind is not None and "host" in filters:
                items = list(self._placed.get((kind, filters["host"]), {}).values())
            else:
                items = list((self._items if kind is None else self._kinds.get(kind, {})).values())
        return sorted(
            (
                r
                for r in items
                if (tenant is None or r.tenant == tenant) and all(getattr(r, k) == v for k, v in filters.items())
            ),
            key=lambda r: r.id,
        )

    def _put(self, res: Resource) -> None:
        self._drop(res.id)
        self._items[res.id] = res
        self._kinds.setdefault(res.kind, {})[res.id] = res
        self._placed.setdefault((res.kind, res.host), {})[res.id] = res

    def _drop(self, rid: str) -> None:
        res = self._items.pop(rid, None)
        if res is not None:
            self._kinds[res.kind].pop(rid, None)
            self._placed[(res.kind, res.host)].pop(rid, None)

    def update_status(self, rid: str, **values: Any) -> Resource:
        unknown = set(values) - set(STATUS_FIELDS)
        if unknown:
            raise ValueError(f"an agent writes only status fields, not {sorted(unknown)}")
        with self._lock:
            res = self._items.get(rid)
            if res is None:
                raise NotFound(f"resource {rid} not found")
            old = res
            res = dataclasses.replace(res, **values, updated_at=time.time())
            self._put(res)
            seq = self._queue({"op": "status", "id": rid, "values": values})
            merged = {**self._pending.get(rid, ({}, 0))[0], **values}
            self._pending[rid] = (merged, seq)
        if res.phase != old.phase:
            self._tell(res, False)
        return res

    def add_event(self, res: Resource, reason: str, message: str, type_: str = "Normal") -> None:
        with self._lock:
            self._queue(
                {
                    "op": "event",
                    "uid": new_id(),
                    "id": res.id,
                    "reason": reason,
                    "message": message,
                    "type": type_,
                    "time": time.time(),
                }
            )

    def finalize(self, rid: str) -> bool:
        with self._lock:
            self._drop(rid)
            self._pending.pop(rid, None)
            self._finalized.add(rid)
            self._queue({"op": "finalize", "id": rid})
        return True

    # the outbox
    def _queue(self, op: dict[str, Any]) -> int:
        self._seq += 1
        self._outbox.append({**op, "seq": self._seq})
        self._dirty = True
        self.outbox_ready.notify_all()
        return self._seq

    def pending_ops(self) -> builtins.list[dict[str, Any]]:
        """The outbox in order, each record's run of status writes folded into one (the last one wins)."""
        with self._lock:
            ops: builtins.list[dict[str, Any]] = []
            for op in self._outbox:
                prev = ops[-1] if ops else None
                if prev is not None and op["op"] == prev["op"] == "status" and op["id"] == prev["id"]:
                    ops[-1] = {**op, "values": {**prev["values"], **op["values"]}}
                else:
                    ops.append(op)
            return ops

    def acknowledge(self, upto: int) -> None:
        """The control plane has applied every op up to seq `upto`."""
        with self._lock:
            self._outbox = [op for op in self._outbox if op["seq"] > upto]
            self._pending = {rid: p for rid, p in self._pending.items() if p[1] > upto}
            self._dirty = True

    # what the control plane sends
    def tenants_on(self, host: str) -> frozenset[str]:
        """The tenants with a record on host."""
        with self._lock:
            return frozenset(r.tenant for (_, on), items in self._placed.items() if on == host for r in items.values())

    def widen(self, tenants: frozenset[str], records: builtins.list[Resource]) -> None:
        """A scoped view takes in `tenants`: `records`, their shared records listed now (the revision stays: what
        changed since it comes with the next watch, for the wider scope)."""
        self.apply([("upsert", r.id, r) for r in records], self.rev)
        with self._lock:
            self.scope = (self.scope or frozenset()) | tenants

    def narrow(self, tenants: frozenset[str], host: str, kinds: tuple[str, ...]) -> None:
        """A scoped view lets go of `tenants`: their records of kinds not on host are forgotten, as if deleted."""
        with self._lock:
            self.scope = (self.scope or frozenset()) - tenants
            gone = [
                rid
                for kind in kinds
                for rid, r in self._kinds.get(kind, {}).items()
                if r.tenant in tenants and r.host != host
            ]
        self.apply([("delete", rid, None) for rid in gone], self.rev)

    def replace_all(self, records: builtins.list[Resource], rev: int, scope: frozenset[str] | None = None) -> None:
        """A full listing (of the view of `scope`'s tenants, None: all of them): records not in it are gone."""
        with self._lock:
            self.scope = scope
            live = {r.id for r in records}
            self._finalized &= live
            gone = [rid for rid in self._items if rid not in live]
            changes: builtins.list[Change] = [("upsert", r.id, r) for r in records] + [
                ("delete", rid, None) for rid in gone
            ]
        self.apply(changes, rev)
        self.listed = True

    def apply(self, changes: builtins.list[Change], rev: int) -> None:
        news: builtins.list[tuple[Resource, bool]] = []
        with self._lock:
            for kind, rid, res in changes:
                old = self._items.get(rid)
                if kind == "delete" or res is None:
                    self._drop(rid)
                    self._pending.pop(rid, None)
                    self._finalized.discard(rid)
                    if old is not None:
                        news.append((dataclasses.replace(old, deleted_at=old.deleted_at or time.time()), True))
                    continue
                if rid in self._finalized:
                    continue  # our cleanup is done; the control plane will purge it
                if rid in self._pending:
                    res = dataclasses.replace(res, **self._pending[rid][0])
                self._put(res)
                if old is None or any(getattr(old, f) != getattr(res, f) for f in _NEWS):
                    news.append((res, True))
            self.rev = max(self.rev, rev)
            self._dirty = True
        for res, spec_side in news:
            self._tell(res, spec_side)

    def _tell(self, res: Resource, spec_side: bool) -> None:
        for listener in self.listeners:
            listener(res, spec_side)

    # local disk: what the agent needs to go on alone after a restart
    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            if not self._dirty:
                return
            data = {
                "rev": self.rev,
                "listed": self.listed,
                "scope": None if self.scope is None else sorted(self.scope),
                "items": [to_wire(r) for r in self._items.values()],
                "outbox": self._outbox,
                "seq": self._seq,
                "finalized": sorted(self._finalized),
                "pending": {rid: [v, s] for rid, (v, s) in self._pending.items()},
            }
            self._dirty = False
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data))  # json.dump streams through the pure-Python encoder, several times slower
        os.replace(tmp, self.path)

    def load(self) -> bool:
        """Restores the last saved view; False if there is none."""
        if self.path is None or not self.path.exists():
            return False
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        with self._lock:
            self._items, self._kinds, self._placed = {}, {}, {}
            for d in data["items"]:
                self._put(from_wire(d))
            self.rev, self.listed, self._seq = int(data["rev"]), bool(data["listed"]), int(data["seq"])
            scope = data.get("scope")  # absent in a cache saved before scoped views
            self.scope = None if scope is None else frozenset(scope)
            self._outbox = list(data["outbox"])
            self._finalized = set(data["finalized"])
            self._pending = {rid: (v, int(s)) for rid, (v, s) in data["pending"].items()}
        return True
