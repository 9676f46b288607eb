"""Placement over a real store: each filter and weight with hosts in three zones, the decision record, "no valid
host" naming every host's filter; then through the scheduler on the fake cloud: a layer of 6 over 3 hosts in 2
zones lands 2/2/2, a cordoned host gets nothing new, and the stack layer is a group."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.compute import instances
from cloudlet.compute.hosts import register_host, set_cordoned
from cloudlet.compute.placement import (
    CPU_RATIO,
    MAX_LISTED,
    Host,
    Load,
    NoValidHost,
    Placement,
    Request,
    View,
    decide,
    explain,
)
from cloudlet.compute.resource import HOST, INSTANCE, HostStatus, InstanceSpec
from cloudlet.core.clock import RealClock, VirtualClock
from cloudlet.core.context import SYSTEM_TENANT, Caller
from cloudlet.core.records import Resource
from cloudlet.core.store import Store
from cloudlet.resilience.sim import SimCloud
from cloudlet.stacks import stacks
from tests.helpers import fake_cloud

GIB = 1024
HOSTS = [("a1", "zone-a"), ("a2", "zone-a"), ("b1", "zone-b"), ("c1", "zone-c")]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'state.db'}")
    s.migrate()
    for name, zone in HOSTS:
        register_host(s, name, zone, 4, 8 * GIB)
    yield s
    s.close()


def placement(store: Store) -> Placement:
    return Placement(store, VirtualClock())


def put(store: Store, host: str, memory_mib: int = 256, tenant: str = "t1", group: str | None = None) -> Resource:
    """An instance already placed on host."""
    spec = InstanceSpec(
        image="busybox", image_id="i", network="n", network_id="n", cpus=1.0, memory_mib=memory_mib, group=group
    )
    n = len(store.list(INSTANCE))
    return store.create(Resource(kind=INSTANCE, tenant=tenant, name=f"vm-{n}", spec=spec.dump(), host=host))


def rejected_by(p: Placement, **kw: object) -> dict[str, str]:
    """Each rejected host and its filter's name (every host rejected: from the NoValidHost decision)."""
    try:
        d = p.place(**kw)  # type: ignore[arg-type]
    except NoValidHost as exc:
        d = exc.decision
    return {v.host: v.filter["name"] for v in d.verdicts if v.filter}


# filters


def test_host_state_phase_and_stale_heartbeat(store: Store) -> None:
    a1 = store.get(HOST, SYSTEM_TENANT, "a1")
    store.update_status(a1.id, phase="suspect")
    assert rejected_by(placement(store), memory_mib=64) == {"a1": "host-state"}
    # on the real clock a heartbeat older than 5 s rejects the host too
    b1 = store.get(HOST, SYSTEM_TENANT, "b1")
    store.update_status(b1.id, status=HostStatus(last_heartbeat=time.time() - 60).dump())
    for name in ("a2", "c1"):
        h = store.get(HOST, SYSTEM_TENANT, name)
        store.update_status(h.id, status=HostStatus(last_heartbeat=time.time()).dump())
    try:
        Placement(store, RealClock()).place(64, tenant="t1", group="s/web", anti_affinity="hosts")
    except NoValidHost:
        pytest.fail("a2 and c1 are fresh")
    d = Placement(store, RealClock()).place(64)
    reasons = {v.host: v.filter for v in d.verdicts if v.filter}
    assert reasons["a1"] == {"name": "host-state", "reason": "host is suspect"}
    assert reasons["b1"]["name"] == "host-state" and "no heartbeat for 60 s" in reasons["b1"]["reason"]


def test_cordoned_gets_nothing_new_and_keeps_its_cordon_across_heartbeats(store: Store) -> None:
    put(store, "a1")
    set_cordoned(store, "a1", True)
    register_host(store, "a1", "zone-a", 4, 8 * GIB)  # a heartbeat rewrites capacity, not the cordon
    p = placement(store)
    assert rejected_by(p, memory_mib=64) == {"a1": "cordoned"}
    assert all(p.place(64).host != "a1" for _ in range(8))
    assert len(store.list(INSTANCE, host="a1")) == 1  # what ran there stays
    set_cordoned(store, "a1", False)
    p.invalidate()
    assert rejected_by(p, memory_mib=64) == {}
    events = [e.reason for e in store.list_events(SYSTEM_TENANT, limit=100) if e.name == "a1"]
    assert "Cordoned" in events and "Uncordoned" in events


