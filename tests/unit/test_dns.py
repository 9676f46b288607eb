"""The DNS server on loopback sockets (no root): views decided by the address a query arrived at and its source,
and TCP connections bounded in number and idle time without holding up UDP."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import DNSRecord

from cloudlet.compute.resource import INSTANCE
from cloudlet.core.records import Resource
from cloudlet.network.dns import EVERY_TENANT, DNSService, Resolver, View, _Endpoint, _sockets
from cloudlet.network.instance_index import FRESH
from cloudlet.network.resource import NETWORK

# two tenants' networks whose gateways and instances sit on loopback addresses, so real sockets can play them
NET_A = Resource(NETWORK, "acme", "net", {"subnet": "127.0.1.0/24", "gateway": "127.0.1.1"}, id="neta")
NET_B = Resource(NETWORK, "bolt", "net", {"subnet": "127.0.2.0/24", "gateway": "127.0.2.1"}, id="netb")


def _instance(tenant: str, name: str, net: Resource, ip: str) -> Resource:
    spec = {
        "image": "busybox",
        "image_id": "img",
        "network": net.name,
        "network_id": net.id,
        "cpus": 1,
        "memory_mib": 32,
    }
    return Resource(INSTANCE, tenant, name, spec, status={"ip": ip}, zone="zone-a")


class Records:
    """Just what the resolver reads of an agent's cache."""

    def __init__(self, *records: Resource) -> None:
        self.records = list(records)

    def list(self, kind: str | None = None, **_: Any) -> list[Resource]:
        return [r for r in self.records if r.kind == kind]


@pytest.fixture
def records() -> Records:
    return Records(
        NET_A, NET_B, _instance("acme", "a-1", NET_A, "127.0.1.10"), _instance("bolt", "b-1", NET_B, "127.0.2.10")
    )


def test_view_comes_from_the_gateway_and_needs_an_instance_of_its_network(records: Records) -> None:
    r = Resolver(records)  # type: ignore[arg-type]
    assert r.view_on("127.0.1.1", "127.0.1.10") == View("acme")
    assert r.view_on("127.0.2.1", "127.0.2.10") == View("bolt")
    assert r.view_on("127.0.2.1", "127.0.1.10") is None  # acme's address on bolt's network: forged
    assert r.view_on("127.0.1.1", "127.0.1.99") is None  # nobody's address
    assert r.view_on("127.0.0.1", "127.0.1.10") is None  # not a gateway
    records.records.append(_instance("acme", "a-2", NET_A, "127.0.1.11"))
    time.sleep(FRESH)  # it starts a little after its record arrives
    assert r.view_on("127.0.1.1", "127.0.1.11") == View("acme")  # a new instance is answered at once


def test_a_tenant_sees_only_its_names_the_operator_all(records: Records) -> None:
    r = Resolver(records)  # type: ignore[arg-type]
    assert r.lookup("b-1.net.zone-a.cloudlet.", "A", View("acme")) == ("NXDOMAIN", [])
    assert r.lookup("b-1.net.zone-a.cloudlet.", "A", View("bolt")) == ("NOERROR", ["127.0.2.10"])
    assert r.lookup("10.2.0.127.in-addr.arpa.", "PTR", View("acme")) == ("NXDOMAIN", [])
    assert r.lookup("10.2.0.127.in-addr.arpa.", "PTR", EVERY_TENANT) == ("NOERROR", ["b-1.net.zone-a.cloudlet."])
    assert r.lookup("a-1.net.zone-a.cloudlet.", "A", EVERY_TENANT) == ("NOERROR", ["127.0.1.10"])


def _udp(server: tuple[str, int], name: str, source: str = "127.0.0.1", timeout: float = 1.0) -> DNSRecord | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(DNSRecord.question(name).pack(), server)
        try:
            data, sender = s.recvfrom(4096)
        except TimeoutError:
            return None
        assert sender == server  # answered from the address the query went to
        return DNSRecord.parse(data)


def _tcp_query(conn: socket.socket, name: str) -> DNSRecord:
    q = DNSRecord.question(name).pack()
    conn.sendall(struct.pack("!H", len(q)) + q)
    head = conn.recv(2)
    (n,) = struct.unpack("!H", head)
    data = b""
    while len(data) < n:
        data += conn.recv(n - len(data))
    return DNSRecord.parse(data)


def _ips(reply: DNSRecord | None) -> list[str]:
    assert reply is not None, "no answer"
    return [str(rr.rdata) for rr in reply.rr]


def test_gateway_endpoint_answers_only_instances_of_its_network(records: Records) -> None:
    r = Resolver(records)  # type: ignore[arg-type]
    udp, tcp = _sockets("127.0.1.1", 0)
    endpoint = _Endpoint(r, udp, tcp, r.view_on, 4, 1.0)
    server = udp.getsockname()
    try:
        assert _ips(_udp(server, "a-1.net.zone-a.cloudlet", source="127.0.1.10")) == ["127.0.1.10"]
        assert _udp(server, "a-1.net.zone-a.cloudlet", source="127.0.2.10") is None  # bolt's instance
        assert _udp(server, "a-1.net.zone-a.cloudlet", source="127.0.1.99") is None  # unknown source
        with socket.create_connection(server, timeout=2, source_address=("127.0.1.10", 0)) as conn:
            assert _ips(_tcp_query(conn, "a-1.net.zone-a.cloudlet")) == ["127.0.1.10"]
        with socket.create_connection(server, timeout=2, source_address=("127.0.1.99", 0)) as conn:
            assert conn.recv(2) == b""  # closed at once
    finally:
        endpoint.stop()


@pytest.fixture
def service(records: Records) -> Iterator[DNSService]:
    dns = DNSService(Resolver(records), 0, tcp_max_connections=3, tcp_idle_timeout=1.0)  # type: ignore[arg-type]
    yield dns
    dns.stop()


def test_tcp_connections_are_capped_and_closed_when_idle(service: DNSService) -> None:
    server = ("127.0.0.1", service.port)
    held = [socket.create_connection(server, timeout=5) for _ in range(3)]
    try:
        started = time.monotonic()
        with socket.create_connection(server, timeout=5) as extra:
            assert extra.recv(2) == b""  # beyond the cap: closed at once
        assert time.monotonic() - started < 2  # not after the idle timeout (3 s) or the socket's (5 s)
        assert _ips(_udp(server, "a-1.net.zone-a.cloudlet")) == ["127.0.1.10"]  # UDP unaffected
        assert _ips(_tcp_query(held[0], "b-1.net.zone-a.cloudlet")) == ["127.0.2.10"]  # a query resets the clock
        for conn in held:
            assert conn.recv(2) == b""  # the server closes each after the idle timeout
        assert time.monotonic() - started < 3
        with socket.create_connection(server, timeout=5) as conn:  # slots are free again
            assert _ips(_tcp_query(conn, "a-1.net.zone-a.cloudlet")) == ["127.0.1.10"]
    finally:
        for conn in held:
            conn.close()


def test_a_trickled_query_does_not_extend_the_timeout(service: DNSService) -> None:
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as conn:
        started = time.monotonic()
        q = DNSRecord.question("a-1.net.zone-a.cloudlet").pack()
        for byte in (struct.pack("!H", len(q)) + q)[:8]:
            try:
                conn.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.3)
        assert conn.recv(2) == b""
        assert time.monotonic() - started < 3
