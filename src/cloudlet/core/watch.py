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
        store.watchers.append(self._wake)

    def _wake(self, rev: int) -> None:
        with self._cond:
            self._latest = max(self._latest, rev)
            self._cond.notify_all()

    def list(
        self, kinds: Iterable[str], visible: Callable[[Resource], bool]
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        rev = self.store.revision()  # read first: a write racing the listing is delivered again, never lost
        items = [to_wire(r, owned=True) for kind in kinds for r in self.store.list(kind) if visible(r)]
        return items, rev

    def wait(
        self,
        rev: int,
        kinds: Iterable[str],
        host: str | None,
        hostless: Iterable[str],
        timeout: float,
        visible: Callable[[Resource], bool],
    ) -> tuple[builtins.list[WatchEvent], int]:
        kinds = list(kinds)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._latest
            ids, latest = self.store.changed_since(rev, kinds, host, hostless)
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
            if left <= 0:
                return [], latest
            with self._cond:
                if self._latest == seen:
                    self._cond.wait(min(left, 1.0))  # also polls: another control-plane process may write