def test_zone(store: Store) -> None:
    p = placement(store)
    assert p.place(64, "zone-b").host == "b1"
    assert rejected_by(p, memory_mib=64, zone="zone-b") == {"a1": "zone", "a2": "zone", "c1": "zone"}
    d = p.place(64, "zone-c")
    assert {v.host: v.filter for v in d.verdicts if v.filter}["a1"] == {
        "name": "zone",
        "reason": "host is in zone-a, not zone-c",
    }


def test_memory_counts_placed_instances(store: Store) -> None:
    put(store, "a1", memory_mib=8 * GIB - 100)
    p = placement(store)
    d = p.place(200)
    reasons = {v.host: v.filter for v in d.verdicts if v.filter}
    assert reasons == {"a1": {"name": "memory", "reason": "needs 200 MiB, 100 MiB free of 8192"}}
    # the cache counts what it placed (a2 holds those 200 MiB): five of 4 GiB fill b1 and c1, a2 takes one
    hosts = [p.place(4 * GIB).host for _ in range(5)]
    assert Counter(hosts) == {"b1": 2, "c1": 2, "a2": 1}
    with pytest.raises(NoValidHost):
        p.place(6 * GIB)


def test_cpus_per_instance_and_committed(store: Store) -> None:
    p = placement(store)
    assert rejected_by(p, memory_mib=16, cpus=8) == {h: "cpus" for h, _ in HOSTS}
    with pytest.raises(NoValidHost, match="needs 8 vCPUs, host has 4 cores"):
        p.place(16, cpus=8)
    # 4 cores x CPU_RATIO vCPUs per host at most
    for _ in range(4 * CPU_RATIO // 4 * len(HOSTS)):
        p.place(1, cpus=4)
    with pytest.raises(NoValidHost, match=f"256 of 256 vCPUs committed \\({CPU_RATIO} per core\\)"):
        p.place(1, cpus=1)


def test_soft_anti_affinity_rejects_a_member_host_only_while_another_is_free(store: Store) -> None:
    for host in ("a1", "a2", "b1"):
        put(store, host, group="shop/web")
    put(store, "c1", tenant="t2", group="shop/web")  # another tenant's group of the same name: not a member
    p = placement(store)
    d = p.place(64, tenant="t1", group="shop/web")
    assert d.host == "c1"
    reasons = {v.host: v.filter for v in d.verdicts if v.filter}
    assert reasons["a1"] == {"name": "anti-affinity", "reason": "holds 1 of group shop/web; another host holds none"}
    # every host holds one now: prefer places anyway, on the weights
    d = p.place(64, tenant="t1", group="shop/web")
    assert d.host is not None and not any(v.filter for v in d.verdicts)
    # a free host that another filter rejects does not count as free
    assert rejected_by(p, memory_mib=64, tenant="t1", group="shop/web", zone="zone-c") == {
        "a1": "zone",
        "a2": "zone",
        "b1": "zone",
    }


def test_hard_anti_affinity_never_shares_a_host(store: Store) -> None:
    p = placement(store)
    placed = [p.place(64, tenant="t1", group="db/main", anti_affinity="hosts").host for _ in range(4)]
    assert sorted(placed) == ["a1", "a2", "b1", "c1"]
    with pytest.raises(NoValidHost) as exc:
        p.place(64, tenant="t1", group="db/main", anti_affinity="hosts")
    for host, _ in HOSTS:
        assert f"{host}: anti-affinity: holds 1 of group db/main (anti_affinity: hosts)" in exc.value.message
    assert p.place(64, tenant="t2", group="db/main", anti_affinity="hosts").host  # another tenant's group


def test_no_valid_host_names_each_hosts_filter(store: Store) -> None:
    store.update_status(store.get(HOST, SYSTEM_TENANT, "a1").id, phase="fenced")
    set_cordoned(store, "a2", True)
    put(store, "c1", memory_mib=8 * GIB)
    with pytest.raises(NoValidHost) as exc:
        placement(store).place(512, "zone-c")
    msg = exc.value.message
    assert msg.startswith("no valid host for 512 MiB: ")
    assert "a1: host-state: host is fenced" in msg
    assert "a2: cordoned: " in msg
    assert "b1: zone: host is in zone-b, not zone-c" in msg
    assert "c1: memory: needs 512 MiB, 0 MiB free of 8192" in msg
    assert exc.value.status_code == 422


# weights


def hosts_of(*specs: tuple[str, str, int, float]) -> list[Host]:
    return [Host(name, zone, 4, memory, "up", pressure=pressure) for name, zone, memory, pressure in specs]


def test_weight_spread_prefers_fewer_instances() -> None:
    hosts = hosts_of(("a1", "zone-a", 8192, 0), ("a2", "zone-a", 8192, 0))
    view = View({"a1": Load(3, 768, 3.0), "a2": Load(1, 256, 1.0)}, Counter(), Counter())
    d = decide(hosts, Request(256), view)
    assert d.host == "a2"
    lost = next(v for v in d.verdicts if v.host == "a1")
    assert lost.weights is not None and lost.weights["spread"] == -3.0 and lost.decided_by == "spread"


def test_weight_free_memory_prefers_the_emptier_host() -> None:
    hosts = hosts_of(("a1", "zone-a", 4096, 0), ("a2", "zone-a", 16384, 0))
    d = decide(hosts, Request(1024), View({}, Counter(), Counter()))
    assert d.host == "a2"
    w = {v.host: v.weights for v in d.verdicts}
    assert w["a1"] == {"spread": 0.0, "free-memory": 0.75, "pressure": 0.0}
    assert w["a2"] is not None and w["a2"]["free-memory"] == 0.9375


def test_weight_pressure_prefers_the_calmer_host() -> None:
    hosts = hosts_of(("a1", "zone-a", 8192, 40.0), ("a2", "zone-a", 8192, 2.0))
    d = decide(hosts, Request(256), View({}, Counter(), Counter()))
    assert d.host == "a2"
    a1 = next(v for v in d.verdicts if v.host == "a1")
    assert a1.weights is not None and a1.weights["pressure"] == -2.0 and a1.decided_by == "pressure"
    # 40 % pressure weighs as two instances: a host with one more instance but no pressure wins
    view = View({"a2": Load(1, 256, 1.0)}, Counter(), Counter())
    assert decide(hosts_of(("a1", "zone-a", 8192, 40.0), ("a2", "zone-a", 8192, 0)), Request(256), view).host == "a2"


def test_weights_zones_then_hosts_for_a_group() -> None:
    hosts = hosts_of(("a1", "zone-a", 8192, 0), ("a2", "zone-a", 8192, 0), ("b1", "zone-b", 8192, 0))
    members = Counter({"a1": 1, "b1": 1})
    view = View({}, members, Counter({"zone-a": 1, "zone-b": 1}))
    d = decide(hosts, Request(256, tenant="t1", group="s/web"), view)
    # soft anti-affinity leaves a2; with a3 also free the zone weight picks b1's zone last
    assert d.host == "a2"
    w = {v.host: v for v in d.verdicts}
    assert w["a1"].filter is not None and w["a1"].filter["name"] == "anti-affinity"
    assert w["a2"].weights == {"zones": -50.0, "hosts": 0.0, "spread": 0.0, "free-memory": 0.96875, "pressure": 0.0}
    # every host holding one: the zone with fewer members per host wins, then the host with fewer
    members = Counter({"a1": 1, "a2": 1, "b1": 1})
    d = decide(hosts, Request(256, tenant="t1", group="s/web"), View({}, members, Counter({"zone-a": 2, "zone-b": 1})))
    assert d.host == "a1"  # zone-a: 2 over 2 hosts, zone-b: 1 over 1; equal, then hosts equal, then the name
    members = Counter({"a1": 2, "a2": 1, "b1": 1})
    d = decide(hosts, Request(256, tenant="t1", group="s/web"), View({}, members, Counter({"zone-a": 3, "zone-b": 1})))
    assert d.host == "b1"
    assert {v.host: v.decided_by for v in d.verdicts} == {"a1": "zones", "a2": "zones", "b1": None}


def test_six_of_a_group_over_three_hosts_in_two_zones_land_two_each(store: Store) -> None:
    set_cordoned(store, "c1", True)
    p = placement(store)
    first = [p.place(256, tenant="t1", group="shop/web").host for _ in range(2)]
    assert {dict(HOSTS)[h] for h in first if h} == {"zone-a", "zone-b"}  # both zones before any host gets two
    rest = [p.place(256, tenant="t1", group="shop/web").host for _ in range(4)]
    assert Counter(first + rest) == {"a1": 2, "a2": 2, "b1": 2}


def test_record_is_bounded_and_says_how_many_more(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'state.db'}")
    s.migrate()
    for i in range(100):
        register_host(s, f"h{i:03d}", "zone-b" if i < 10 else "zone-a", 4, 8 * GIB)
    d = Placement(s, VirtualClock()).place(256, "zone-b")
    rec = d.record()
    decision = json.loads(rec["decision"])
    assert len(decision["hosts"]) == MAX_LISTED and decision["more"] == 100 - MAX_LISTED
    assert decision["more_by_verdict"] == {"rejected": 100 - MAX_LISTED}
    assert rec["verdicts"] == {"chosen": 1, "passed": 9, "rejected": 90}
    assert [h["verdict"] for h in decision["hosts"][:10]] == ["chosen"] + ["passed"] * 9
    # the error names at most MAX_LISTED hosts and counts the rest by filter
    with pytest.raises(NoValidHost, match=r"and 36 more \(zone 36\)$"):
        Placement(s, VirtualClock()).place(256, "zone-x")
    s.close()


# through the scheduler (fake cloud, virtual clock)


@pytest.fixture
def sim(tmp_path: Path) -> SimCloud:
    sim = fake_cloud(tmp_path, clock=VirtualClock(), boot_seconds=1.0)
    sim.add_host("a2", "zone-a", 32, 64 * GIB)
    sim.add_host("b1", "zone-b", 32, 64 * GIB)
    return sim


ADMIN = Caller("admin", "admin")
STACK = """\
name: shop
layers:
  web: {count: 6, memory: 64}
  db: {count: 2, memory: 64, placement: {anti_affinity: hosts}}
"""


def test_a_stack_layer_spreads_over_zones_then_hosts(sim: SimCloud) -> None:
    stacks.apply_stack(sim.cloud, ADMIN, STACK)
    sim.run_until_idle(until=sim.clock.now() + 120)
    records = [r for r in sim.cloud.store.list(INSTANCE, tenant="admin") if not r.deleting]
    web = [r for r in records if r.name.startswith("web-")]
    assert Counter(r.host for r in web) == {"local": 2, "a2": 2, "b1": 2}
    assert {InstanceSpec.of(r).group for r in web} == {"shop/web"}
    db = [r for r in records if r.name.startswith("db-")]
    assert len({r.host for r in db}) == 2 and {InstanceSpec.of(r).anti_affinity for r in db} == {"hosts"}
    why = explain(web[0])
    assert why["chosen"] == web[0].host and len(why["hosts"]) == 3
    assert {h["verdict"] for h in why["hosts"]} <= {"chosen", "passed", "rejected"}


def test_cordon_in_the_scheduler_and_unschedulable_keeps_the_decision(sim: SimCloud) -> None:
    store = sim.cloud.store
    instances.launch(sim.cloud, ADMIN, instances.InstanceCreate(name="before", image="busybox", zone="zone-b"))
    sim.run_until_idle(until=sim.clock.now() + 30)
    set_cordoned(store, "b1", True)
    sim.cloud.placement.invalidate()
    instances.launch(sim.cloud, ADMIN, instances.InstanceCreate(name="after", image="busybox", zone="zone-b"))
    sim.run_until_idle(until=sim.clock.now() + 30)
    before, after = store.get(INSTANCE, "admin", "before"), store.get(INSTANCE, "admin", "after")
    assert before.host == "b1" and before.status["state"] == "running"  # what runs stays
    assert after.host is None and after.status["state"] == "unschedulable"
    assert "b1: cordoned: host is cordoned" in after.status["message"]
    why = explain(after)
    assert {h["host"]: h["filter"]["name"] for h in why["hosts"]} == {"local": "zone", "a2": "zone", "b1": "cordoned"}
    set_cordoned(store, "b1", False)  # the scheduler hears of it: no invalidate, no 30 s retry
    sim.run_until_idle(until=sim.clock.now() + 1)
    assert store.get(INSTANCE, "admin", "after").host == "b1"


def test_a_host_joining_takes_the_waiting_instances_at_once(sim: SimCloud) -> None:
    instances.launch(sim.cloud, ADMIN, instances.InstanceCreate(name="far", image="busybox", zone="zone-c"))
    sim.run_until_idle(until=sim.clock.now() + 1)
    assert sim.cloud.store.get(INSTANCE, "admin", "far").status["state"] == "unschedulable"
    sim.add_host("c1", "zone-c", 32, 64 * GIB)
    sim.run_until_idle(until=sim.clock.now() + 1)
    assert sim.cloud.store.get(INSTANCE, "admin", "far").host == "c1"
