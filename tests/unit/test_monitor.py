"""The host monitor's phase machine (resilience/monitor.py) and the agent's lease (resilience/lease.py), on a
virtual clock: heartbeats go through the real agent service, fencing through the fake driver."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cloudlet.agent.client import LocalHosts
from cloudlet.compute.hosts import Heartbeat, lease_peers
from cloudlet.compute.resource import HOST
from cloudlet.core.clock import VirtualClock
from cloudlet.core.config import load_config
from cloudlet.core.context import HOST_ROLE, SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.records import Resource
from cloudlet.daemon import build_control_plane
from cloudlet.resilience.fence import FakeFence
from cloudlet.resilience.lease import Lease, Peer, PeerAnswer, decide
from cloudlet.resilience.monitor import MONITOR, HostMonitor, may_start_elsewhere

TICK = 0.25


class Cluster:
    """A control plane on a virtual clock and hosts that heartbeat every second while they are `alive`."""

    def __init__(self, home: Path, clock: VirtualClock | None = None) -> None:
        self.home = home
        self.clock = clock or VirtualClock(1000.0)
        self.incarnations: dict[str, str] = {}
        self.alive: set[str] = set()
        self.replies: dict[str, dict[str, Any]] = {}
        self.start()

    def start(self) -> None:
        """(Re)starts cloudletd on the same store: a new monitor, a new fence driver."""
        config = dataclasses.replace(
            load_config(), home=self.home, compute_driver="fake", db_url=f"sqlite:///{self.home / 'state.db'}"
        )
        self.cloud: Cloud = build_control_plane(config, self.clock, LocalHosts())
        self.monitor: HostMonitor = self.cloud.manager.reconcilers[MONITOR]  # type: ignore[assignment]
        self.fence = FakeFence()
        self.monitor.fence = self.fence

    def beat(self, name: str, stopping: bool = False) -> dict[str, Any]:
        incarnation = self.incarnations.setdefault(name, "1")
        beat = Heartbeat(
            zone="zone-a", cpus=2, memory_mib=1024, version="t", incarnation=incarnation, stopping=stopping
        )
        reply = self.cloud.agent_api.heartbeat(Caller(SYSTEM_TENANT, HOST_ROLE, host=name), name, beat)
        self.replies[name] = reply
        return reply

    def join(self, *names: str) -> None:
        for name in names:
            self.alive.add(name)
            self.beat(name)
        self.run(0)

    def run(self, seconds: float) -> None:
        end = self.clock.now() + seconds
        while True:
            self.cloud.manager.run_ready()
            if self.clock.now() >= end - 1e-9:
                return
            self.clock.advance(TICK)
            if abs(self.clock.now() % 1.0) < 1e-9:
                for name in sorted(self.alive):
                    self.beat(name)

    def phase(self, name: str) -> str:
        return self.cloud.store.get(HOST, SYSTEM_TENANT, name).phase

    def reasons(self, name: str) -> Counter[str]:
        return Counter(e.reason for e in self.cloud.store.list_events(SYSTEM_TENANT, name=name))

    def may_start_elsewhere(self, name: str) -> bool:
        return may_start_elsewhere(self.cloud.store, name, self.clock.now())


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


def test_a_silent_host_is_suspected_after_3_s_then_fenced(cluster: Cluster) -> None:
    cluster.join("a", "b")
    cluster.run(5)
    assert cluster.phase("b") == "up"
    cluster.alive.discard("b")
    cluster.run(2.5)  # its last beat was at most a second before it went quiet
    assert cluster.phase("b") == "up" and not cluster.may_start_elsewhere("b")
    cluster.run(1.5)
    assert cluster.phase("b") == "fenced" and cluster.fence.fenced == ["b"]
    assert cluster.reasons("b") == {"Created": 1, "HostSuspect": 1, "HostFenced": 1}
    assert cluster.may_start_elsewhere("b") and not cluster.may_start_elsewhere("a")
    assert cluster.phase("a") == "up"
    cluster.run(20)
    assert cluster.fence.fenced == ["b"]  # fenced once: the phase holds until a new incarnation


def test_a_fenced_host_comes_back_only_as_a_new_incarnation(cluster: Cluster) -> None:
    cluster.join("a", "b")
    cluster.alive.discard("b")
    cluster.run(5)
    assert cluster.phase("b") == "fenced"
    reply = cluster.beat("b")  # the same agent process (a fence that killed nothing real)
    assert reply["lease"] is None and reply["revoked"] == "fenced"
    assert cluster.phase("b") == "fenced" and cluster.may_start_elsewhere("b")
    cluster.incarnations["b"] = "2"
    reply = cluster.beat("b")
    assert reply["lease"]["valid_for"] == 10.0
    assert [p["host"] for p in reply["lease"]["peers"]] == ["a"]
    assert cluster.phase("b") == "up" and cluster.reasons("b")["HostRecovered"] == 1
    assert not cluster.may_start_elsewhere("b")


def test_a_host_that_beats_again_while_suspected_is_up_again(cluster: Cluster) -> None:
    cluster.fence.refuse.add("b")
    cluster.join("a", "b")
    cluster.alive.discard("b")
    cluster.run(5)
    assert cluster.phase("b") == "suspect"
    cluster.run(2)
    assert cluster.reasons("b")["FenceFailed"] == 1  # told once per suspicion, not every look
    cluster.alive.add("b")
    cluster.run(1)
    assert cluster.phase("b") == "up" and cluster.reasons("b")["HostRecovered"] == 1


def test_unfenceable_host_is_lease_expired_only_after_lease_and_margin(cluster: Cluster) -> None:
    cluster.fence.refuse.add("b")
    cluster.join("a", "b")
    cluster.run(10)  # a has been up long enough for b's watchdog to have heard it renew
    cluster.alive.discard("b")
    last = cluster.cloud.store.get(HOST, SYSTEM_TENANT, "b").status["renewed_at"]
    while cluster.phase("b") != "lease-expired":
        assert cluster.phase("b") in ("up", "suspect")
        assert not cluster.may_start_elsewhere("b")
        cluster.run(TICK)
    expired_after = cluster.clock.now() - last
    assert 12.0 <= expired_after <= 12.0 + 2 * TICK  # T + margin since the last renewal, not before
    assert cluster.may_start_elsewhere("b") and cluster.reasons("b")["LeaseExpired"] == 1
    assert cluster.replies["b"]["lease"] is not None
    reply = cluster.beat("b")  # an agent that has self-fenced must rejoin afresh
    assert reply["lease"] is None and reply["revoked"] == "lease-expired"


def test_a_single_host_cloud_never_treats_its_host_as_lease_expired(cluster: Cluster) -> None:
    cluster.fence.refuse.add("solo")
    cluster.join("solo")
    cluster.alive.clear()
    cluster.run(60)
    assert cluster.phase("solo") == "suspect" and not cluster.may_start_elsewhere("solo")
    cluster.alive.add("solo")
    cluster.run(1)
    assert cluster.phase("solo") == "up"


def test_a_silent_peer_holds_the_expiry_back(cluster: Cluster) -> None:
    """b and c both silent: either might be telling the other that the control plane is down for both."""
    cluster.fence.refuse.update({"b", "c"})
    cluster.join("a", "b", "c")
    cluster.run(10)
    cluster.alive -= {"b", "c"}
    cluster.run(30)
    assert cluster.phase("b") == cluster.phase("c") == "suspect"
    cluster.alive.add("c")  # c is back and renews: b's watchdog hears that from c, and self-fences
    cluster.run(6)
    assert cluster.phase("b") == "suspect"  # c has not been up for the peer window (6.5 s) yet
    cluster.run(2)
    assert cluster.phase("b") == "lease-expired" and cluster.phase("c") == "up"


def test_a_host_shutting_down_is_down_and_never_fenced(cluster: Cluster) -> None:
    cluster.join("a", "b")
    cluster.alive.discard("b")
    assert cluster.beat("b", stopping=True)["lease"] is None  # `cloudlet down`: its agent's last beat
    cluster.run(30)
    assert cluster.phase("b") == "down" and cluster.fence.fenced == [] and not cluster.may_start_elsewhere("b")
    cluster.alive.add("b")  # `cloudlet up`
    cluster.run(1)
    assert cluster.phase("b") == "up" and "HostSuspect" not in cluster.reasons("b")


def test_grace_after_a_restart_of_the_control_plane(cluster: Cluster) -> None:
    cluster.fence.refuse.add("b")
    cluster.join("a", "b", "c")
    cluster.run(10)
    cluster.alive.clear()  # cloudletd is down: nobody gets through for a minute
    cluster.clock.advance(60)
    cluster.start()
    cluster.fence.refuse.add("b")
    started = cluster.clock.now()
    cluster.alive.add("a")  # a renews at once (silence counts from this first renewal); b and c never come back
    cluster.beat("a")
    cluster.run(2.75)
    assert [cluster.phase(h) for h in "abc"] == ["up", "up", "up"]  # silence counts from the restart
    cluster.run(0.5)
    assert cluster.phase("b") == "suspect" and cluster.phase("c") == "fenced" and cluster.fence.fenced == ["c"]
    while cluster.phase("b") == "suspect":
        cluster.run(TICK)
    assert cluster.clock.now() - started >= 12.0  # T + margin from the restart, however old its last renewal
    assert cluster.phase("b") == "lease-expired"


# the agent's side


class Clocked:
    def __init__(self) -> None:
        self.clock = VirtualClock(500.0)
        self.fenced: list[str] = []
        self.held = 0
        self.answers: list[PeerAnswer | None] = []
        self.lease = Lease("h", 10.0, self.clock, self.fenced.append, self.on_held, ask=lambda peers: self.answers)

    def on_held(self) -> None:
        self.held += 1

    def renew(self, peers: list[str]) -> None:
        reply = {"lease": {"valid_for": 10.0, "peers": [{"host": p, "url": ""} for p in peers]}}
        self.lease.renewed(self.clock.now(), reply)


def test_peer_rule() -> None:
    up = PeerAnswer("p", lease_valid=True, cp_reachable=True, cp_reachable_for=30.0)
    back = PeerAnswer("p", lease_valid=True, cp_reachable=True, cp_reachable_for=0.5)
    cut = PeerAnswer("q", lease_valid=True, cp_reachable=False)
    expired_cut = PeerAnswer("q", lease_valid=False, cp_reachable=False)
    assert decide([]) == decide([None, None]) == decide([up]) == decide([up, None]) == "fence"
    assert decide([cut]) == decide([expired_cut, None]) == decide([up, cut]) == decide([back, cut]) == "serve"
    assert decide([back]) == decide([up, back, None]) == "wait"  # cloudletd just came back: our beat is next


@pytest.mark.parametrize(
    ("answers", "fences"),
    [
        ([None], True),  # nobody answers: this host is the one cut off
        ([PeerAnswer("p", True, True, 30.0)], True),  # the peer has long reached the control plane: it is only us
        ([PeerAnswer("p", True, True, 0.5)], False),  # the peer just got through again: so will we
        ([PeerAnswer("p", False, False)], False),  # the control plane is down for the peer too
    ],
)
def test_the_watchdog_fences_only_the_isolated_host(answers: list[PeerAnswer | None], fences: bool) -> None:
    agent = Clocked()
    agent.answers = answers
    agent.renew(["p"])
    agent.clock.advance(9.9)
    agent.lease.check()
    assert agent.fenced == [] and agent.lease.valid() and agent.lease.holds()
    agent.clock.advance(0.2)
    agent.lease.unreachable()
    agent.lease.check()
    assert bool(agent.fenced) == fences and agent.lease.holds() != fences
    assert agent.lease.answer() == {"host": "h", "lease_valid": False, "cp_reachable": False, "cp_reachable_for": 0}


def test_a_single_host_never_self_fences() -> None:
    agent = Clocked()
    agent.renew([])
    agent.clock.advance(600)
    agent.lease.check()
    assert agent.fenced == [] and agent.lease.holds()


def test_after_self_fencing_ha_waits_for_a_renewal_and_fresh_records() -> None:
    agent = Clocked()
    agent.answers = [None]
    agent.renew(["p"])
    agent.clock.advance(11)
    agent.lease.check()
    assert agent.fenced and not agent.lease.holds()
    agent.lease.caught_up(agent.clock.now())  # records caught up, but no lease yet
    assert not agent.lease.holds()
    stale = agent.clock.now()
    agent.clock.advance(1)
    agent.renew(["p"])
    agent.lease.caught_up(stale)  # a catch-up begun before the renewal may hold records of before
    assert not agent.lease.holds() and agent.held == 0
    agent.lease.caught_up(agent.clock.now())
    assert agent.lease.holds() and agent.held == 1


def test_a_revoked_lease_fences_at_once_and_rejoins_as_a_new_incarnation() -> None:
    agent = Clocked()
    agent.renew(["p"])
    before = agent.lease.incarnation
    agent.lease.renewed(agent.clock.now(), {"lease": None, "revoked": "lease-expired"})
    assert agent.fenced == ["the control plane marked host h lease-expired"]
    assert agent.lease.incarnation != before and not agent.lease.holds()


def test_peers_are_asked_with_the_urls_the_reply_gave() -> None:
    agent = Clocked()
    agent.lease.renewed(0.0, {"lease": {"valid_for": 3, "peers": [{"host": "p", "url": "http://x/lease"}]}})
    assert agent.lease.peers == [Peer("p", "http://x/lease")]
    assert agent.lease.expires == 3.0  # the shorter of the reply's and its own T


def test_a_restarted_control_plane_that_nobody_reaches_waits_a_lease_before_it_suspects(cluster: Cluster) -> None:
    """No renewal after a restart: its API may not serve yet, or every agent is gone; after T it counts anyway."""
    cluster.join("solo")
    cluster.alive.clear()
    cluster.clock.advance(60)
    cluster.start()
    cluster.run(9.75)
    assert cluster.phase("solo") == "up"
    cluster.run(3)  # it looks again every SUSPECT_S meanwhile
    assert cluster.phase("solo") == "fenced"


def test_every_host_silent_at_once_is_taken_as_the_control_planes_own_trouble(cluster: Cluster) -> None:
    cluster.join("a", "b", "c")
    cluster.run(5)
    cluster.alive.clear()  # cloudletd stalled, or its own link cut: nobody's beat gets in
    cluster.run(30)
    assert [cluster.phase(h) for h in "abc"] == ["up", "up", "up"] and cluster.fence.fenced == []
    cluster.alive.update("ac")  # through again: b alone stays silent; its silence counts from now, as after a restart
    cluster.run(2.5)
    assert cluster.phase("b") == "up"
    cluster.run(1.5)
    assert cluster.phase("b") == "fenced" and cluster.fence.fenced == ["b"]


def test_a_lease_names_the_next_hosts_by_name_wrapping_around() -> None:
    """LEASE_PEERS hosts after the beating one in name order (a reply and record that stay small at any size);
    every other host in a small cloud; none being removed."""
    hosts = [Resource(kind=HOST, tenant=SYSTEM_TENANT, name=f"h{i:02d}", spec={}) for i in range(20)]
    hosts[5] = dataclasses.replace(hosts[5], deleted_at=1.0)
    names = [h.name for h in lease_peers(hosts, "h01")]
    assert names == ["h02", "h03", "h04", "h06", "h07", "h08", "h09", "h10"]
    assert [h.name for h in lease_peers(hosts, "h17")] == ["h18", "h19", "h00", "h01", "h02", "h03", "h04", "h06"]
    assert sorted(h.name for h in lease_peers(hosts[:4], "h02")) == ["h00", "h01", "h03"]
