"""Where stack hooks run: never on the reconcile workers or the API's threads, which every tenant shares, but on a
bounded pool of their own where one tenant holds at most a few threads and the rest of its runs wait their turn.

A hook may run for minutes (TIMEOUT): the reconciler submits it under a key and looks for the result on a later
pass (`poll`), so a tenant's slow setup hooks delay only that tenant's other hooks.
"""

from __future__ import annotations

__all__ = ["HookPool", "POOL", "PER_TENANT", "TOTAL"]

import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

PER_TENANT = 4  # hook runs of one tenant at once, like its execs (CLOUDLET_EXEC_PER_TENANT)
TOTAL = 16  # hook runs at once in all


class HookPool:
    """Runs jobs at most `total` at once and at most `per_tenant` of one tenant; the others wait in their tenant's
    queue, tenants taking turns, so a tenant with many waiting runs does not hold back one with a few."""

    def __init__(self, per_tenant: int = PER_TENANT, total: int = TOTAL) -> None:
        self.per_tenant = per_tenant
        self.total = total
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=total, thread_name_prefix="stack-hook")
        self._waiting: dict[str, deque[tuple[Future[Any], Callable[[], Any]]]] = {}
        self._turns: deque[str] = deque()  # tenants with waiting jobs, the next to start one first
        self.running: dict[str, int] = {}
        self._keyed: dict[Hashable, Future[Any]] = {}

    def submit(self, tenant: str, job: Callable[[], Any], done: Callable[[], None] | None = None) -> Future[Any]:
        """Queues `job` for `tenant`; `done` is called (on the pool's thread) once it finished."""
        fut: Future[Any] = Future()
        if done is not None:
            fut.add_done_callback(lambda _: done())
        with self._lock:
            if tenant not in self._waiting:
                self._waiting[tenant] = deque()
                self._turns.append(tenant)
            self._waiting[tenant].append((fut, job))
            self._start_locked()
        return fut

    def poll(
        self, key: Hashable, tenant: str, job: Callable[[], Any], done: Callable[[], None] | None = None
    ) -> tuple[Future[Any], bool]:
        """The job under `key`, submitted now if it is not known yet (a key runs once until `drop`ped), and
        whether it was submitted now."""
        with self._lock:
            fut = self._keyed.get(key)
        if fut is not None:
            return fut, False
        fut = self.submit(tenant, job, done)
        with self._lock:
            return self._keyed.setdefault(key, fut), True

    def drop(self, keys: list[Hashable]) -> None:
        """Forgets keyed jobs (a running one finishes; its result is not kept)."""
        with self._lock:
            for key in keys:
                self._keyed.pop(key, None)

    def keys(self, match: Callable[[Hashable], bool]) -> list[Hashable]:
        with self._lock:
            return [k for k in self._keyed if match(k)]

    def waiting(self, tenant: str) -> int:
        with self._lock:
            return len(self._waiting.get(tenant, ()))

    @staticmethod
    def settle(futures: list[Future[Any]], grace: float) -> None:
        """Waits up to `grace` seconds for the futures: a hook that takes a moment is taken in the same pass."""
        if futures and grace > 0:
            wait_futures(futures, timeout=grace)

    def _start_locked(self) -> None:
        """Starts waiting jobs while there is room, one per tenant in turn."""
        blocked = 0
        while self._turns and sum(self.running.values()) < self.total and blocked < len(self._turns):
            tenant = self._turns[0]
            self._turns.rotate(-1)
            if self.running.get(tenant, 0) >= self.per_tenant:
                blocked += 1
                continue
            blocked = 0
            fut, job = self._waiting[tenant].popleft()
            if not self._waiting[tenant]:
                del self._waiting[tenant]
                self._turns.remove(tenant)
            self.running[tenant] = self.running.get(tenant, 0) + 1
            self._threads.submit(self._run, tenant, fut, job)

    def _run(self, tenant: str, fut: Future[Any], job: Callable[[], Any]) -> None:
        if fut.set_running_or_notify_cancel():
            try:
                result = job()
            except BaseException as exc:  # handed to whoever waits on it, like ThreadPoolExecutor does
                self._finish(tenant)
                fut.set_exception(exc)
                return
            self._finish(tenant)
            fut.set_result(result)
        else:
            self._finish(tenant)

    def _finish(self, tenant: str) -> None:
        # the slot is free before the waiter hears of the result: a job it submits next may start at once
        with self._lock:
            self.running[tenant] -= 1
            if not self.running[tenant]:
                del self.running[tenant]
            self._start_locked()


POOL = HookPool()  # one per process: a cloudletd serves one cloud
