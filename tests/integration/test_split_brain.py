"""Two hosts and no split brain (issue 10), for real: host local and an added host h2 on the underlay, no fence
driver (CLOUDLET_FENCE=none: only leases free a host) and a 4 s lease.

With cloudletd down for both, h2's watchdog asks local over the underlay, hears that it cannot reach the control
plane either, and keeps its HA instance serving; the restarted cloudletd fences nobody. With h2 partitioned (its
underlay port drops every frame), nobody answers it: it kills its HA instance, and only after that does the control
plane call its lease expired; its other instance serves on, and at no moment do two copies of the HA instance run
(recovery, where it exists, may start it elsewhere once the lease expired). Healed, h2 rejoins afresh. Last, with
the netns fence: partitioned, h2 is fenced within seconds, every process of its namespaces gone."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from cloudlet.resilience.fence import NetnsFence
from tests.conftest import CloudCLI, running_cloud
from tests.helpers import agent_sees_ha, alive, host_states, mark_ha, runc_running, wait_for

pytestmark = pytest.mark.root
LEASE_S = 4


@pytest.fixture(scope="module")
def pair() -> Iterator[CloudCLI]:
    with running_cloud({"CLOUDLET_LEASE_S": str(LEASE_S), "CLOUDLET_FENCE": "none"}, hosts=[("h2", "zone-b")]) as cli:
        for name in ("ha1", "plain"):
            cli.run("launch", "busybox", name, "--zone", "zone-b", "--memory", "32")
        for name in ("ha1", "plain"):
            cli.wait_state(name, "running", timeout=60)
        mark_ha(cli, "ha1")
        wait_for(lambda: agent_sees_ha(cli, "h2", "ha1"), 15, "h2's agent to see ha1 as HA-managed")
        yield cli


def _pids(cli: CloudCLI, host: str = "h2") -> dict[str, int]:
    """Name -> init pid of what runc runs on host (cloudletd may be down or cut off)."""
    names = json.loads((cli.home / "ids.json").read_text())
    running = runc_running(cli, host).items()
    return {names[cid.removeprefix("cl-")]: pid for cid, pid in running if cid.removeprefix("cl-") in names}


def _copies(cli: CloudCLI, name: str) -> int:
    """Running copies of name on either host: never more than one."""
    return sum(name in _pids(cli, host) for host in ("local", "h2"))


def _events(cli: CloudCLI, host: str) -> Counter[str]:
    return Counter(e["reason"] for e in cli.json("host", "show", host)["events"])


@pytest.fixture(scope="module", autouse=True)
def ids(pair: CloudCLI) -> None:
    (pair.home / "ids.json").write_text(json.dumps({i["id"]: i["name"] for i in pair.json("list")}))


@pytest.mark.slow  # 17 s; test_fence and test_lb keep a data plane serving without cloudletd in make test
def test_cloudletd_down_for_both_hosts_stops_nothing(pair: CloudCLI) -> None:
    before = _pids(pair)
    assert before.keys() == {"ha1", "plain"}
    pair.kill9("cloudletd")
    time.sleep(LEASE_S + 2 + 3)  # lease, margin, and a few of the watchdog's checks
    assert _pids(pair) == before
    log = (pair.home / "agents/h2/agent.log").read_text()
    assert "local cannot reach the control plane either: serving on" in log  # heard over the underlay
    pair.run("up")
    wait_for(lambda: host_states(pair) == {"local": "up", "h2": "up"}, 20, "both hosts up")
    time.sleep(4)  # past the restarted monitor's grace
    assert host_states(pair) == {"local": "up", "h2": "up"} and _pids(pair) == before
    for host in ("local", "h2"):
        assert not {"HostSuspect", "HostFenced", "LeaseExpired"} & set(_events(pair, host)), host


def test_a_partitioned_host_stops_its_ha_instance_before_its_lease_expires_at_the_control_plane(
    pair: CloudCLI,
) -> None:
    before = _pids(pair)
    assert before.keys() == {"ha1", "plain"}
    start = time.monotonic()
    pair.run("host", "partition", "h2")
    try:
        ha_gone = expired = None
        seen: set[str] = set()
        while expired is None:
            assert time.monotonic() - start < 40, f"h2 never lease-expired: {seen}"
            pids = _pids(pair)
            if ha_gone is None and "ha1" not in pids:
                ha_gone = time.monotonic() - start
            state = host_states(pair)["h2"]
            seen.add(state)
            if state == "lease-expired":
                expired = time.monotonic() - start
                assert "ha1" not in pids, "the control plane gave up h2 while its HA instance still ran"
            assert pids.get("plain") == before["plain"]  # not HA-managed: it serves on
            assert _copies(pair, "ha1") <= 1
            time.sleep(0.1)
        assert "suspect" in seen and ha_gone is not None and ha_gone < expired
        print(f"\nh2 partitioned: HA instance killed after {ha_gone:.1f} s, lease expired after {expired:.1f} s")
        for _ in range(30):  # recovery may start ha1 elsewhere now: still one copy at most
            assert _copies(pair, "ha1") <= 1 and _pids(pair).get("plain") == before["plain"]
            time.sleep(0.1)
    finally:
        pair.run("host", "partition", "h2", "--heal")
    wait_for(lambda: host_states(pair)["h2"] == "up", 30, "h2 to rejoin")
    wait_for(lambda: _copies(pair, "ha1") == 1, 30, "ha1 to run (again on h2, or where recovery put it)")
    for _ in range(20):
        assert _copies(pair, "ha1") == 1 and _pids(pair)["plain"] == before["plain"]
        time.sleep(0.1)
    assert _events(pair, "h2")["LeaseExpired"] == 1 and _events(pair, "h2")["HostRecovered"] == 1
    log = (pair.home / "agents/h2/agent.log").read_text()
    assert "self-fenced: stopped 1 HA instances (ha1)" in log  # its event is dropped if recovery moved ha1 away


def test_with_the_netns_fence_a_partitioned_host_is_fenced_in_seconds(pair: CloudCLI) -> None:
    pair.kill9("cloudletd")
    pair.run("up", env={"CLOUDLET_FENCE": "netns"})  # the default fence, for this last test
    wait_for(lambda: host_states(pair) == {"local": "up", "h2": "up"}, 20, "both hosts up")
    fence = NetnsFence(pair.cloud_id())
    assert len(fence.processes_in(fence.namespaces("h2"))) >= 2  # its agent and an instance at least
    agent = pair.agent_pid("h2")
    start = time.monotonic()
    pair.run("host", "partition", "h2")
    try:
        wait_for(lambda: host_states(pair)["h2"] == "fenced", 15, "h2 to be fenced")
        took = time.monotonic() - start
        assert fence.processes_in(fence.namespaces("h2")) == [] and not alive(agent)
        assert _pids(pair) == {}
        print(f"\nh2 partitioned: fenced after {took:.1f} s")
    finally:
        pair.run("host", "partition", "h2", "--heal")
    fenced = [e for e in pair.json("host", "show", "h2")["events"] if e["reason"] == "HostFenced"]
    assert len(fenced) == 1 and "processes killed" in fenced[0]["message"]
    pair.run("up")  # starts h2's agent again: a new incarnation, so it may rejoin
    wait_for(lambda: host_states(pair)["h2"] == "up", 30, "h2 to rejoin")
    wait_for(lambda: "plain" in _pids(pair) and _copies(pair, "ha1") == 1, 30, "h2's instances to run again")
