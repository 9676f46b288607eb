"""Metadata attacks against a real cloud: tenant acme runs a-1 (with a secret in its user-data) and a-2, tenant
bolt runs b-1; the others try to read a-1's data through 169.254.169.254.

- b-1 (another tenant) and a-2 (the same tenant) each get only their own documents, never a-1's secret.
- A connection from an address no instance has on that network, or from the hub itself, gets a 404 and no data;
  one forged with a-1's address from b-1's side never completes (the answer goes to a-1's namespace).
- X-Forwarded-For is refused; an IMDSv2 token works only for the instance it was given to.
- An oversize request head is refused and the server keeps serving; connections beyond the per-address cap are
  closed at once while other instances are served, and silent ones are closed after the idle timeout.

Traffic goes only to gateways and 169.254.169.254 from inside the cloud's own namespaces.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudlet.network.metadata import ADDRESS, HEAD_MAX, IDLE_TIMEOUT, PER_SOURCE, PORT
from cloudlet.network.netns import run_in_netns
from tests.conftest import CloudCLI
from tests.helpers import closed_by_server, extra_address

pytestmark = pytest.mark.root

SECRET = "s3cr3t-of-a1"


@dataclass
class Side:
    id: str
    ip: str
    netns: str
    gateway: str
    subnet: str


@dataclass
class Trio:
    cloud: CloudCLI
    a1: Side
    a2: Side
    b1: Side


def _side(cloud: CloudCLI, env: dict[str, str], name: str, *extra: str) -> Side:
    cloud.run("launch", "busybox", name, "--wait", "--memory", "32", *extra, env=env)
    view = cloud.json("show", name, env=env)
    net = cloud.json("network", "show", "default", env=env)
    return Side(view["id"], view["ip"], f"cl-{cloud.cloud_id()}-i-{view['id']}", net["gateway"], net["subnet"])


@pytest.fixture(scope="module")
def trio(cloud: CloudCLI, tmp_path_factory: pytest.TempPathFactory) -> Trio:
    envs = {
        t: {"CLOUDLET_TOKEN": cloud.run("tenant", "create", t).stdout.strip().splitlines()[-1]}
        for t in ("acme", "bolt")
    }
    script = Path(tmp_path_factory.mktemp("ud") / "a1.sh")
    script.write_text(f"#!/bin/sh\n# {SECRET}\n")
    a1 = _side(cloud, envs["acme"], "a-1", "--user-data", str(script), "--label", f"secret={SECRET}")
    return Trio(cloud, a1, _side(cloud, envs["acme"], "a-2"), _side(cloud, envs["bolt"], "b-1"))


def _connect(netns: str, source: str, dest: tuple[str, int] = (ADDRESS, 80), timeout: float = 3) -> socket.socket:
    return run_in_netns(netns, lambda: socket.create_connection(dest, timeout=timeout, source_address=(source, 0)))


def _recv_all(conn: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := conn.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _request(conn: socket.socket, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    lines = [f"{method} {path} HTTP/1.1", "Host: 169.254.169.254", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = _recv_all(conn)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def _get(side: Side, path: str, headers: dict[str, str] | None = None, source: str | None = None) -> tuple[int, str]:
    return _request(_connect(side.netns, source or side.ip), "GET", path, headers)


def _everything(side: Side) -> str:
    """Every document the side can read, walked from the listings."""
    seen, todo = [], ["/latest/"]
    while todo:
        path = todo.pop()
        status, body = _get(side, path)
        seen.append(body)
        if path.endswith("/") and status == 200:
            todo += [path + entry for entry in body.splitlines()]
    return "\n".join(seen)


def test_each_instance_reads_only_its_own(trio: Trio) -> None:
    a1_all = _everything(trio.a1)
    assert SECRET in a1_all and trio.a1.id in a1_all  # the positive control: a-1 sees its secret
    for other in (trio.a2, trio.b1):  # same tenant, other tenant
        assert _get(other, "/latest/meta-data/instance-id") == (200, other.id)
        everything = _everything(other)
        assert SECRET not in everything and trio.a1.id not in everything and trio.a1.ip not in everything
        assert _get(other, "/latest/user-data")[0] == 404


def test_unknown_source_and_the_hub_get_nothing(trio: Trio) -> None:
    b = trio.b1
    stranger = str(ipaddress.ip_network(b.subnet).broadcast_address - 1)
    with extra_address(b.netns, stranger):
        try:  # the bridge's anti-spoofing (security groups) drops it; were it let through, the server refuses
            assert _get(b, "/latest/meta-data/instance-id", source=stranger) == (404, "no metadata for this address")
        except TimeoutError:
            pass
    hub = f"cl-{trio.cloud.cloud_id()}-hub"
    conn = _connect(hub, "127.0.0.1", ("127.0.0.1", PORT))  # the server itself, from inside the hub
    assert _request(conn, "GET", "/latest/meta-data/instance-id") == (404, "no metadata for this address")
    for gateway in (trio.a1.gateway, b.gateway):
        try:  # the hub's input filter drops what comes to a gateway other than by its bridge
            conn = _connect(hub, gateway, (gateway, PORT), timeout=1)
        except TimeoutError:
            continue
        assert _request(conn, "GET", "/latest/meta-data/instance-id") == (404, "no metadata for this address")


def test_forged_source_never_gets_an_answer(trio: Trio) -> None:
    a, b = trio.a1, trio.b1
    with extra_address(b.netns, a.ip):
        try:
            conn = _connect(b.netns, a.ip, timeout=2)
        except OSError:
            return  # the handshake's answer went to a-1's namespace, which reset it: nothing reached b-1
        status, body = _request(conn, "GET", "/latest/meta-data/instance-id")
        assert a.id not in body and status != 200


def test_x_forwarded_for_is_refused_and_tokens_are_per_instance(trio: Trio) -> None:
    a, b = trio.a1, trio.b1
    assert _get(b, "/latest/meta-data/instance-id", {"X-Forwarded-For": a.ip})[0] == 403
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    status, token = _request(_connect(a.netns, a.ip), "PUT", "/latest/api/token", ttl)
    assert status == 200 and token
    assert _get(a, "/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": token}) == (200, a.id)
    assert _get(b, "/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": token})[0] == 401


def test_oversize_request_is_bounded(trio: Trio) -> None:
    b = trio.b1
    with _connect(b.netns, b.ip) as conn:
        conn.sendall(b"GET /latest/meta-data/ HTTP/1.1\r\nX-Pad: " + b"a" * (8 * HEAD_MAX))
        assert _recv_all(conn).startswith(b"HTTP/1.1 431 ")
    assert _get(b, "/latest/meta-data/instance-id") == (200, b.id)


def test_connections_are_capped(trio: Trio) -> None:
    a, b = trio.a1, trio.b1
    held = [_connect(b.netns, b.ip) for _ in range(PER_SOURCE)]
    extra = [_connect(b.netns, b.ip) for _ in range(16)]
    try:
        for conn in extra:
            assert closed_by_server(conn, 1.0), "a connection beyond the cap was kept open"
        started = time.monotonic()
        assert _get(a, "/latest/meta-data/instance-id") == (200, a.id)  # another instance is served meanwhile
        assert time.monotonic() - started < 2.0
        for conn in held:
            assert closed_by_server(conn, IDLE_TIMEOUT + 2), "a silent connection was kept past the idle timeout"
    finally:
        for conn in held + extra:
            conn.close()
    assert _get(b, "/latest/meta-data/instance-id") == (200, b.id)
