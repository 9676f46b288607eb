"""NetworkDriver contract (network/drivers/base.py): one set of assertions, run against the fake and the linux driver.

Addresses stay inside 10.240.0.0/12; the linux driver keeps them in its own hub and instance namespaces anyway.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from cloudlet.network.drivers.base import NetworkDriver, PortSpec, short
from cloudlet.network.drivers.fake import FakeNetworkDriver
from cloudlet.network.drivers.linux import LinuxNetworkDriver
from cloudlet.network.netns import NETNS_DIR
from cloudlet.network.nft_secgroups import render_antispoof, render_ingress


def _netns_of(cloud_id: str) -> list[str]:
    return [n for n in os.listdir(NETNS_DIR) if n.startswith(f"cl-{cloud_id}-")] if os.path.isdir(NETNS_DIR) else []


def _linux() -> Iterator[NetworkDriver]:
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nft")):
        pytest.skip("the linux network driver needs root, ip and nft")
    cloud_id = secrets.token_hex(2)
    while _netns_of(cloud_id):  # someone else's cloud has these names
        cloud_id = secrets.token_hex(2)
    driver = LinuxNetworkDriver(cloud_id=cloud_id)
    try:
        yield driver
    finally:
        try:
            driver.teardown()
        finally:  # look for leftovers, then remove them whatever the driver did
            left = _netns_of(cloud_id)
            for name in left:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        assert not left, f"the linux driver's teardown leaked network namespaces: {left}"


@pytest.fixture(params=["fake", pytest.param("linux", marks=pytest.mark.root)])
def net(request: pytest.FixtureRequest) -> Iterator[NetworkDriver]:
    if request.param == "fake":
        yield FakeNetworkDriver()
    else:
        yield from _linux()


def _rid() -> str:
    return secrets.token_hex(13)


def _subnet() -> str:
    """A random 10.254.x.0/24; returns its first three octets."""
    return f"10.254.{secrets.randbelow(256)}"


def test_ensure_network_is_idempotent(net: NetworkDriver) -> None:
    nid, sub = _rid(), _subnet()
    net.ensure_network(nid, f"{sub}.1", 24)
    net.ensure_network(nid, f"{sub}.1", 24)
    assert net.list_networks() == {short(nid)}


def test_port_lifecycle(net: NetworkDriver) -> None:
    nid, iid, sub = _rid(), _rid(), _subnet()
    net.ensure_network(nid, f"{sub}.1", 24)
    port = PortSpec(iid, nid, f"{sub}.2", 24, f"{sub}.1")
    path = net.ensure_port(port)
    assert isinstance(path, str) and path
    assert net.port_exists(iid)
    assert net.list_ports() == {iid}
    assert net.ensure_port(port) == path
    assert net.list_ports() == {iid}
    net.delete_port(iid)
    net.delete_port(iid)
    assert not net.port_exists(iid)
    assert net.list_ports() == set()


def test_delete_network(net: NetworkDriver) -> None:
    keep, gone, sub = _rid(), _rid(), _subnet()
    net.ensure_network(keep, f"{sub}.1", 24)
    net.ensure_network(gone, f"{_subnet()}.1", 24)
    net.delete_network(gone)
    net.delete_network(gone)
    assert net.list_networks() == {short(keep)}


def test_teardown_leaves_nothing(net: NetworkDriver) -> None:
    nid, iid, sub = _rid(), _rid(), _subnet()
    net.ensure_network(nid, f"{sub}.1", 24)
    net.ensure_port(PortSpec(iid, nid, f"{sub}.2", 24, f"{sub}.1"))
    net.teardown()
    assert net.list_networks() == set()
    assert net.list_ports() == set()
    assert not net.port_exists(iid)


# Not part of the shared contract: the fake moves no packets. Linux only.
@pytest.mark.root
@pytest.mark.parametrize("net", ["linux"], indirect=True)
def test_linux_ports_reach_their_own_network_only(net: NetworkDriver) -> None:
    assert isinstance(net, LinuxNetworkDriver)
    a, b = _rid(), _rid()
    sub_a = _subnet()
    sub_b = next(s for s in iter(_subnet, None) if s != sub_a)
    net.ensure_network(a, f"{sub_a}.1", 24)
    net.ensure_network(b, f"{sub_b}.1", 24)
    ports = {
        "a1": PortSpec(_rid(), a, f"{sub_a}.2", 24, f"{sub_a}.1"),
        "a2": PortSpec(_rid(), a, f"{sub_a}.3", 24, f"{sub_a}.1"),
        "b1": PortSpec(_rid(), b, f"{sub_b}.2", 24, f"{sub_b}.1"),
    }
    for port in ports.values():
        net.ensure_port(port)

    def ping(src: str, dst: str) -> int:
        ns = net.port_prefix + ports[src].instance_id
        cmd = ["ip", "netns", "exec", ns, "ping", "-c1", "-W1", ports[dst].address]
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode

    assert ping("a1", "a2") != 0, "a new port lets nothing in before its security groups' rules are loaded"
    group = "g" * 26  # one security group holding the three ports: members reach each other
    table = render_ingress([(group, [])], {group: [p.address for p in ports.values()]})
    for port in ports.values():
        net.apply_ruleset("secgroups", table, port.instance_id)
    assert ping("a1", "a2") == 0, "two ports on one network must reach each other"
    assert ping("a2", "a1") == 0
    assert ping("a1", "b1") != 0, "a port must not reach a port on another network"


@pytest.mark.root
@pytest.mark.parametrize("net", ["linux"], indirect=True)
def test_linux_port_named_like_a_vxlan_port_reaches_its_gateway(net: NetworkDriver) -> None:
    """An instance port is v<last 10 id chars>: one id in 36 makes it vx..., which the hub's rules for its VXLAN
    ports once took for one of them, so that instance could not ARP its gateway (DNS and metadata timed out, an
    EIP answered "No route to host"): a flake of whichever tests happened to get such an id."""
    assert isinstance(net, LinuxNetworkDriver)
    nid, sub = _rid(), _subnet()
    net.ensure_network(nid, f"{sub}.1", 24)
    # the gateway in the cl_vx sets, as on a host with an underlay (where the rules keep it off the VXLAN)
    link = json.loads(
        subprocess.run(
            ["ip", "-n", net.hub, "-j", "link", "show", f"br{short(nid)}"], capture_output=True, text=True, check=True
        ).stdout
    )
    elements = (
        f"add element bridge cl_vx gw_macs {{ {link[0]['address']} }}\nadd element bridge cl_vx gw_ips {{ {sub}.1 }}\n"
    )
    subprocess.run(["ip", "netns", "exec", net.hub, "nft", "-f", "-"], input=elements, text=True, check=True)
    ports = [PortSpec(_rid()[:-10] + "x" + _rid()[:9], nid, f"{sub}.{n}", 24, f"{sub}.1") for n in (2, 3)]
    for port in ports:
        net.ensure_port(port)
    for port in ports:
        cmd = ["ip", "netns", "exec", net.port_prefix + port.instance_id, "ping", "-c1", "-W2", f"{sub}.1"]
        assert subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0, (
            f"port v{short(port.instance_id)} cannot reach its gateway"
        )


@pytest.mark.root
@pytest.mark.parametrize("net", ["linux"], indirect=True)
def test_linux_a_port_keeps_its_mac_when_a_frame_elsewhere_claims_it(net: NetworkDriver) -> None:
    """A frame with a local instance's MAC as its source, from another port (as the instance's previous copy on
    another host sends over the VXLAN while it stops), must not take the MAC there: the instance, a silent
    server, would be unreachable until the entry aged out."""
    assert isinstance(net, LinuxNetworkDriver)
    nid, sub = _rid(), _subnet()
    net.ensure_network(nid, f"{sub}.1", 24)
    a, b = (PortSpec(_rid(), nid, f"{sub}.{n}", 24, f"{sub}.1") for n in (2, 3))
    for port in (a, b):
        net.ensure_port(port)
    group = "g" * 26
    table = render_ingress([(group, [])], {group: [a.address, b.address]})
    for port in (a, b):
        net.apply_ruleset("secgroups", table, port.instance_id)

    def ping_a() -> int:
        cmd = ["ip", "netns", "exec", net.port_prefix + b.instance_id, "ping", "-c1", "-W2", a.address]
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode

    assert ping_a() == 0  # b now holds a's MAC in its ARP cache: its next ping goes straight to that MAC
    claim = (
        "import socket\n"
        "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
        "s.bind(('eth0', 0))\n"
        f"s.send(b'\\xff' * 6 + bytes.fromhex('{_eth0_mac(net, a)}'.replace(':', '')) + b'\\x88\\xb5' + bytes(46))\n"
    )
    subprocess.run(["ip", "netns", "exec", net.port_prefix + b.instance_id, "python3", "-c", claim], check=True)
    assert ping_a() == 0, "a frame from port b claiming a's MAC cut a off"


def _eth0_mac(net: LinuxNetworkDriver, port: PortSpec) -> str:
    cmd = ["ip", "-n", net.port_prefix + port.instance_id, "-j", "link", "show", "eth0"]
    return str(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)[0]["address"])


def test_apply_ruleset_loads_in_the_hub_and_in_ports(net: NetworkDriver) -> None:
    nid, iid = _rid(), _rid()
    sub = _subnet()
    net.ensure_network(nid, f"{sub}.1", 24)
    net.ensure_port(PortSpec(iid, nid, f"{sub}.2", 24, f"{sub}.1"))
    net.apply_ruleset("secgroups", render_antispoof({iid: f"{sub}.2"}))
    net.apply_ruleset("secgroups", render_ingress([], {}), iid)
    net.apply_ruleset("secgroups", render_ingress([], {}), _rid())  # a port that does not exist: skipped
    net.apply_ruleset("secgroups", render_antispoof({}))  # a reload replaces the table
    if isinstance(net, LinuxNetworkDriver):
        hub = subprocess.run(
            ["ip", "netns", "exec", net.hub, "nft", "list", "table", "bridge", "cl_sg"], capture_output=True, text=True
        )
        assert hub.returncode == 0 and "p_" not in hub.stdout
        port = subprocess.run(
            ["ip", "netns", "exec", net.port_prefix + iid, "nft", "list", "table", "inet", "cl_sg"],
            capture_output=True,
            text=True,
        )
        assert "policy drop" in port.stdout
