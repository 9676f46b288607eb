"""Replica planning on the fake cloud (real control plane and agents, fake drivers, memory pools): the replica host is
in another zone when there is one, else another host, else none with a message saying what to add; the record
that carries the replica host's token is a system record on the source's host, the tenant's view shows none of it;
the replica goes with its source; a stack layer's replicas reach its instances and volumes, and change in place.
Shipping itself needs btrfs: tests/integration/test_replication.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.compute import instances
from cloudlet.compute.resource import HOST, INSTANCE, HostStatus
from cloudlet.core.clock import VirtualClock
from cloudlet.core.context import SYSTEM_TENANT, Caller
from cloudlet.resilience.sim import SimCloud
from cloudlet.stacks import stacks
from cloudlet.storage import replication, volumes
from cloudlet.storage.resource import REPLICA, VOLUME, ReplicaSpec
from tests.helpers import fake_cloud

ADMIN = Caller("admin", "admin")


@pytest.fixture
def sim(tmp_path: Path) -> SimCloud:
    return fake_cloud(tmp_path, clock=VirtualClock(), boot_seconds=0.1)


def settle(sim: SimCloud) -> None:
    sim.run_until_idle(until=sim.clock.now() + 30)


def replica_spec(sim: SimCloud, source_id: str) -> ReplicaSpec:
    rep = replication.replica_of(sim.cloud.store, source_id)
    assert rep is not None
    return ReplicaSpec.of(rep)


def test_no_other_host_says_what_to_add(sim: SimCloud) -> None:
    vol = volumes.create_volume(sim.cloud, ADMIN, volumes.VolumeCreate(name="data", size_gib=1, replicas=1))
    settle(sim)
    spec = replica_spec(sim, vol.id)
    assert spec.target_host is None and spec.token is None
    assert "cloudlet host add" in spec.note
    view = replication.replica_view(replication.replica_of(sim.cloud.store, vol.id))
    assert view is not None and "cloudlet host add" in view["message"]


def test_replica_host_is_in_another_zone_and_gets_a_token(sim: SimCloud) -> None:
    sim.add_host("same-zone", sim.config.zone)
    sim.add_host("far", "zone-z")
    req = instances.InstanceCreate(name="db", image="busybox", memory_mib=32, zone=sim.config.zone, replicas=1)
    inst = instances.launch(sim.cloud, ADMIN, req)
    settle(sim)
    inst = sim.cloud.store.get_by_id(inst.id)  # type: ignore[assignment]
    rep = replication.replica_of(sim.cloud.store, inst.id)
    assert rep is not None and rep.host == inst.host and rep.tenant == SYSTEM_TENANT and rep.owner == inst.id
    spec = ReplicaSpec.of(rep)
    assert (spec.target_host, spec.target_zone, spec.volume) == ("far", "zone-z", f"disks/{inst.id}")
    # simulated agents report no endpoint: the token waits for one
    assert spec.token is None and "endpoint" in spec.note
    view = replication.replica_view(rep)
    assert view is not None and "endpoint" in view["message"] and view["state"] == "waiting"

    far = sim.cloud.store.get(HOST, SYSTEM_TENANT, "far")
    status = HostStatus.of(far).model_copy(update={"endpoint": "http://127.0.0.1:9", "key": "agent-key-1"})
    sim.cloud.store.update_status(far.id, status=status.dump())  # a heartbeat with a new key
    settle(sim)
    spec = replica_spec(sim, inst.id)
    assert spec.endpoint == "http://127.0.0.1:9"
    assert (
        spec.token
        == replication.replica_token("agent-key-1", f"disks/{inst.id}")
        != replication.replica_token("agent-key-1", "disks/other")
    )
    view = replication.replica_view(replication.replica_of(sim.cloud.store, inst.id))
    assert view is not None and "needs the btrfs pool" in view["message"], "the memory pool cannot ship, and says so"
    for shown in (view, instances.instance_view(inst)):  # what tenants see holds neither key nor token
        assert "agent-key-1" not in str(shown) and spec.token not in str(shown)

    instances.delete_instance(sim.cloud, ADMIN, "db")
    settle(sim)
    assert sim.cloud.store.list(REPLICA) == [], "the replica record goes with its source"


def test_replicas_off_drops_the_record(sim: SimCloud) -> None:
    sim.add_host("far", "zone-z")
    vol = volumes.create_volume(sim.cloud, ADMIN, volumes.VolumeCreate(name="data", size_gib=1, replicas=1))
    settle(sim)
    assert replica_spec(sim, vol.id).target_host == "far"
    vol = sim.cloud.store.get_by_id(vol.id)  # type: ignore[assignment]
    sim.cloud.store.update_spec(vol.id, {**vol.spec, "replicas": 0})
    settle(sim)
    assert sim.cloud.store.list(REPLICA) == []


STACK = """\
name: shop
layers:
  db:
    replicas: {replicas}
    replica_interval_s: 2
    volumes: [{{name: data, size_gib: 1}}]
"""


def test_a_stack_layer_replicates_its_instances_and_volumes_in_place(sim: SimCloud) -> None:
    sim.add_host("far", "zone-z")
    stacks.apply_stack(sim.cloud, ADMIN, STACK.format(replicas=1))
    settle(sim)
    db = sim.cloud.store.get(INSTANCE, "admin", "db-1")
    vol = sim.cloud.store.get(VOLUME, "admin", "db-1-data")
    for res in (db, vol):
        assert (res.spec["replicas"], res.spec["replica_interval_s"]) == (1, 2.0)
        assert replica_spec(sim, res.id).target_host in ("far", "local")
    stacks.apply_stack(sim.cloud, ADMIN, STACK.format(replicas=0))
    settle(sim)
    assert sim.cloud.store.get(INSTANCE, "admin", "db-1").id == db.id, "switched off in place, not replaced"
    assert sim.cloud.store.list(REPLICA) == []
