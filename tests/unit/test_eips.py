"""Elastic IPs without a kernel: the hub's NAT table text (checked by `nft -c` where root allows), the service rules
(one holder, moves, release, quota, 4xx that say what to fix) and the agent's plan on the fake driver."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cloudlet.compute import instances
from cloudlet.compute.resource import InstanceStatus
from cloudlet.core.clock import VirtualClock
from cloudlet.core.context import Caller
from cloudlet.core.errors import Conflict, InvalidSpec, NotFound
from cloudlet.network import eips, networks
from cloudlet.network.drivers.base import PublicPlan
from cloudlet.network.drivers.fake import FakeNetworkDriver
from cloudlet.network.outside import Slice, pool_slice, render_public
from cloudlet.resilience.sim import SimCloud
from tests.helpers import fake_cloud

POOL = "198.18.77.0/24"
ADMIN = Caller("admin", "admin")


@pytest.fixture
def sim(tmp_path: Path) -> SimCloud:
    (tmp_path / "eip-pool").write_text(POOL + "\n")  # as `up` chose it: no look at the host's routes
    return fake_cloud(tmp_path, clock=VirtualClock(), boot_seconds=0.1)


def test_slice_addresses_and_pool_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sl = Slice(ipaddress.IPv4Network(POOL))
    assert (sl.host_address, sl.outside_host_side, sl.outside_hub_side, sl.hub_address) == (
        "198.19.77.1",
        "198.19.77.2",
        "198.19.77.5",
        "198.19.77.6",
    )
    assert sl.egress_address == "198.18.77.254" and sl.eip_candidates()[0] == "198.18.77.1"
    assert sl.transit_links == (("198.19.77.0/30", "host0"), ("198.19.77.4/30", "hub0"))
    assert sl.egress_address not in sl.eip_candidates() and len(sl.eip_candidates()) == 253
    for bad in ("10.0.0.0/24", "198.19.1.0/24", "198.18.1.0/23", "nonsense"):
        monkeypatch.setenv("CLOUDLET_EIP_POOL", bad)
        with pytest.raises(InvalidSpec, match="CLOUDLET_EIP_POOL"):
            pool_slice(tmp_path / bad.replace("/", "_"), "abcd")


def test_render_public_table() -> None:
    plan = PublicPlan(
        eips=(("198.18.77.1", "10.240.0.2"), ("198.18.77.2", "10.240.0.2"), ("198.18.77.3", "10.240.0.3")),
        egress_subnets=("10.240.1.0/24",),
    )
    text = render_public(plan, Slice(ipaddress.IPv4Network(POOL)))
    assert text.lstrip().startswith("table ip cloudlet_public\ndelete table ip cloudlet_public\n")  # one transaction
    assert "198.18.77.1 : 10.240.0.2, 198.18.77.2 : 10.240.0.2, 198.18.77.3 : 10.240.0.3" in text
    assert "10.240.0.2 : 198.18.77.1, 10.240.0.3 : 198.18.77.3" in text  # two EIPs: it speaks from the first
    assert "elements = { 10.240.0.2, 10.240.0.3, 10.240.1.0/24 }" in text
    assert "ip daddr 198.18.0.0/15 ip saddr @outbound" in text and "snat to 198.18.77.254" in text
    for t in (text, render_public(PublicPlan(), Slice(ipaddress.IPv4Network(POOL)))):
        if os.geteuid() != 0 or not shutil.which("nft"):
            pytest.skip("nft -c needs root and nft")
        proc = subprocess.run(["unshare", "-n", "nft", "-c", "-f", "-"], input=t.encode(), capture_output=True)
        assert proc.returncode == 0, proc.stderr.decode() + t


def test_allocate_associate_move_release(sim: SimCloud) -> None:
    cloud = sim.cloud
    for name in ("a", "b"):
        instances.launch(cloud, ADMIN, instances.InstanceCreate(name=name, image="busybox"))
    e1 = eips.allocate_eip(cloud, ADMIN, "e1")
    assert eips.eip_view(e1)["address"] == "198.18.77.1" and eips.eip_view(e1)["state"] == "allocated"
    with pytest.raises(Conflict, match="already exists"):
        eips.allocate_eip(cloud, ADMIN, "e1")
    assert cloud.store.allocate_ip(eips.POOL_KEY, "someone-else", ["198.18.77.1", "198.18.77.9"]) == "198.18.77.9"
    cloud.store.release_ips("someone-else")
    eips.associate_eip(cloud, ADMIN, "e1", "Instance", "a")
    moved = eips.associate_eip(cloud, ADMIN, "e1", "Instance", "b")  # already held: it moves
    assert eips.eip_view(moved)["target"] == "instance/b"
    assert [e.reason for e in cloud.store.list_events(name="e1")][-2:] == ["Associated", "Associated"]
    eips.allocate_eip(cloud, ADMIN, "e2")
    with pytest.raises(Conflict, match="instance b already holds EIP e1; disassociate that one first"):
        eips.associate_eip(cloud, ADMIN, "e2", "Instance", "b")
    with pytest.raises(Conflict, match="'nope' not found; create it before"):
        eips.associate_eip(cloud, ADMIN, "e2", "Instance", "nope")
    with pytest.raises(NotFound):  # another tenant's instance is not found by name
        eips.associate_eip(cloud, Caller("acme"), "e2", "Instance", "a")
    with pytest.raises(Conflict, match="disassociate it first, or release with --force"):
        eips.release_eip(cloud, ADMIN, "e1")
    eips.disassociate_eip(cloud, ADMIN, "e1")
    eips.release_eip(cloud, ADMIN, "e1")
    assert [e.name for e in cloud.store.list(eips.KIND)] == ["e2"]
    assert eips.eip_view(eips.allocate_eip(cloud, ADMIN, "e3"))["address"] == "198.18.77.1"  # back in the pool
    eips.associate_eip(cloud, ADMIN, "e3", "Instance", "a")
    eips.release_eip(cloud, ADMIN, "e3", force=True)


def test_quota(sim: SimCloud) -> None:
    acme = Caller("acme")
    for i in range(5):
        eips.allocate_eip(sim.cloud, acme, f"e{i}")
    with pytest.raises(Conflict, match="quota exceeded: eips would be 6, the limit is 5"):
        eips.allocate_eip(sim.cloud, acme, "e5")
    assert len(sim.cloud.store.list(eips.KIND)) == 5
    eips.release_eip(sim.cloud, acme, "e0")
    eips.allocate_eip(sim.cloud, acme, "e5")  # the refused one's address went back too


def test_agent_plan_follows_records(sim: SimCloud) -> None:
    cloud = sim.cloud
    for name in ("a", "b"):
        instances.launch(cloud, ADMIN, instances.InstanceCreate(name=name, image="busybox"))
    eips.allocate_eip(cloud, ADMIN, "e1")
    eips.associate_eip(cloud, ADMIN, "e1", "Instance", "a")
    sim.run_until_idle()
    net = sim.agents[sim.config.host].ctx.net
    assert isinstance(net, FakeNetworkDriver)
    ip = {i.name: str(InstanceStatus.of(i).ip) for i in cloud.store.list("Instance")}
    a = cloud.store.get("Instance", "admin", "a")
    assert net.public == PublicPlan(eips=(("198.18.77.1", ip["a"]),))
    assert eips.public_ip(cloud.store, a.id) == "198.18.77.1"
    assert eips.eip_view(cloud.store.get(eips.KIND, "admin", "e1"))["private_ip"] == ip["a"]
    eips.associate_eip(cloud, ADMIN, "e1", "Instance", "b")
    pub = networks.create_network(cloud, ADMIN, "pub", egress=True)
    sim.run_until_idle()
    assert net.public == PublicPlan(
        eips=(("198.18.77.1", ip["b"]),), egress_subnets=(networks.network_view(pub)["subnet"],)
    )
    assert eips.public_ip(cloud.store, a.id) is None
    networks.set_egress(cloud, ADMIN, "pub", False)
    instances.delete_instance(cloud, ADMIN, "b")
    sim.run_until_idle()
    assert net.public == PublicPlan()  # the holder went: the control plane let go of the EIP
    assert eips.eip_view(cloud.store.get(eips.KIND, "admin", "e1"))["state"] == "allocated"
