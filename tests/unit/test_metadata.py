"""The metadata service without root: the path → document mapping, who is answered (gateway reached and source
address), IMDSv2 tokens, and the server's bounds on loopback sockets standing for a gateway and its instances."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cloudlet.compute.resource import INSTANCE
from cloudlet.core.records import Resource
from cloudlet.network import metadata
from cloudlet.network.instance_index import FRESH
from cloudlet.network.metadata import (
    HEAD_MAX,
    IDLE_TIMEOUT,
    PER_SOURCE,
    InstanceMetadata,
    MetadataService,
    answer,
    metadata_of,
)
from cloudlet.network.resource import NETWORK

NET_A = Resource(NETWORK, "acme", "net", {"subnet": "127.0.1.0/24", "gateway": "127.0.1.1"}, id="neta")
NET_B = Resource(NETWORK, "bolt", "net", {"subnet": "127.0.2.0/24", "gateway": "127.0.2.1"}, id="netb")
STACK = Resource(
    "Stack",
    "acme",
    "shop",
    {"document": {}, "flags": {"readonly": "true", "bad/key": "x"}},
    status={"membership": {"web": []}},
)


def _instance(tenant: str, name: str, net: Resource, ip: str, owner: str | None = None, **spec: Any) -> Resource:
    return Resource(
        INSTANCE,
        tenant,
        name,
        {
            "image": "busybox",
            "image_id": "img",
            "network": net.name,
            "network_id": net.id,
            "cpus": 1,
            "memory_mib": 32,
            **spec,
        },
        status={"ip": ip, "dns_name": f"{name}.{net.name}.zone-a.cloudlet"},
        zone="zone-a",
        labels={"role": "web", "cloudlet.io/stack": "shop"},
        owner=owner,
    )


class Records:
    """Just what the metadata service reads of an agent's cache."""

    def __init__(self, *records: Resource) -> None:
        self.records = list(records)

    def list(self, kind: str | None = None, **_: Any) -> list[Resource]:
        return [r for r in self.records if r.kind == kind]

    def get_by_id(self, rid: str) -> Resource | None:
        return next((r for r in self.records if r.id == rid), None)


A1 = _instance("acme", "a-1", NET_A, "127.0.1.10", owner=STACK.id, user_data="#!/bin/sh\necho hi\n")
B1 = _instance("bolt", "b-1", NET_B, "127.0.2.10")


@pytest.fixture
def records() -> Records:
    return Records(NET_A, NET_B, STACK, A1, B1)


def test_paths_map_to_documents(records: Records) -> None:
    md = metadata_of(records, A1)  # type: ignore[arg-type]
    assert md.instance_id == A1.id and md.local_ipv4 == "127.0.1.10" and md.hostname == "a-1.net.zone-a.cloudlet"
    assert md.tags == {"role": "web"}  # keys with '/' are not shown, as EC2's
    assert md.flags == {"readonly": "true"} and md.stack == "shop"
    ok = {
        "/": "latest",
        "/latest/meta-data/instance-id": A1.id,
        "/2009-04-04/meta-data/instance-id": A1.id,  # cloud-init asks dated versions first
        "/latest/meta-data/hostname": "a-1.net.zone-a.cloudlet",
        "/latest/meta-data/local-hostname": "a-1.net.zone-a.cloudlet",
        "/latest/meta-data/local-ipv4": "127.0.1.10",
        "/latest/meta-data/ami-id": "busybox",
        "/latest/meta-data/placement/availability-zone": "zone-a",
        "/latest/meta-data/placement/": "availability-zone",
        "/latest/meta-data/tags/instance": "role",
        "/latest/meta-data/tags/instance/role": "web",
        "/latest/meta-data/flags/readonly": "true",
        "/latest/meta-data/stack/name": "shop",
        "/latest/user-data": "#!/bin/sh\necho hi\n",
        "/latest/": "dynamic/\nmeta-data/\nuser-data",
    }
    for path, body in ok.items():
        assert answer(md, path) == metadata.Answer(200, body), path
    listing = answer(md, "/latest/meta-data/").body.splitlines()
    assert listing == [
        "ami-id",
        "flags/",
        "hostname",
        "instance-id",
        "local-hostname",
        "local-ipv4",
        "placement/",
        "stack/",
        "tags/",
    ]
    for path in listing:  # every listed path answers
        assert answer(md, f"/latest/meta-data/{path}").status == 200
    doc = answer(md, "/latest/dynamic/instance-identity/document")
    assert doc.content_type == "application/json" and json.loads(doc.body)["instanceId"] == A1.id
    for path in ("/latest/meta-data/public-ipv4", "/latest/meta-data/nope", "/v9/meta-data/", "/latest/user-data/x"):
        assert answer(md, path).status == 404, path
    bare = InstanceMetadata("i", "n", "h", "10.0.0.2", "zone-a", "img", "t", public_ipv4="198.18.0.9")
    assert answer(bare, "/latest/user-data").status == 404  # no user-data
    assert answer(bare, "/latest/meta-data/public-ipv4").body == "198.18.0.9"
    assert "flags/" not in answer(bare, "/latest/meta-data/").body


