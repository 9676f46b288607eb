"""Rolling deploys running in the background: one at a time per stack, a few per tenant, on threads of their own
(a deploy waits for hooks and health checks for minutes; the API's shared thread pool must not). The API answers
202 at once; `GET /v1/stacks/NAME/deploy` (and `stack deploy`, which follows it) tells how it went."""

from __future__ import annotations

__all__ = ["Deploys", "DEPLOYS", "PER_TENANT", "TOTAL"]

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloudlet.core.errors import CloudletError, Conflict, TooManyRequests

PER_TENANT = 2  # deploys of one tenant at once
TOTAL = 8  # deploys at once in all


class Deploys:
    def __init__(self, per_tenant: int = PER_TENANT, total: int = TOTAL) -> None:
        self.per_tenant = per_tenant
        self.total = total
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=total, thread_name_prefix="stack-deploy")
        self._last: dict[str, dict[str, Any]] = {}  # by stack id: the running or last deploy

    def start(
        self, stack_id: str, tenant: str, view: dict[str, Any], run: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """Starts `run` (the deploy) in the background; Conflict if this stack has one running, TooManyRequests
        beyond the limits. `view` ({stack, layer}) is what `state` reports besides how it went."""
        with self._lock:
            mine = [d for d in self._last.values() if d["state"] == "running" and d["tenant"] == tenant]
            current = self._last.get(stack_id)
            if current is not None and current["state"] == "running":
                raise Conflict(
                    f"a deploy of stack {view['stack']} is already running (layer {current['layer']}); "
                    f"see it with 'cloudlet stack deploy {view['stack']} --status'"
                )
            if len(mine) >= self.per_tenant:
                raise TooManyRequests(
                    f"{len(mine)} deploys of tenant {tenant} are running, the most allowed at a time; "
                    "retry when one has finished"
                )
            if sum(d["state"] == "running" for d in self._last.values()) >= self.total:
                raise TooManyRequests(f"{self.total} deploys are running, the most this cloud allows; retry later")
            state = {**view, "tenant": tenant, "state": "running", "message": "", "runs": [], "started_at": time.time()}
            self._last[stack_id] = state
        self._threads.submit(self._run, stack_id, run)
        return self.state(stack_id) or {}

    def state(self, stack_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._last.get(stack_id)
            return None if found is None else {k: v for k, v in found.items() if k != "tenant"}

    def forget(self, stack_id: str) -> None:
        with self._lock:
            if self._last.get(stack_id, {}).get("state") != "running":
                self._last.pop(stack_id, None)

    def _run(self, stack_id: str, run: Callable[[], dict[str, Any]]) -> None:
        try:
            result = run()
            update = {"state": "succeeded", "runs": result["runs"]}
        except CloudletError as exc:
            update = {"state": "failed", "message": exc.message}
        except Exception as exc:  # a bug must not leave the stack "running" forever, refusing every later deploy
            update = {"state": "failed", "message": f"{type(exc).__name__}: {exc}"}
        with self._lock:
            self._last[stack_id].update(update, finished_at=time.time())


DEPLOYS = Deploys()  # one per process: a cloudletd serves one cloud
