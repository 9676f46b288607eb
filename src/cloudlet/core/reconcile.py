"""Work queue and reconciler manager (DESIGN.md section 3, controller-runtime shape).

A key is (kind, id). At most one worker handles a key at a time; a key added while it is being handled is
handled again afterwards. Errors retry with exponential backoff (5 ms to 60 s, jittered); Result.requeue_after
polls again later. The same manager runs threaded with the real clock, or stepped by hand with a virtual clock.

`KindReconciler` owns a record's life so that a kind writes only its converge and cleanup steps: load, skip
records this process does not serve, on deletion clean up, record the Deleted event and only then drop the
finalizer (a record whose finalizer is still there is never purged). Watches are declared, not polled: a
reconciler maps a change of another kind to the keys of its own kind that depend on it.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cloudlet.core.clock import Clock
from cloudlet.core.errors import TerminalError
from cloudlet.core.records import FINALIZER, Resource

if TYPE_CHECKING:
    from cloudlet.core.context import Records

__all__ = ["Result", "Reconciler", "KindReconciler", "WorkQueue", "Manager", "Watches"]

log = logging.getLogger("cloudlet.reconcile")
Key = tuple[str, str]


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


Watches = dict[str, Callable[[Resource], list[str]]]  # other kind -> ids of ours to enqueue when one changes


class Reconciler(Protocol):
    kind: str
    watches: Watches

    def reconcile(self, rid: str) -> Result: ...


class KindReconciler:
    """Base of every kind's reconciler: subclasses set `kind` and write `converge` and `cleanup`."""

    kind = ""

    def __init__(self, store: Records) -> None:
        self.records = store
        self.watches: Watches = {}

    def serves(self, res: Resource) -> bool:
        """Whether this process realises res (an agent serves its own host's records)."""
        return True

    def converge(self, res: Resource) -> Result:
        raise NotImplementedError

    def cleanup(self, res: Resource) -> None:
        """Removes every real artefact of res; raising keeps the finalizer, and the cleanup is retried."""

    def forget(self, rid: str) -> None:
        """The record is gone: remove whatever real artefact is still named after it (nothing by default)."""

    def let_go(self, res: Resource) -> None:
        """res is served elsewhere (it moved to another host): drop what of it is still here (nothing by default)."""

    def reconcile(self, rid: str) -> Result:
        res = self.records.get_by_id(rid)
        if res is None:
            self.forget(rid)
            return Result()
        if res.kind != self.kind:  # a watch mapped another kind's id here (an owner, say): not one of ours
            return Result()
        if not self.serves(res):
            self.let_go(res)
            return Result()
        if res.deleting:
            if FINALIZER in res.finalizers:
                self.cleanup(res)
                self.records.add_event(res, "Deleted", f"{res.kind.lower()} {res.name} and its artefacts removed")
                self.records.finalize(rid)
            return Result()
        return self.converge(res)


class WorkQueue:
    def __init__(self, clock: Clock, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self._heap: list[tuple[float, int, Key]] = []
        self._due: dict[Key, float] = {}
        self._processing: set[Key] = set()
        self._dirty: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._seq = 0
        self._cond = threading.Condition()

    def add(self, key: Key, after: float = 0.0) -> None:
        with self._cond:
            when = self.clock.now() + after
            if key in self._processing:
                self._dirty[key] = min(when, self._dirty.get(key, when))
                return
            if key in self._due and self._due[key] <= when:
                return
            self._due[key] = when
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, key))
            self._cond.notify()

    def _pop_ready_locked(self) -> Key | None:
        now = self.clock.now()
        while self._heap:
            when, _, key = self._heap[0]
            if self._due.get(key) != when:
                heapq.heappop(self._heap)  # superseded by an earlier entry
                continue
            if when > now:
                return None
            heapq.heappop(self._heap)
            del self._due[key]
            self._processing.add(key)
            return key
        return None

    def pop_ready(self) -> Key | None:
        with self._cond:
            return self._pop_ready_locked()

    def get(self, timeout: float) -> Key | None:
        """Blocks (real clock only) until a key is due or timeout passes."""
        with self._cond:
            key = self._pop_ready_locked()
            if key is None:
                wait = timeout
                nd = self.next_due_locked()
                if nd is not None:
                    wait = max(0.0, min(timeout, nd - self.clock.now()))
                self._cond.wait(wait)
                key = self._pop_ready_locked()
            return key

    def next_due_locked(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def next_due(self) -> float | None:
        with self._cond:
            return self.next_due_locked()

    def done(self, key: Key, error: bool = False, requeue_after: float | None = None) -> None:
        with self._cond:
            self._processing.discard(key)
            dirty = self._dirty.pop(key, None)
            if error:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                delay = min(60.0, 0.005 * 2 ** (n - 1)) * (0.5 + self.rng.random())
            else:
                self._failures.pop(key, None)
                delay = requeue_after
        if dirty is not None:
            self.add(key, max(0.0, dirty - self.clock.now()))
        if delay is not None:
            self.add(key, delay)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class Manager:
    def __init__(self, store: Records, clock: Clock, workers: int = 6, resync: float = 30.0) -> None:
        self.store = store
        self.clock = clock
        self.queue = WorkQueue(clock)
        self.reconcilers: dict[str, Reconciler] = {}
        self.workers = workers
        self.resync = resync
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        store.listeners.append(self._on_write)

    def register(self, reconciler: Reconciler) -> None:
        self.reconcilers[reconciler.kind] = reconciler

    def _on_write(self, res: Resource, spec_side: bool) -> None:
        """A record's own reconciler runs again when its spec side changed (its own status writes would only
        echo); the reconcilers watching its kind hear of every change."""
        if spec_side and res.kind in self.reconcilers:
            self.queue.add((res.kind, res.id))
        for kind, rec in self.reconcilers.items():
            mapper = rec.watches.get(res.kind)
            if mapper is not None:
                for rid in mapper(res):
                    self.queue.add((kind, rid))

    def enqueue(self, kind: str, rid: str, after: float = 0.0) -> None:
        self.queue.add((kind, rid), after)

    def enqueue_all(self) -> None:
        for kind in self.reconcilers:
            for res in self.store.list(kind):
                self.queue.add((kind, res.id))

    def process(self, key: Key) -> None:
        kind, rid = key
        try:
            result = self.reconcilers[kind].reconcile(rid)
        except TerminalError as exc:
            log.warning("reconcile %s %s gave up: %s", kind, rid, exc)
            self.queue.done(key)
        except Exception as exc:  # any failure means: retry with backoff
            log.warning("reconcile %s %s failed: %s", kind, rid, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self.queue.done(key, error=True)
        else:
            self.queue.done(key, requeue_after=result.requeue_after)

    # threaded mode
    def start(self) -> None:
        self.enqueue_all()
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._resync_loop, name="resync", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.queue.wake()
        for t in self._threads:
            t.join(timeout=10)

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get(timeout=0.5)
            if key is not None:
                self.process(key)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync):
            try:
                self.enqueue_all()
            except Exception as exc:
                log.warning("resync failed: %s", exc)

    # stepped mode, for simulations on a virtual clock
    def run_ready(self) -> int:
        """Processes every key due now, without moving the clock; returns how many."""
        steps = 0
        while (key := self.queue.pop_ready()) is not None:
            self.process(key)
            steps += 1
        return steps