def test_each_instance_sees_only_its_own(records: Records) -> None:
    svc = MetadataService(records)  # type: ignore[arg-type]
    get = lambda local, source, **h: svc.handle("GET", "/latest/meta-data/instance-id", h, local, source)[0]
    assert get("127.0.1.1", "127.0.1.10").body == A1.id
    assert get("127.0.2.1", "127.0.2.10").body == B1.id
    assert get("127.0.2.1", "127.0.1.10").status == 404  # acme's address arriving on bolt's network: forged
    assert get("127.0.1.1", "127.0.1.1").status == 404  # the gateway itself
    assert get("127.0.0.1", "127.0.1.10").status == 404  # not a gateway
    assert get("127.0.1.1", "127.0.1.99").status == 404  # nobody's address
    assert get("127.0.1.1", "127.0.1.10", **{"x-forwarded-for": "127.0.1.10"}).status == 403
    records.records.append(_instance("acme", "a-2", NET_A, "127.0.1.11"))
    time.sleep(FRESH)
    assert get("127.0.1.1", "127.0.1.11").body != A1.id  # a new instance is answered at once, as itself


def test_tokens_are_bound_to_the_instance(records: Records) -> None:
    svc = MetadataService(records)  # type: ignore[arg-type]
    ttl = {"x-aws-ec2-metadata-token-ttl-seconds": "60"}
    ans, extra = svc.handle("PUT", "/latest/api/token", ttl, "127.0.1.1", "127.0.1.10")
    assert ans.status == 200 and extra == {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    token = {"x-aws-ec2-metadata-token": ans.body}
    path = "/latest/meta-data/instance-id"
    assert svc.handle("GET", path, token, "127.0.1.1", "127.0.1.10")[0].body == A1.id
    assert svc.handle("GET", path, token, "127.0.2.1", "127.0.2.10")[0].status == 401  # another's token
    assert svc.handle("GET", path, {"x-aws-ec2-metadata-token": "1.x"}, "127.0.1.1", "127.0.1.10")[0].status == 401
    for bad in ("0", "21601", "x", "٣"):
        header = {"x-aws-ec2-metadata-token-ttl-seconds": bad}
        assert svc.handle("PUT", "/latest/api/token", header, "127.0.1.1", "127.0.1.10")[0].status == 400
    assert svc.handle("POST", path, {}, "127.0.1.1", "127.0.1.10")[0].status == 405


@pytest.fixture
def server(records: Records) -> Iterator[tuple[str, int]]:
    svc = MetadataService(records)  # type: ignore[arg-type]
    sock = metadata._listen("127.0.1.1", 0)
    svc.serve(sock)
    yield sock.getsockname()
    svc.stop()


def _connect(server: tuple[str, int], source: str = "127.0.1.10") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(IDLE_TIMEOUT + 2)
    s.connect(server)
    return s


def _recv_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _get(server: tuple[str, int], path: str, source: str = "127.0.1.10", extra: str = "") -> bytes:
    with _connect(server, source) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
        return _recv_all(s)


def test_server_answers_keep_alive_and_bounds(server: tuple[str, int]) -> None:
    assert _get(server, "/latest/meta-data/instance-id").endswith(A1.id.encode())
    assert b" 404 " in _get(server, "/latest/meta-data/instance-id", source="127.0.1.99")
    assert b" 403 " in _get(server, "/latest/meta-data/", extra="X-Forwarded-For: 1.2.3.4\r\n")
    with _connect(server) as s:  # two requests on one connection
        s.sendall(b"GET /latest/meta-data/local-ipv4 HTTP/1.1\r\n\r\n")
        assert s.recv(4096).endswith(b"127.0.1.10")
        s.sendall(b"\r\nGET /latest/meta-data/hostname HTTP/1.1\r\nConnection: close\r\n\r\n")  # a stray CRLF first
        assert _recv_all(s).endswith(b"a-1.net.zone-a.cloudlet")
    with _connect(server) as s:  # an oversize head: 431, closed, nothing more read
        s.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * (4 * HEAD_MAX))
        assert _recv_all(s).startswith(b"HTTP/1.1 431 ")
    with _connect(server) as s:
        s.sendall(b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
        assert _recv_all(s).startswith(b"HTTP/1.1 413 ")


def test_connections_are_capped_per_source_and_time_out(server: tuple[str, int]) -> None:
    held = [_connect(server) for _ in range(PER_SOURCE)]
    time.sleep(0.2)
    extra = _connect(server)
    extra.settimeout(1.0)
    assert extra.recv(1) == b""  # closed at once, not after the idle timeout
    extra.close()
    assert _get(server, "/", source="127.0.1.11").startswith(b"HTTP/1.1 404 ")  # another address is served
    started = time.monotonic()
    assert all(s.recv(1) == b"" for s in held)  # silent connections are closed after the idle timeout
    assert time.monotonic() - started < IDLE_TIMEOUT + 1
    for s in held:
        s.close()
    assert _get(server, "/latest/meta-data/instance-id").endswith(A1.id.encode())


def test_one_tenant_holds_at_most_half_of_the_connections(records: Records) -> None:
    b2 = _instance("bolt", "b-2", NET_A, "127.0.1.20")  # another tenant behind the same gateway (loopback has one)
    records.records += [_instance("acme", "a-2", NET_A, "127.0.1.11"), b2]
    svc = MetadataService(records, max_connections=2 * PER_SOURCE)  # type: ignore[arg-type]
    sock = metadata._listen("127.0.1.1", 0)
    svc.serve(sock)
    server = sock.getsockname()
    try:
        held = [_connect(server, "127.0.1.10") for _ in range(PER_SOURCE)]  # acme's half
        time.sleep(0.2)
        other = _connect(server, "127.0.1.11")  # acme's other instance: over its tenant's half
        other.settimeout(1.0)  # closed at once, not after the idle timeout
        assert other.recv(1) == b""
        other.close()
        assert _get(server, "/latest/meta-data/instance-id", source="127.0.1.20").endswith(b2.id.encode())
        for s in held:
            s.close()
    finally:
        svc.stop()
