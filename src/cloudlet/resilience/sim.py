"""A whole cloud in one process on fake drivers: the real control plane plus one real Agent per simulated
host, talking through the in-process transport. Stepped on a virtual clock (`run_until_idle`) for simulations
at scale, or threaded on the real clock (`start`) behind the in-process API for fast tests."""

from __future__ import annotations

__all__ = ["SimCloud"]

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudlet.agent.agent import Agent
from cloudlet.agent.client import LocalHosts
from cloudlet.agent.main import host_capacity
from cloudlet.agent.transport import LocalControlPlane
from cloudlet.compute.drivers.fake import FakeDriver
from cloudlet.core.clock import Clock
from cloudlet.core.config import load_config
from cloudlet.core.context import HOST_ROLE, SYSTEM_TENANT, Caller
from cloudlet.daemon import bootstrap, build_control_plane
from cloudlet.network.drivers.fake import FakeNetworkDriver
from cloudlet.storage.pools.base import StoragePool
from cloudlet.storage.pools.memory import MemoryPool


class SimCloud:
    def __init__(
        self,
        home: Path,
        clock: Clock | None = None,
        db_url: str | None = None,
        failure_detection: bool = False,
        hosts: LocalHosts | None = None,
        pool: Callable[[], StoragePool] = MemoryPool,
        agent_view: str = "all",
        **driver_args: Any,
    ) -> None:
        self.config = dataclasses.replace(
            load_config(),
            home=home,
            compute_driver="fake",
            db_url=db_url or f"sqlite:///{home / 'state.db'}",
            agent_view=agent_view,
        )
        if not failure_detection:  # its hosts heartbeat only when added: the host monitor must not suspect them
            self.config = dataclasses.replace(self.config, suspect_s=float("inf"))
        self.hosts = hosts or LocalHosts()
        self.pool = pool
        self.cloud = build_control_plane(self.config, clock, self.hosts)
        self.clock = self.cloud.clock
        self.token = bootstrap(self.cloud)
        self.driver_args = driver_args
        self.agents: dict[str, Agent] = {}
        cpus, memory = host_capacity()
        self.add_host(self.config.host, self.config.zone, cpus, memory)

    def add_host(
        self,
        name: str,
        zone: str,
        cpus: int = 32,
        memory_mib: int = 64 * 1024,
        compute: FakeDriver | None = None,
        pool: StoragePool | None = None,
        cache: Path | None = None,
    ) -> Agent:
        """A host's agent; given the drivers and the cache file of one that ran before, its restart."""
        cp = LocalControlPlane(self.cloud.agent_api, Caller(SYSTEM_TENANT, HOST_ROLE, host=name))
        agent = Agent(
            self.config,
            cp,
            name,
            zone,
            self.clock,
            compute or FakeDriver(clock=self.clock, **self.driver_args),
            FakeNetworkDriver(),
            pool or self.pool(),
            capacity=(cpus, memory_mib),
        )
        if cache is not None:
            agent.cache.path = cache
            agent.cache.load()
        else:
            agent.heartbeat()
        self.hosts.agents[name] = agent
        self.agents[name] = agent
        self.cloud.placement.invalidate()
        return agent

    def run_until_idle(self, until: float | None = None) -> int:
        """Steps control plane and agents, jumping the virtual clock to the next due time, until nothing is left
        to do before `until`; returns the number of keys processed."""
        managers = [self.cloud.manager] + [a.manager for a in self.agents.values()]
        steps, quiet = 0, 0
        while True:
            n = self.cloud.manager.run_ready()
            for agent in self.agents.values():
                agent.sync()
                n += agent.manager.run_ready()
                agent.flush()
            steps += n
            quiet = quiet + 1 if n == 0 else 0
            if quiet < 2:  # one more round: what the agents sent may have given the control plane work
                continue
            due = [d for d in (m.queue.next_due() for m in managers) if d is not None]
            if not due or (until is not None and min(due) > until):
                return steps
            self.clock.advance_to(min(due))  # type: ignore[attr-defined]
            quiet = 0

    def start(self) -> None:
        self.cloud.manager.start()
        for agent in self.agents.values():
            agent.start()

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.cloud.manager.stop()
        self.cloud.store.close()
