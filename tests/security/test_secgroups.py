"""Attacks on security groups: another tenant's instance probing guessed addresses of a victim's network, and an
instance sending packets (IPv4 and ARP) with a neighbour's source address, which its groups would let in.

The forged packets are made by the host inside the attacker's netns (raw sockets, what an instance launched with
--net-raw may do; busybox has no tool that forges a source), and looked for by a sniffer on the receiver's eth0,
which sees whatever the bridge delivers, before the receiver's own filter. Each attack has a control that must
get through, so a probe that cannot see anything fails the test.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from cloudlet.network.netns import NETNS_DIR
from tests.conftest import CloudCLI
from tests.integration.test_secgroups import SERVE
from tests.security.test_instances import tenant_env

pytestmark = pytest.mark.root

SNIFF = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.settimeout(0.1)
print("ready", flush=True)
end, seen = time.time() + float(sys.argv[1]), set()
while time.time() < end:
    try:
        data = s.recv(65535)
    except TimeoutError:
        continue
    seen |= {m for m in sys.argv[2:] if m.encode() in data}
print(" ".join(sorted(seen)))
"""

FORGE = """
import socket, struct, sys
own, other, dst, other_mac = sys.argv[1:5]

def udp(src, marker):
    body = struct.pack("!HHHH", 40000, 9999, 8 + len(marker), 0) + marker
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head + body

raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # the source is ours to write
raw.sendto(udp(own, b"IP-OWN"), (dst, 0))
raw.sendto(udp(other, b"IP-FORGED"), (dst, 0))

eth = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
eth.bind(("eth0", 0x0806))
mac = eth.getsockname()[4]

def garp(ip, marker):  # a gratuitous ARP reply: "ip is at my MAC", padded with the marker
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, socket.inet_aton(ip), b"\\xff" * 6,
                      socket.inet_aton(ip))
    return b"\\xff" * 6 + mac + b"\\x08\\x06" + arp + marker

eth.send(garp(own, b"ARP-OWN"))
eth.send(garp(other, b"ARP-FORGED"))

def frame(src_mac, marker):  # our own address, sent to everyone from the given MAC
    return b"\\xff" * 6 + src_mac + b"\\x08\\x00" + udp(own, marker)

eth.send(frame(mac, b"L2-OWN"))
eth.send(frame(bytes.fromhex(other_mac.replace(":", "")), b"L2-FORGED"))  # would move its MAC to our port
"""


def in_netns(cloud: CloudCLI, iid: str) -> list[str]:
    return ["nsenter", f"--net={NETNS_DIR}/cl-{cloud.cloud_id()}-i-{iid}", sys.executable, "-c"]


@pytest.fixture(scope="module")
def tenants(cloud: CloudCLI) -> dict[str, Any]:
    mallory = tenant_env(cloud, "mallory")
    cloud.run("secgroup", "create", "db")
    cloud.run("secgroup", "create", "outsider")
    # db lets in anything from the members of default: v3 trusts v1's address, not v2's (in outsider only)
    cloud.run("secgroup", "rule", "add", "db", "all", "--source-group", "default")
    cloud.run("launch", "busybox", "v1", "--wait", "--memory", "32", "--command", SERVE)
    cloud.run(
        "launch", "busybox", "v2", "--wait", "--memory", "32", "--command", SERVE, "--net-raw", "--secgroup", "outsider"
    )
    cloud.run("launch", "busybox", "v3", "--wait", "--memory", "32", "--command", SERVE, "--secgroup", "db")
    for name in ("m1", "m2"):
        cloud.run("launch", "busybox", name, "--wait", "--memory", "32", "--command", SERVE, env=mallory)
    views = {n: cloud.json("show", n) for n in ("v1", "v2", "v3")}
    views |= {n: cloud.json("show", n, env=mallory) for n in ("m1", "m2")}
    return {"mallory": mallory, **views}


def _probe(cloud: CloudCLI, src: str, addrs: list[str], env: dict[str, str] | None = None) -> str:
    """Every address's port 80 asked from inside src in one exec; what came back, tagged by address."""
    script = "; ".join(
        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {a} 80 2>/dev/null | sed 's/^/{a} /'" for a in addrs
    )
    return cloud.run("exec", src, "--", "sh", "-c", script, check=False, env=env, timeout=120).stdout


