"""Placement: filters (host state, zone, memory capacity) then weights (spread, free memory).

Every decision names each host's fate, so `cloudlet instance why` and "no valid host" errors can say which
filter rejected which host. Used capacity is cached and refreshed every few (clock) seconds, so placing
thousands of instances does not rescan every record each time.
"""

from __future__ import annotations

__all__ = ["Host", "Decision", "Placement"]

import threading
from dataclasses import dataclass, field

from cloudlet.compute.resource import HOST, INSTANCE, HostSpec
from cloudlet.core.clock import Clock
from cloudlet.core.context import SYSTEM_TENANT
from cloudlet.core.errors import InvalidSpec
from cloudlet.core.store import Store


@dataclass(frozen=True)
class Host:
    name: str
    zone: str
    cpus: int
    memory_mib: int
    up: bool


@dataclass
class Decision:
    host: str
    zone: str
    scores: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        return {"host": self.host, "zone": self.zone, "scores": self.scores, "rejected": self.rejected}


class Placement:
    def __init__(self, store: Store, clock: Clock, refresh: float = 5.0) -> None:
        self.store = store
        self.clock = clock
        self.refresh = refresh
        self._lock = threading.Lock()
        self._loaded_at: float | None = None
        self._hosts: list[Host] = []
        self._used: dict[str, tuple[int, int]] = {}

    def _load(self) -> None:
        now = self.clock.now()
        if self._loaded_at is not None and now - self._loaded_at < self.refresh:
            return
        self._hosts = [
            Host(r.name, r.zone or "zone-a", HostSpec.of(r).cpus, HostSpec.of(r).memory_mib, r.phase == "up")
            for r in self.store.list(HOST, tenant=SYSTEM_TENANT)
        ]
        self._used = self.store.sum_by_host(INSTANCE, "memory_mib")
        self._loaded_at = now

    def largest_memory(self) -> int:
        with self._lock:
            self._load()
            return max((h.memory_mib for h in self._hosts), default=0)

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = None

    def place(self, memory_mib: int, zone: str | None = None) -> Decision:
        with self._lock:
            self._load()
            rejected: dict[str, str] = {}
            scores: dict[str, float] = {}
            for h in self._hosts:
                count, used = self._used.get(h.name, (0, 0))
                if not h.up:
                    rejected[h.name] = "host-state: host is not up"
                elif zone and h.zone != zone:
                    rejected[h.name] = f"zone: host is in {h.zone}, not {zone}"
                elif used + memory_mib > h.memory_mib:
                    rejected[h.name] = f"capacity: needs {memory_mib} MiB, {h.memory_mib - used} MiB free"
                else:
                    free = (h.memory_mib - used - memory_mib) / h.memory_mib
                    scores[h.name] = round(-float(count) + free, 6)  # spread first, then free memory
            if not scores:
                detail = "; ".join(f"{k}: {v}" for k, v in sorted(rejected.items())) or "no hosts registered"
                raise InvalidSpec(f"no valid host for {memory_mib} MiB: {detail}")
            best = max(sorted(scores), key=lambda name: scores[name])
            count, used = self._used.get(best, (0, 0))
            self._used[best] = (count + 1, used + memory_mib)
            host = next(h for h in self._hosts if h.name == best)
            top = dict(sorted(scores.items(), key=lambda kv: -kv[1])[:5])
            return Decision(best, host.zone, top, rejected)
