"""1,000 instances on 100 simulated hosts: the real control plane, one real agent per host over the in-process
transport, fake drivers, virtual clock."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cloudlet.compute import instances
from cloudlet.core.clock import VirtualClock
from cloudlet.core.context import Caller
from cloudlet.network import networks
from tests.helpers import fake_cloud


@pytest.mark.slow  # 80-145 s on 2 cores; make test's simulation is tests/sim/test_seeds.py (1,000 fault schedules)
def test_thousand_instances_spread_and_run(tmp_path: Path) -> None:
    clock = VirtualClock()
    sim = fake_cloud(tmp_path, clock=clock, boot_seconds=3.0)
    cloud = sim.cloud
    for i in range(100):
        sim.add_host(f"sim-{i:03d}", f"zone-{'abc'[i % 3]}", 32, 64 * 1024)
    admin = Caller("admin", "admin")
    networks.create_network(cloud, admin, "big", "10.241.0.0/20")
    for i in range(1000):
        req = instances.InstanceCreate(name=f"vm-{i}", image="busybox", memory_mib=512, network="big")
        instances.launch(cloud, admin, req)
    sim.run_until_idle(until=clock.now() + 600)
    records = cloud.store.list(instances.KIND)
    assert len(records) == 1000
    states = Counter(r.status.get("state") for r in records)
    assert states == {"running": 1000}, states
    per_host = Counter(r.host for r in records)
    # 'local' plus 100 simulated hosts: spread evenly, nobody above 10 (1000 / 101 rounds up to 10)
    assert max(per_host.values()) <= 10 and len(per_host) == 101, per_host
    assert sum(len(a.ctx.compute.list_instances()) for a in sim.agents.values()) == 1000
    # every running instance holds a unique address
    ips = [r.status["ip"] for r in records]
    assert len(set(ips)) == 1000


def test_crashes_are_healed_by_restart_policy(tmp_path: Path) -> None:
    clock = VirtualClock()
    sim = fake_cloud(tmp_path, clock=clock, boot_seconds=1.0)
    cloud = sim.cloud
    admin = Caller("admin", "admin")
    for i, policy in enumerate(["always"] * 5 + ["never"] * 5):
        instances.launch(cloud, admin, instances.InstanceCreate(name=f"c-{i}", image="busybox", restart=policy))
    sim.run_until_idle(until=clock.now() + 60)
    compute = sim.agents["local"].ctx.compute
    for r in cloud.store.list(instances.KIND):
        compute.crash(r.id)  # type: ignore[attr-defined]
    sim.run_until_idle(until=clock.now() + 60)
    by_policy = Counter((r.spec["restart"], r.status["state"]) for r in cloud.store.list(instances.KIND))
    assert by_policy == {("always", "running"): 5, ("never", "exited"): 5}
    reasons = Counter(e.reason for e in cloud.store.list_events("admin", limit=1000))
    assert reasons["Exited"] == 10 and reasons["Restarted"] == 5