def test_another_tenant_reaches_nothing_at_guessed_addresses(cloud: CloudCLI, tenants: dict[str, Any]) -> None:
    victim = tenants["v1"]["ip"]
    assert tenants["m1"]["ip"].rsplit(".", 1)[0] != victim.rsplit(".", 1)[0]  # its own network
    prefix = victim.rsplit(".", 1)[0]
    guesses = sorted({victim, tenants["v2"]["ip"], tenants["v3"]["ip"], *(f"{prefix}.{n}" for n in range(1, 7))})
    out = _probe(cloud, "m1", guesses, tenants["mallory"])
    assert "hi-" not in out and "HTTP" not in out, out
    # controls: the same probe works between mallory's own instances and between the victim's
    assert "hi-m2" in _probe(cloud, "m1", [tenants["m2"]["ip"]], tenants["mallory"])
    assert "hi-v3" in _probe(cloud, "v1", [tenants["v3"]["ip"]])


def test_another_tenant_cannot_name_the_victims_groups(cloud: CloudCLI, tenants: dict[str, Any]) -> None:
    env = tenants["mallory"]
    for args in (
        ("secgroup", "show", "db"),
        ("secgroup", "delete", "db"),
        ("secgroup", "rule", "add", "db", "tcp", "80", "--cidr", "0.0.0.0/0"),
        ("secgroup", "rule", "add", "default", "all", "--source-group", "db"),
        ("secgroup", "attach", "db", "m1"),
        ("launch", "busybox", "m3", "--secgroup", "db"),
    ):
        proc = cloud.run(*args, check=False, env=env)
        assert proc.returncode != 0 and "not found" in proc.stderr, (args, proc.stderr)
    assert {g["name"] for g in cloud.json("secgroup", "list", env=env)} == {"default"}
    assert cloud.json("secgroup", "show", "default", env=env)["members"] == ["m1", "m2"]


def test_forged_source_addresses_are_dropped_at_the_port(cloud: CloudCLI, tenants: dict[str, Any]) -> None:
    attacker, trusted, target = tenants["v2"], tenants["v1"], tenants["v3"]
    markers = ["IP-OWN", "IP-FORGED", "ARP-OWN", "ARP-FORGED", "L2-OWN", "L2-FORGED"]
    trusted_ns = f"cl-{cloud.cloud_id()}-i-{trusted['id']}"
    trusted_mac = subprocess.run(
        ["ip", "netns", "exec", trusted_ns, "cat", "/sys/class/net/eth0/address"], capture_output=True, text=True
    ).stdout.strip()
    assert len(trusted_mac) == 17, trusted_mac
    sniffer = subprocess.Popen(
        [*in_netns(cloud, target["id"]), SNIFF, "3", *markers], stdout=subprocess.PIPE, text=True
    )
    assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
    subprocess.run(
        [*in_netns(cloud, attacker["id"]), FORGE, attacker["ip"], trusted["ip"], target["ip"], trusted_mac],
        check=True,
        timeout=30,
    )
    seen = set(sniffer.communicate(timeout=30)[0].split())
    assert {"IP-OWN", "ARP-OWN", "L2-OWN"} <= seen, f"the controls did not arrive: {seen}"
    assert not {"IP-FORGED", "ARP-FORGED", "L2-FORGED"} & seen, f"forged packets reached the target: {seen}"


def test_an_instance_cannot_take_another_address(cloud: CloudCLI, tenants: dict[str, Any]) -> None:
    other = tenants["v1"]["ip"]
    for cmd in (f"ip addr add {other}/24 dev eth0", f"arping -c 1 -w 1 -s {other} -I eth0 {tenants['v3']['ip']}"):
        proc = cloud.run("exec", "v2", "--", "sh", "-c", cmd, check=False)
        assert proc.returncode != 0, (cmd, proc.stdout)
    # what a forged v1 address would have won: v3 lets v1 in, not v2
    assert "hi-v3" not in _probe(cloud, "v2", [tenants["v3"]["ip"]])
    assert "hi-v3" in _probe(cloud, "v1", [tenants["v3"]["ip"]])
