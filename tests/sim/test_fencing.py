"""Fencing and self-fencing with real agents on fake drivers and a virtual clock (issue 10).

Each host's transport to the control plane can be cut, and so can its agent's view of its peers (the underlay).
After every step the invariants are checked: no instance runs on two hosts at once, and once the control plane
may start elsewhere what a host ran (`may_start_elsewhere`), none of that host's HA instances still runs there
(recovery, resilience/recovery.py, starts them elsewhere from then on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudlet.agent.agent import Agent
from cloudlet.compute import instances
from cloudlet.compute.drivers.base import InstanceState
from cloudlet.compute.drivers.fake import FakeDriver
from cloudlet.compute.resource import HOST, INSTANCE, InstanceSpec
from cloudlet.core.clock import VirtualClock
from cloudlet.core.context import SYSTEM_TENANT, Caller
from cloudlet.core.errors import Unreachable
from cloudlet.core.records import Resource
from cloudlet.resilience.fence import FakeFence
from cloudlet.resilience.lease import Peer, PeerAnswer
from cloudlet.resilience.monitor import MONITOR, HostMonitor, may_start_elsewhere
from cloudlet.resilience.sim import SimCloud
from cloudlet.resilience.simulation.standins import CutTransport
from tests.helpers import fake_cloud

TICK = 0.25
ADMIN = Caller("admin", "admin")


class Cluster:
    def __init__(self, home: Path, hosts: tuple[str, ...]) -> None:
        self.clock = VirtualClock(100.0)
        self.sim: SimCloud = fake_cloud(home, clock=self.clock, failure_detection=True)
        for name in hosts:
            self.sim.add_host(name, "zone-b")
        self.fence = FakeFence(kill=self.kill)
        self.monitor.fence = self.fence
        self.cp_down = False  # cloudletd stopped: its manager does not run
        self.isolated: set[str] = set()  # hosts cut from their peers (the underlay) as well
        self.dead: set[str] = set()
        self.exposed: list[str] = []  # invariant breaches: an HA instance running where a copy may start
        for name, agent in self.agents.items():
            agent.cp = CutTransport(agent.cp)
            agent.lease.ask = self._asker(name)
        self.run(3)

    @property
    def agents(self) -> dict[str, Agent]:
        return self.sim.agents

    @property
    def monitor(self) -> HostMonitor:
        return self.sim.cloud.manager.reconcilers[MONITOR]  # type: ignore[return-value]

    def _asker(self, me: str) -> Any:
        def ask(peers: list[Peer]) -> list[PeerAnswer | None]:
            out: list[PeerAnswer | None] = []
            for p in peers:
                reachable = p.host in self.agents and not {me, p.host} & (self.isolated | self.dead)
                out.append(PeerAnswer(**self.agents[p.host].lease.answer()) if reachable else None)
            return out

        return ask

    def kill(self, host: str) -> None:
        """The fake fence: every process of the host dies, its agent with them."""
        self.dead.add(host)
        driver = self.driver(host)
        for iid in driver.list_instances():
            driver.stop_instance(iid)

    def driver(self, host: str) -> FakeDriver:
        return self.agents[host].ctx.compute  # type: ignore[return-value]

    def cut(self, host: str, on: bool = True) -> None:
        self.agents[host].cp.cut = on  # type: ignore[attr-defined]

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK)):
            self.clock.advance(TICK)
            live = {n: a for n, a in self.agents.items() if n not in self.dead}
            if abs(self.clock.now() % 1.0) < 1e-9:
                for agent in live.values():
                    try:
                        agent.heartbeat()
                    except Unreachable:
                        pass
            for agent in live.values():
                agent.lease.check()
            for _ in range(3):
                if not self.cp_down:
                    self.sim.cloud.manager.run_ready()
                for agent in live.values():
                    try:
                        agent.sync()
                    except Unreachable:
                        pass
                    agent.manager.run_ready()
            self.check_invariant()

    def check_invariant(self) -> None:
        now = self.clock.now()
        where: dict[str, list[str]] = {}
        for name in self.agents:
            for iid in self.driver(name).list_instances():
                if self.driver(name).get_instance(iid).state in (InstanceState.RUNNING, InstanceState.STARTING):
                    where.setdefault(iid, []).append(name)
        self.exposed += [f"{iid} runs on {hosts} at {now}" for iid, hosts in where.items() if len(hosts) > 1]
        for name in self.agents:
            if not may_start_elsewhere(self.sim.cloud.store, name, now):
                continue
            for res in self.ha_on(name):
                if self.driver(name).get_instance(res.id).state in (InstanceState.RUNNING, InstanceState.STARTING):
                    self.exposed.append(f"{res.name} runs on {name} at {now}")

    def ha_on(self, host: str) -> list[Resource]:
        return [r for r in self.sim.cloud.store.list(INSTANCE, host=host) if InstanceSpec.of(r).ha]

    def running_on(self, host: str) -> set[str]:
        driver = self.driver(host)
        names = {r.id: r.name for r in self.sim.cloud.store.list(INSTANCE)}
        return {names[i] for i in driver.list_instances() if driver.get_instance(i).state == InstanceState.RUNNING}

    def phase(self, host: str) -> str:
        return self.sim.cloud.store.get(HOST, SYSTEM_TENANT, host).phase

    def launch(self, per_host: int) -> dict[str, tuple[set[str], set[str]]]:
        """per_host instances on every host, the first half HA-managed: {host: (ha names, other names)}."""
        count = per_host * len(self.agents)
        for i in range(count):
            instances.launch(self.sim.cloud, ADMIN, instances.InstanceCreate(name=f"vm-{i}", image="busybox"))
        self.run(2)
        out: dict[str, tuple[set[str], set[str]]] = {}
        store = self.sim.cloud.store
        for host in self.agents:
            placed = store.list(INSTANCE, host=host)
            ha = placed[: (len(placed) + 1) // 2]
            for res in ha:
                store.update_spec(res.id, InstanceSpec.of(res).model_copy(update={"ha": True}).dump())
            out[host] = ({r.name for r in ha}, {r.name for r in placed[len(ha) :]})
        self.run(2)
        for host, (ha, other) in out.items():
            assert ha and self.running_on(host) == ha | other, (host, self.running_on(host))
        return out


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path, ("h1", "h2"))


def test_an_isolated_host_stops_exactly_its_ha_instances_before_the_control_plane_may_start_copies(
    cluster: Cluster,
) -> None:
    placed = cluster.launch(2)
    cluster.fence.refuse.add("h1")  # no fence for h1: only its lease can free its instances
    cluster.cut("h1")
    cluster.isolated.add("h1")
    ha, other = placed["h1"]
    fenced_at = None
    while cluster.phase("h1") != "lease-expired":
        cluster.run(TICK)
        if fenced_at is None and cluster.agents["h1"].lease.fenced:
            fenced_at = cluster.clock.now()
        assert cluster.clock.now() < 200, cluster.phase("h1")
    assert fenced_at is not None and cluster.clock.now() - fenced_at >= 1.5  # self-fenced well before
    assert cluster.running_on("h1") == other  # HA instances stopped, the others serve on
    for host in ("local", "h2"):  # theirs run on; recovery (where it exists) may have started h1's HA ones there
        assert placed[host][0] | placed[host][1] <= cluster.running_on(host) <= placed[host][0] | placed[host][1] | ha
        assert cluster.phase(host) == "up"
    assert cluster.exposed == []
    pending = [op for op in cluster.agents["h1"].cache.pending_ops() if op.get("reason") == "SelfFenced"]
    assert len(pending) == len(ha)  # recorded in the outbox, sent when it can be

    cluster.cut("h1", False)  # the partition heals: h1 rejoins as a new incarnation, its events arrive
    cluster.isolated.clear()
    cluster.run(3)
    assert cluster.phase("h1") == "up"
    # its SelfFenced events reach the store for the records still placed on h1 (those recovery moved drop them)
    events = {e.name for e in cluster.sim.cloud.store.list_events("admin", limit=1000) if e.reason == "SelfFenced"}
    assert events == {r.name for r in cluster.sim.cloud.store.list(INSTANCE, host="h1")} & ha
    cluster.run(5)
    states = {r.name: r.status["state"] for r in cluster.sim.cloud.store.list(INSTANCE)}
    assert set(states.values()) == {"running"}  # on h1 again, or where recovery put them
    assert sorted(n for h in cluster.agents for n in cluster.running_on(h)) == sorted(states)  # each once
    assert cluster.exposed == []


def test_cloudletd_down_for_everybody_stops_nothing_and_its_restart_fences_nobody(cluster: Cluster) -> None:
    placed = cluster.launch(1)
    everything = {h: ha | other for h, (ha, other) in placed.items()}
    cluster.cp_down = True
    for host in cluster.agents:
        cluster.cut(host)
    cluster.run(40)  # four leases long
    assert not any(a.lease.fenced for a in cluster.agents.values())
    assert {h: cluster.running_on(h) for h in cluster.agents} == everything
    cluster.sim.cloud.manager.reconcilers[MONITOR] = restarted = HostMonitor(cluster.sim.cloud, cluster.fence)
    cluster.cp_down = False
    for host in cluster.agents:
        cluster.cut(host, False)
    cluster.run(20)
    assert restarted.started > 100 and cluster.fence.fenced == []
    assert {h: cluster.phase(h) for h in cluster.agents} == dict.fromkeys(cluster.agents, "up")
    assert {h: cluster.running_on(h) for h in cluster.agents} == everything
    assert cluster.exposed == []
    reasons = {e.reason for e in cluster.sim.cloud.store.list_events(SYSTEM_TENANT, limit=1000)}
    assert not reasons & {"HostSuspect", "HostFenced", "LeaseExpired"}


def test_a_silent_host_is_fenced_in_3_s_and_its_restarted_agent_rejoins(cluster: Cluster) -> None:
    cluster.launch(1)
    cluster.cut("h2")
    cluster.isolated.add("h2")
    cluster.run(2.5)
    assert cluster.phase("h2") == "up"
    cluster.run(2)
    assert cluster.phase("h2") == "fenced" and cluster.fence.fenced == ["h2"]
    assert cluster.running_on("h2") == set() and cluster.exposed == []
    assert may_start_elsewhere(cluster.sim.cloud.store, "h2", cluster.clock.now())
    agent = cluster.agents["h2"]
    cluster.cut("h2", False)
    cluster.dead.discard("h2")  # the same agent beats again: refused until it is a new incarnation
    cluster.run(3)
    assert cluster.phase("h2") == "up" and agent.lease.cp_reachable


def test_a_single_host_cloud_keeps_its_ha_instances_running_when_cut_off(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ())
    placed = cluster.launch(2)
    cluster.fence.refuse.add("local")
    cluster.cut("local")
    cluster.run(60)
    assert cluster.running_on("local") == placed["local"][0] | placed["local"][1]
    assert cluster.phase("local") == "suspect" and not cluster.agents["local"].lease.fenced


def test_a_host_isolated_while_cloudletd_was_down_has_self_fenced_before_the_restart_expires_it(
    cluster: Cluster,
) -> None:
    placed = cluster.launch(1)
    cluster.fence.refuse.add("h1")
    cluster.cp_down = True
    for host in cluster.agents:
        cluster.cut(host)
    cluster.isolated.add("h1")  # and h1 loses its peers too: nobody tells it that cloudletd is down for all
    cluster.run(15)
    assert cluster.agents["h1"].lease.fenced and not cluster.agents["h2"].lease.fenced
    assert cluster.running_on("h1") == placed["h1"][1]  # its HA instance is down, the other serves on
    cluster.sim.cloud.manager.reconcilers[MONITOR] = restarted = HostMonitor(cluster.sim.cloud, cluster.fence)
    cluster.cp_down = False
    for host in ("local", "h2"):
        cluster.cut(host, False)
    start = cluster.clock.now()
    while cluster.phase("h1") != "lease-expired":
        assert cluster.clock.now() - start < 30, cluster.phase("h1")
        cluster.run(TICK)
    assert cluster.clock.now() - (restarted.origin(cluster.clock.now()) or 0) >= 12.0  # T + margin from restart
    assert cluster.exposed == [] and {cluster.phase(h) for h in ("local", "h2")} == {"up"}
