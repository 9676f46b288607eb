"""In-process stand-ins for what a simulated host cannot do for real, each as faithful as the simulation needs:

- `CutTransport`: an agent's transport to the control plane that a partition (or cloudletd being down) refuses.
- `SimPool`: the memory pool with replication: a send is the volume's name, a receive lands `lag` seconds later on
  a slow disk (the replica is not there until then: replication lags, and a recovery promotes an older one).
- `SimReplicaClient`: the source agent's replica client, into the target host's `SimPool`, refused across a
  partition or to a dead host (as the HTTP call would time out).
- `SimHosts`: the control plane's handle on the agents (`cloud.hosts`), refused for a dead or cut-off host; it adds
  the replica promote that the HTTP agent serves (agent/server.py), recording what was promoted for the RPO check.
"""

from __future__ import annotations

__all__ = ["CutTransport", "SimPool", "SimReplicaClient", "SimHosts", "Promotion"]

import builtins
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudlet.agent.cache import Change
from cloudlet.agent.client import LocalHosts
from cloudlet.agent.transport import ControlPlane, Scope
from cloudlet.core.clock import Clock
from cloudlet.core.errors import Unreachable
from cloudlet.core.records import Resource
from cloudlet.storage import replication
from cloudlet.storage.pools.base import PoolCapabilities
from cloudlet.storage.pools.memory import MemoryPool


class CutTransport(ControlPlane):
    def __init__(self, inner: ControlPlane) -> None:
        self.inner = inner
        self.cut = False

    def _check(self) -> None:
        if self.cut:
            raise Unreachable("control plane unreachable (partitioned)")

    def list(self, kinds: builtins.list[str], tenants: Scope = None) -> tuple[builtins.list[Resource], int]:
        self._check()
        return self.inner.list(kinds, tenants)

    def watch(
        self, rev: int, kinds: builtins.list[str], timeout: float, tenants: Scope = None
    ) -> tuple[builtins.list[Change], int]:
        self._check()
        return self.inner.watch(rev, kinds, timeout, tenants)

    def push(self, ops: builtins.list[dict[str, Any]]) -> int:
        self._check()
        return self.inner.push(ops)

    def heartbeat(self, host: str, beat: dict[str, Any]) -> dict[str, Any]:
        self._check()
        return self.inner.heartbeat(host, beat)


class _Stream:
    """A send: the snapshot's name stands for its bytes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        self.sent = 1
        yield self.name.encode()


class SimPool(MemoryPool):
    name = "sim"
    capabilities = PoolCapabilities(cow=True, quotas=False, replication=True)

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.lag = 0.0  # slow disk: seconds before a received replica is complete
        self._landing: dict[str, float] = {}  # received name -> when it is complete

    def list(self, prefix: str) -> set[str]:
        now = self.clock.now()
        return {n for n in super().list(prefix) if self._landing.get(n, now) <= now}

    def exists(self, name: str) -> bool:
        return super().exists(name) and self._landing.get(name, 0.0) <= self.clock.now()

    def delete(self, name: str) -> None:
        super().delete(name)
        self._landing.pop(name, None)

    def seal(self, partial: str, final: str) -> Path:
        self.volumes[final] = self.volumes.pop(partial, 0)
        return self.path(final)

    def send(self, name: str, parent: str | None = None) -> _Stream:  # type: ignore[override]
        return _Stream(name)

    def receive(self, stream: Iterable[bytes], into_prefix: str) -> str:
        sent = b"".join(stream).decode()
        name = into_prefix + sent.rpartition("/")[2].removesuffix(".partial")
        self.volumes[name] = 0
        if self.lag:
            self._landing[name] = self.clock.now() + self.lag
        return name

    def promote(self, replica: str, disk: str) -> Path:
        return self.snapshot(replica, disk, readonly=False)


@dataclass(frozen=True)
class Promotion:
    host: str
    volume: str
    seq: int
    taken_at: float  # on the virtual clock
    at: float
    source: str  # the host that shipped it
    interval: float


class SimReplicaClient:
    def __init__(
        self,
        source: str,
        target: str,
        pools: dict[str, SimPool],
        reach: Callable[[str, str], bool],
        taken: dict[tuple[str, int], float],
    ) -> None:
        self.source, self.target = source, target
        self.pools, self.reach = pools, reach
        self.taken = taken  # (volume, seq) -> when its snapshot was taken

    def _pool(self) -> SimPool:
        if not self.reach(self.source, self.target):
            raise Unreachable(f"replica host {self.target} does not answer")
        return self.pools[self.target]

    def seqs(self, volume: str) -> list[int]:
        return replication.seqs(self._pool(), volume)

    def put(self, volume: str, seq: int, stream: Iterable[bytes], parent: int | None) -> dict[str, Any]:
        pool = self._pool()
        self.taken[(volume, seq)] = pool.clock.now()  # the cycle snapshots and sends at one virtual instant
        return replication.receive(pool, volume, seq, stream)

    def drop(self, volume: str) -> None:
        replication.drop(self._pool(), volume)


class _AgentHandle:
    def __init__(self, hosts: SimHosts, agent: Any) -> None:
        self._hosts, self._agent = hosts, agent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._agent, name)

    def promote_replica(self, volume: str, into: str) -> dict[str, Any]:
        pool = self._agent.ctx.pool
        got = replication.promote(pool, volume, into)
        now = pool.clock.now()
        taken = self._hosts.taken.get((volume, int(got["seq"])), now)
        source, interval = self._hosts.sources.get(volume, ("", 0.0))
        self._hosts.promotions.append(
            Promotion(self._agent.host, volume, int(got["seq"]), taken, now, source, interval)
        )
        return got


class SimHosts(LocalHosts):
    def __init__(self, reachable: Callable[[str], bool]) -> None:
        super().__init__()
        self.reachable = reachable
        self.taken: dict[tuple[str, int], float] = {}  # every client's, shared: recovery looks up any volume
        self.sources: dict[str, tuple[str, float]] = {}  # volume -> (the host shipping it, its interval)
        self.promotions: list[Promotion] = []

    def agent(self, host: str) -> Any:
        if not self.reachable(host):
            raise Unreachable(f"host {host} does not answer")
        return _AgentHandle(self, super().agent(host))
