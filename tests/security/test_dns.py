"""DNS attacks against a real cloud: tenant A and tenant B each run an instance on their default network; B's side
(its instance and addresses added in its instance's network namespace) tries to read A's names.

- B's instance asks for A's names, forward and reverse: nothing.
- A query sent on B's network with A's instance's address as its source: no answer, neither back on B's side nor
  at A's instance (where a reply to the forged source would land).
- A query from an address no instance has, on B's network: no answer (it used to see every tenant).
- TCP: more connections than the cap are refused at once, held ones are closed after the idle timeout, and UDP
  and a fresh TCP query are answered meanwhile and afterwards.

Traffic goes only to gateways and instances inside the cloud's own namespaces, or to 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from dataclasses import dataclass

import pytest
from dnslib import DNSRecord

from cloudlet.network.dns import TCP_IDLE_TIMEOUT, TCP_MAX_CONNECTIONS, TCP_PER_SOURCE
from cloudlet.network.netns import run_in_netns
from tests.conftest import CloudCLI
from tests.helpers import closed_by_server, extra_address

pytestmark = pytest.mark.root

SILENCE = 1.5  # seconds to wait for an answer that must not come


@dataclass
class Side:
    env: dict[str, str]
    name: str  # the instance's DNS name
    ip: str
    netns: str  # the instance's network namespace
    gateway: str
    subnet: str


@dataclass
class Pair:
    cloud: CloudCLI
    a: Side
    b: Side


def _side(cloud: CloudCLI, tenant: str, instance: str) -> Side:
    env = {"CLOUDLET_TOKEN": cloud.run("tenant", "create", tenant).stdout.strip().splitlines()[-1]}
    cloud.run("launch", "busybox", instance, "--wait", "--memory", "32", env=env)
    view = cloud.json("show", instance, env=env)
    net = cloud.json("network", "show", "default", env=env)
    netns = f"cl-{cloud.cloud_id()}-i-{view['id']}"
    return Side(env, view["dns_name"], view["ip"], netns, net["gateway"], net["subnet"])


@pytest.fixture(scope="module")
def pair(cloud: CloudCLI) -> Pair:
    return Pair(cloud, _side(cloud, "acme", "a-1"), _side(cloud, "bolt", "b-1"))


def _reverse(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


def _udp(netns: str, address: str, port: int = 0) -> socket.socket:
    """A UDP socket bound to (address, port) inside `netns`."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((address, port))
        return s

    return run_in_netns(netns, make)


def _receive(sock: socket.socket, timeout: float) -> DNSRecord | None:
    sock.settimeout(timeout)
    try:
        data, _ = sock.recvfrom(4096)
    except TimeoutError:
        return None
    return DNSRecord.parse(data)


def _ask(side: Side, name: str, qtype: str = "A", source: str | None = None) -> DNSRecord | None:
    """Asks side's gateway from inside side's instance namespace, from its own address or `source`."""
    with _udp(side.netns, source or side.ip) as s:
        s.sendto(DNSRecord.question(name, qtype).pack(), (side.gateway, 53))
        return _receive(s, SILENCE)


def _rdata(reply: DNSRecord | None) -> list[str]:
    assert reply is not None, "no answer"
    return [str(rr.rdata) for rr in reply.rr]


def test_instance_sees_only_its_tenants_names(pair: Pair) -> None:
    a, b = pair.a, pair.b
    assert _rdata(_ask(b, b.name)) == [b.ip]  # B's own name resolves: the path works
    for name, qtype in ((a.name, "A"), (_reverse(a.ip), "PTR")):
        reply = _ask(b, name, qtype)
        assert reply is not None and reply.header.rcode == 3 and not reply.rr, reply  # NXDOMAIN, nothing of A's
    # the same through the instance's own resolver (resolv.conf, search domain)
    out = pair.cloud.run("exec", "b-1", "--", "nslookup", a.name, check=False, env=b.env)
    assert a.ip not in out.stdout, out.stdout
    out = pair.cloud.run("exec", "b-1", "--", "nslookup", a.ip, check=False, env=b.env)
    assert a.name not in out.stdout, out.stdout
    assert b.ip in pair.cloud.run("exec", "b-1", "--", "nslookup", b.name, env=b.env).stdout


