"""One kind's records kept in memory by the control plane. A read after a write of the kind by this process, or
POLL seconds after the last look, asks the change log which records of the kind were written since (by any
process: the log is in the database) and reads only those again; other reads cost nothing. So this process's
writes are seen at once, another's within POLL (as the watch API's waits poll, core/watch.py). For kinds read
far more often than written, by many callers: every heartbeat answers with its host's peers and the host
monitor, recovery and the replica planner look hosts up, which listed every Host record each time (O(hosts²)
a second at one heartbeat a host a second)."""

from __future__ import annotations

__all__ = ["KindCache"]

import threading
import time
from typing import TYPE_CHECKING

from cloudlet.core.records import Resource

if TYPE_CHECKING:
    from cloudlet.core.store import Store

POLL = 1.0  # seconds: how stale another process's write may be seen


class KindCache:
    def __init__(self, store: Store, kind: str) -> None:
        self.store = store
        self.kind = kind
        self._lock = threading.Lock()
        self._rev: int | None = None  # the change log's revision the records are current at; None: never read
        self._by_id: dict[str, Resource] = {}
        self._by_name: dict[tuple[str, str], Resource] = {}  # (tenant, name) -> record (parent-less kinds)
        self._ordered: list[Resource] | None = None  # in id order; None: to sort again
        self._stale = True  # this process wrote a record of the kind since the last look
        self._looked = 0.0  # time.monotonic() of the last look
        store.listeners.append(self._on_write)

    def _on_write(self, res: Resource, _spec_side: bool) -> None:
        if res.kind == self.kind:
            self._stale = True

    def _refresh(self) -> None:
        now = time.monotonic()
        if not self._stale and now - self._looked < POLL:
            return
        self._stale, self._looked = False, now  # before the look: a write committed during it marks it again
        if self._rev is None:
            rev = self.store.revision()  # first: a write racing the listing comes again from the log, never lost
            found = self.store.list(self.kind)
            self._by_id = {r.id: r for r in found}
            self._rev, self._ordered = rev, found
        else:
            fresh, self._rev = self.store.changed_records(self._rev, self.kind)
            if not fresh:
                return
            for rid, res in fresh.items():
                old = self._by_id.pop(rid, None)
                if old is not None:
                    del self._by_name[(old.tenant, old.name)]
                if res is not None:
                    self._by_id[rid] = self._by_name[(res.tenant, res.name)] = res
            self._ordered = None
            return
        self._by_name = {(r.tenant, r.name): r for r in self._by_id.values()}

    def list(self, tenant: str | None = None) -> list[Resource]:
        """The records in id (creation) order, as `Store.list(kind, tenant)`; shared: copy before changing one."""
        with self._lock:
            self._refresh()
            if self._ordered is None:
                self._ordered = sorted(self._by_id.values(), key=lambda r: r.id)
            ordered = self._ordered
        return ordered if tenant is None else [r for r in ordered if r.tenant == tenant]

    def get(self, tenant: str, name: str) -> Resource | None:
        with self._lock:
            self._refresh()
            return self._by_name.get((tenant, name))

    def get_by_id(self, rid: str) -> Resource | None:
        with self._lock:
            self._refresh()
            return self._by_id.get(rid)
