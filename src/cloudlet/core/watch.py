"""The watch API's server side: list records with the revision they are current at, then wait for changes
after a revision (long-poll). A watcher that resumes from its last revision misses nothing and gets each
changed record once, in its latest state (level-triggered, as reconcilers want it)."""

from __future__ import annotations

import builtins

__all__ = ["Watch", "WatchEvent"]

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from cloudlet.core.records import Resource, to_wire
from cloudlet.core.store import Store

WatchEvent = dict[str, Any]  # {"type": "upsert"|"delete", "id": ..., "object": record-or-None}


class Watch:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._cond = threading.Condition()
        self._latest = 0
        self._closed = False
        store.watchers.append(self._wake)

    def close(self) -> None:
        """The server is stopping: every wait answers now, so no agent's long poll holds its shutdown up."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _wake(self, rev: int) -> None:
        with self._cond:
            self._latest = max(self._latest, rev)
            self._cond.notify_all()

    def list(
        self,
        kinds: Iterable[str],
        visible: Callable[[Resource], bool],
        fetch: Callable[[str], Iterable[Resource]] | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        """The visible records of kinds, read by `fetch` (all of a kind, by default)."""
        rev = self.store.revision()  # read first: a write racing the listing is delivered again, never lost
        read = fetch or self.store.list
        items = [to_wire(r, owned=True) for kind in kinds for r in read(kind) if visible(r)]
        return items, rev

    def wait(
        self,
        rev: int,
        kinds: Iterable[str],
        host: str | None,
        hostless: Iterable[str],
        timeout: float,
        visible: Callable[[Resource], bool],
        tenants: Iterable[str] | None = None,
        scoped: Iterable[str] = (),
    ) -> tuple[builtins.list[WatchEvent], int]:
        """Changes of kinds after rev: for a host, of records on it, of the hostless kinds, and with `tenants` of
        the scoped kinds of those tenants (store.changed_since)."""
        kinds = list(kinds)
        tenants = None if tenants is None else list(tenants)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._latest
            ids, latest = self.store.changed_since(rev, kinds, host, hostless, tenants, scoped)
            if ids:
                found = {r.id: r for r in self.store.get_many(ids)}
                events: builtins.list[WatchEvent] = []
                for rid in ids:
                    res = found.get(rid)
                    if res is None or not visible(res):  # gone, or moved out of this watcher's view
                        events.append({"type": "delete", "id": rid, "object": None})
                    else:
                        events.append({"type": "upsert", "id": rid, "object": to_wire(res, owned=True)})
                return events, latest
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                return [], latest
            with self._cond:
                if self._latest == seen and not self._closed:
                    self._cond.wait(min(left, 1.0))  # also polls: another control-plane process may write
