"""Work queue and reconciler manager (DESIGN.md section 3, controller-runtime shape).

A key is (kind, id). At most one worker handles a key at a time; a key added while it is being handled is
handled again afterwards. Errors retry with exponential backoff (5 ms to 60 s, jittered); Result.requeue_after
polls again later. The same manager runs threaded with the real clock, or stepped by hand with a virtual clock.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cloudlet.core.clock import Clock
from cloudlet.core.errors import TerminalError
from cloudlet.core.records import Resource
from cloudlet.core.store import Store

__all__ = ["Result", "Reconciler", "WorkQueue", "Manager"]

log = logging.getLogger("cloudlet.reconcile")
Key = tuple[str, str]


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class Reconciler(Protocol):
    kind: str

    def reconcile(self, rid: str) -> Result: ...


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
    def __init__(self, store: Store, clock: Clock, workers: int = 6, resync: float = 30.0) -> None:
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

    def _on_write(self, res: Resource) -> None:
        if res.kind in self.reconcilers:
            self.queue.add((res.kind, res.id))

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
    def run_until_idle(self, until: float | None = None, on_step: Callable[[], None] | None = None) -> int:
        """Processes due keys, jumping the virtual clock to the next due time; returns keys processed."""
        steps = 0
        advance = getattr(self.clock, "advance_to")
        while True:
            key = self.queue.pop_ready()
            if key is None:
                nd = self.queue.next_due()
                if nd is None or (until is not None and nd > until):
                    return steps
                advance(nd)
                continue
            self.process(key)
            steps += 1
            if on_step:
                on_step()
