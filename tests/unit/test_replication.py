"""Pure parts of storage/replication.py: which host holds a replica, when the next cycle starts, the token."""

from __future__ import annotations

import time

from cloudlet.compute.resource import HOST, HostSpec, HostStatus
from cloudlet.core.context import SYSTEM_TENANT
from cloudlet.core.records import Resource
from cloudlet.storage.replication import choose_replica_host, next_cycle_at, replica_dir, replica_token


def host(name: str, zone: str, beat_age: float = 0.0, phase: str = "up", cordoned: bool = False) -> Resource:
    return Resource(
        kind=HOST,
        tenant=SYSTEM_TENANT,
        name=name,
        zone=zone,
        phase=phase,
        spec=HostSpec(cpus=2, memory_mib=1024, cordoned=cordoned).dump(),
        status=HostStatus(last_heartbeat=time.time() - beat_age).dump(),
    )


def test_another_zone_first_then_fewest_replicas_then_name() -> None:
    hosts = [host("a1", "a"), host("a2", "a"), host("b2", "b"), host("b1", "b")]
    chosen = choose_replica_host(hosts, "a1", {})
    assert chosen is not None and chosen.name == "b1"
    chosen = choose_replica_host(hosts, "a1", {"b1": 3, "b2": 1})
    assert chosen is not None and chosen.name == "b2"
    chosen = choose_replica_host(hosts[:2], "a1", {})
    assert chosen is not None and chosen.name == "a2", "no other zone: another host of the same one"


def test_only_live_uncordoned_hosts_hold_replicas() -> None:
    hosts = [
        host("a1", "a"),
        host("b1", "b", beat_age=60),
        host("b2", "b", phase="fenced"),
        host("b3", "b", cordoned=True),
        host("a2", "a"),
    ]
    chosen = choose_replica_host(hosts, "a1", {})
    assert chosen is not None and chosen.name == "a2"
    assert choose_replica_host(hosts[:4], "a1", {}) is None
    assert choose_replica_host([host("a1", "a")], "a1", {}) is None


def test_next_cycle_starts_early_by_a_margin_over_the_last() -> None:
    assert next_cycle_at(100.0, 5.0, 0.0) == 104.9
    assert next_cycle_at(100.0, 5.0, 1.0) == 103.4
    assert next_cycle_at(100.0, 5.0, 10.0) == 100.5, "never more often than a tenth of the interval"


def test_token_names_one_volume_under_one_key() -> None:
    assert replica_dir("disks/abc") == "replicas/abc" == replica_dir("volumes/abc")
    t = replica_token("key", "disks/abc")
    assert t == replica_token("key", "disks/abc")
    assert t not in (replica_token("key", "volumes/abc"), replica_token("other", "disks/abc"))