def test_spoofed_source_of_another_tenants_instance_gets_no_answer(pair: Pair) -> None:
    a, b = pair.a, pair.b
    with extra_address(b.netns, a.ip), _udp(b.netns, a.ip) as forged:
        port = forged.getsockname()[1]
        # where a reply to the forged source would be routed: A's instance
        with _udp(a.netns, a.ip, port) as victim:
            for name, qtype in ((a.name, "A"), (_reverse(a.ip), "PTR"), (b.name, "A")):
                forged.sendto(DNSRecord.question(name, qtype).pack(), (b.gateway, 53))
            for sock in (forged, victim):
                reply = _receive(sock, SILENCE)
                assert reply is None, f"a forged query was answered: {reply}"
    assert _rdata(_ask(b, b.name)) == [b.ip]  # and B's instance itself is still answered


def test_unknown_source_gets_no_answer(pair: Pair) -> None:
    b = pair.b
    stranger = str(ipaddress.ip_network(b.subnet).broadcast_address - 1)  # on B's network, no instance's
    assert stranger != b.ip
    with extra_address(b.netns, stranger):
        for name, qtype in ((pair.a.name, "A"), (b.name, "A"), (_reverse(b.ip), "PTR")):
            reply = _ask(b, name, qtype, source=stranger)
            assert reply is None, f"a query from {stranger} was answered: {reply}"


def test_operator_on_loopback_sees_every_tenant(pair: Pair) -> None:
    port = pair.cloud.json("info")["ports"]["dns@local"]
    for side in (pair.a, pair.b):
        reply = DNSRecord.parse(DNSRecord.question(side.name).send("127.0.0.1", port, timeout=2))
        assert _rdata(reply) == [side.ip]


def _connect(side: Side) -> socket.socket:
    return run_in_netns(
        side.netns, lambda: socket.create_connection((side.gateway, 53), timeout=5, source_address=(side.ip, 0))
    )


def _tcp_ask(conn: socket.socket, name: str) -> DNSRecord:
    q = DNSRecord.question(name).pack()
    conn.sendall(struct.pack("!H", len(q)) + q)
    data = b""
    while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
        chunk = conn.recv(4096)
        assert chunk, "closed without an answer"
        data += chunk
    return DNSRecord.parse(data[2:])


def test_tcp_connections_are_capped_and_idle_ones_closed(pair: Pair) -> None:
    """One instance holds its share of TCP slots (and tries for every slot there is): the rest are closed at
    once, UDP and the other tenant's TCP are served meanwhile, and the held ones are closed when idle."""
    a, b = pair.a, pair.b
    held = [_connect(b) for _ in range(TCP_PER_SOURCE)]
    extra = [_connect(b) for _ in range(TCP_MAX_CONNECTIONS)]
    opened = time.monotonic()
    try:
        for conn in extra:
            assert closed_by_server(conn, 1.0), "a connection beyond the cap was kept open"
        started = time.monotonic()
        assert _rdata(_ask(b, b.name)) == [b.ip]  # UDP is served while the instance holds its TCP slots
        with _connect(a) as other:
            assert _rdata(_tcp_ask(other, a.name)) == [a.ip], "another tenant was starved of DNS over TCP"
        assert time.monotonic() - started < 2.0
        for conn in held:
            assert closed_by_server(conn, opened + TCP_IDLE_TIMEOUT + 2 - time.monotonic()), "an idle one stayed"
        started = time.monotonic()
        with _connect(b) as fresh:
            assert _rdata(_tcp_ask(fresh, b.name)) == [b.ip]
        assert time.monotonic() - started < 1.0
    finally:
        for conn in held + extra:
            conn.close()
