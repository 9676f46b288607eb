"""Backup targets as an attack: a tenant may not make the agent send data (or requests) to the host or its private
neighbours, and a target that serves garbage cannot make a restore retry forever or write without bound."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from cloudlet.api.app import create_app
from cloudlet.core.errors import BadRequest, Forbidden
from cloudlet.core.records import Resource
from cloudlet.storage import backups, endpoints
from cloudlet.storage.resource import BACKUP_TARGET, TargetSpec
from tests.conftest import CloudCLI
from tests.helpers import fake_cloud
from tests.s3 import s3_server

ASK = "cloudlet backup endpoint allow"


class Listener:
    """A TCP listener on a loopback address that counts the connections and bytes it gets."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.settimeout(0.5)
            try:
                self.received += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 500 no\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    got = Listener()
    yield got
    got.close()


# the address rules and the allow list, in process


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "fe80::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # CGNAT
        "fc00::1",  # ULA
        "fec0::1",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "192.0.2.1",  # documentation
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert endpoints.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_pass(address: str) -> None:
    assert endpoints.refusal(ipaddress.ip_address(address)) is None


def test_endpoints_are_compared_as_origins() -> None:
    assert endpoints.origin("http://S3.Example.com") == "http://s3.example.com:80"
    assert endpoints.origin("https://s3.example.com:443/") == "https://s3.example.com:443"
    for bad in (
        "http://[::1]:9000",
        "ftp://x",
        "http://user:pw@host",
        "http://host/path",
        "http://host?x=1",
        "http://ho_st",
        "http://",
    ):
        with pytest.raises(BadRequest):
            endpoints.origin(bad)


Api = tuple[TestClient, dict[str, str], dict[str, str], Any]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    sim = fake_cloud(tmp_path)
    sim.start()
    with TestClient(create_app(sim.cloud)) as client:
        admin = {"Authorization": f"Bearer {sim.token}"}
        token = client.post("/v1/tenants", json={"name": "acme"}, headers=admin).json()["token"]
        yield client, admin, {"Authorization": f"Bearer {token}"}, sim
    sim.stop()


def _target(endpoint: str, name: str = "t") -> dict[str, str]:
    return {"name": name, "endpoint": endpoint, "bucket": "bkt", "access_key": "k", "secret_key": "s"}


def test_only_the_admin_manages_the_allow_list(api: Api) -> None:
    client, admin, tenant, _ = api
    r = client.post("/v1/backup-endpoints", json={"url": "http://127.0.0.1:9000", "private": True}, headers=tenant)
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    r = client.post("/v1/backup-endpoints", json={"url": "http://127.0.0.1:9000", "private": True}, headers=admin)
    assert r.status_code == 201, r.text
    name = r.json()["name"]
    assert client.delete(f"/v1/backup-endpoints/{name}", headers=tenant).status_code == 403
    listed = client.get("/v1/backup-endpoints", headers=tenant).json()["items"]  # tenants see what they may use
    assert [(e["url"], e["private"]) for e in listed] == [("http://127.0.0.1:9000", True)]
    # an IP literal that is not public is useless without --private: refused with the hint
    r = client.post("/v1/backup-endpoints", json={"url": "http://10.0.0.5:9000"}, headers=admin)
    assert r.status_code == 403 and "--private" in r.json()["error"]["message"]


def test_tenant_targets_need_an_allowed_public_endpoint(api: Api) -> None:
    client, admin, tenant, sim = api
    for url in ("http://127.0.0.1:9000", "http://169.254.169.254", "http://10.1.2.3:80"):
        r = client.post("/v1/backup-targets", json=_target(url), headers=tenant)
        assert r.status_code == 403 and ASK in r.json()["error"]["message"], (url, r.text)
    # IPv6 address literals are not taken at all (the schema says so): a name that resolves to one is checked
    assert client.post("/v1/backup-targets", json=_target("http://[::1]:9000"), headers=tenant).status_code == 422
    # allowed, but a name that resolves to loopback is still refused without --private
    assert client.post("/v1/backup-endpoints", json={"url": "http://localhost:9000"}, headers=admin).status_code == 201
    r = client.post("/v1/backup-targets", json=_target("http://localhost:9000"), headers=tenant)
    message = r.json()["error"]["message"]
    assert r.status_code == 403 and "loopback" in message and "--private" in message, r.text
    # the admin's own targets may point anywhere
    assert client.post("/v1/backup-targets", json=_target("http://127.0.0.1:9"), headers=admin).status_code == 201
    # with --private the tenant may, and removing the entry revokes the target it allowed
    url = "http://127.0.0.1:9"
    entry = client.post("/v1/backup-endpoints", json={"url": url, "private": True}, headers=admin).json()
    assert client.post("/v1/backup-targets", json=_target(url, "mine"), headers=tenant).status_code == 201
    target = sim.cloud.store.get(BACKUP_TARGET, "acme", "mine")
    assert TargetSpec.of(target).allowed_by is not None and endpoints.unusable(target) is None
    assert client.delete(f"/v1/backup-endpoints/{entry['name']}", headers=admin).status_code == 200
    target = sim.cloud.store.get(BACKUP_TARGET, "acme", "mine")
    assert ASK in str(endpoints.unusable(target))
    client.post("/v1/volumes", json={"name": "v", "size_gib": 1}, headers=tenant)
    r = client.post("/v1/backups", json={"source": "v", "target": "mine"}, headers=tenant)
    assert r.status_code == 403 and "no longer allowed" in r.json()["error"]["message"], r.text
    # allowing it again gives the target back
    client.post("/v1/backup-endpoints", json={"url": url, "private": True}, headers=admin)
    assert endpoints.unusable(sim.cloud.store.get(BACKUP_TARGET, "acme", "mine")) is None


def _tenant_target(endpoint: str, private: bool = False) -> Resource:
    spec = TargetSpec(
        endpoint=endpoint, bucket="bkt", access_key="k", secret_key="s", allowed_by="entry", private=private
    )
    return Resource(kind=BACKUP_TARGET, tenant="acme", name="t", spec=spec.dump())


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Fake answers for names under .test: each lookup of a name takes the next answer (the last one repeats);
    IP literals resolve as usual."""
    answers: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(host, str) and host.endswith(".test"):
            queue = answers[host]
            addresses = queue.pop(0) if len(queue) > 1 else queue[0]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_dns_rebinding_is_caught_when_the_connection_is_opened(dns: dict[str, list[list[str]]]) -> None:
    """The name passes the first check (a public address), then resolves to loopback: the connection the S3 client
    opens is checked again and refused before anything is sent."""
    got = Listener()
    try:
        dns["rebind.test"] = [["93.184.216.34"], ["127.0.0.1"]]
        remote = backups._Remote(_tenant_target(f"http://rebind.test:{got.port}"))  # the first check passes
        with pytest.raises(Forbidden, match="resolves to 127.0.0.1, a loopback address"):
            remote.get("cloudlet/acme/x/manifest.json", "the manifest")
        # one name with a public and a loopback address is refused outright
        dns["both.test"] = [["93.184.216.34", "127.0.0.1"]]
        with pytest.raises(Forbidden, match="loopback"):
            backups._Remote(_tenant_target(f"http://both.test:{got.port}"))
        time.sleep(0.3)
        assert got.connections == 0 and got.received == b""
    finally:
        got.close()


def test_connections_dial_the_address_that_was_checked(
    dns: dict[str, list[list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pinning: the socket goes to the checked address, the Host header keeps the name. 127.0.0.2 stands in for a
    public address here (no traffic may leave the machine)."""
    real = endpoints.refusal
    monkeypatch.setattr(endpoints, "refusal", lambda ip: None if str(ip) == "127.0.0.2" else real(ip))
    checked, other = Listener("127.0.0.2"), Listener("127.0.0.1")
    try:
        dns["pinned.test"] = [["127.0.0.2"]]
        remote = backups._Remote(_tenant_target(f"http://pinned.test:{checked.port}"))
        with pytest.raises(ClientError):
            remote.get("k", "the object")  # the listener answers 500
        assert checked.connections >= 1 and f"Host: pinned.test:{checked.port}".encode() in checked.received
        assert other.connections == 0
    finally:
        checked.close()
        other.close()


def test_private_entries_and_admin_targets_are_not_pinned() -> None:
    assert endpoints.pin_for(_tenant_target("http://127.0.0.1:9", private=True)) is None
    admin = Resource(kind=BACKUP_TARGET, tenant="admin", name="t", spec=_tenant_target("http://127.0.0.1:9").spec)
    assert endpoints.pin_for(admin) is None
    assert endpoints.pin_for(_tenant_target("http://127.0.0.1:9")) is not None


# against a real cloud


def _tenant(cloud: CloudCLI, name: str) -> dict[str, str]:
    return {"CLOUDLET_TOKEN": cloud.run("tenant", "create", name).stdout.strip().splitlines()[-1]}


def _add_target(
    cloud: CloudCLI, name: str, endpoint: str, env: dict[str, str] | None = None, check: bool = True
) -> Any:
    args = ["--bucket", "cl-sec", "--access-key", "test", "--secret-key", "test"]
    return cloud.run("backup", "target", "add", name, "--endpoint", endpoint, *args, env=env, check=check)


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with s3_server() as url:
        yield url


def _s3(url: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )


@pytest.mark.root
def test_a_tenant_cannot_send_backups_to_the_host(cloud: CloudCLI, listener: Listener) -> None:
    env = _tenant(cloud, "mallory")
    for i, url in enumerate(
        (
            f"http://127.0.0.1:{listener.port}",
            f"http://[::1]:{listener.port}",
            "http://169.254.169.254",
            "http://10.11.12.13:9000",
            f"http://localhost:{listener.port}",
        )
    ):
        proc = _add_target(cloud, f"t{i}", url, env=env, check=False)
        refusal = "http://" if "[" in url else ASK  # an IPv6 literal fails the endpoint's pattern, named in full
        assert proc.returncode == 1 and refusal in proc.stderr, (url, proc.stderr)
    # the allow list is the admin's
    proc = cloud.run(
        "backup", "endpoint", "allow", f"http://127.0.0.1:{listener.port}", "--private", env=env, check=False
    )
    assert proc.returncode == 1 and "admin" in proc.stderr
    # allowed by name, but the name resolves to loopback: still refused
    cloud.run("backup", "endpoint", "allow", f"http://localhost:{listener.port}")
    proc = _add_target(cloud, "local", f"http://localhost:{listener.port}", env=env, check=False)
    assert proc.returncode == 1 and "loopback" in proc.stderr and "--private" in proc.stderr, proc.stderr
    # allowed with --private, then revoked: the target is refused from then on
    cloud.run("backup", "endpoint", "allow", f"http://127.0.0.1:{listener.port}", "--private")
    _add_target(cloud, "granted", f"http://127.0.0.1:{listener.port}", env=env)
    cloud.run("backup", "endpoint", "remove", f"http://127.0.0.1:{listener.port}")
    cloud.run("volume", "create", "mv", "--size", "1", env=env)
    proc = cloud.run("backup", "create", "mv", "--target", "granted", env=env, check=False)
    assert proc.returncode == 1 and "no longer allowed" in proc.stderr and ASK in proc.stderr, proc.stderr
    time.sleep(0.5)
    assert listener.connections == 0 and listener.received == b""


@pytest.fixture(scope="module")
def victim(cloud: CloudCLI, s3: str) -> tuple[dict[str, str], str, str]:
    """A tenant with a volume backup at the test S3 server (allowed by the admin with --private): (env, backup
    name, object prefix)."""
    env = _tenant(cloud, "victim")
    cloud.run("backup", "endpoint", "allow", s3, "--private")
    _add_target(cloud, "s3", s3, env=env)
    cloud.run("volume", "create", "vv", "--size", "1", env=env)
    backup = cloud.json("backup", "create", "vv", "--name", "vv-1", env=env)
    assert backup["state"] == "ready", backup
    return env, "vv-1", f"cloudlet/victim/{backup['id']}/"


def _restore_fails(cloud: CloudCLI, env: dict[str, str], backup: str, into: str, needle: str) -> None:
    t = time.monotonic()
    proc = cloud.run("backup", "restore", backup, into, env=env, check=False, timeout=90)
    assert proc.returncode == 1 and needle in proc.stderr, proc.stderr
    assert time.monotonic() - t < 60
    view = cloud.json("volume", "show", into, env=env)
    assert view["state"] == "failed" and needle in view["message"], view


@pytest.mark.root
def test_restores_of_broken_backups_fail_for_good(cloud: CloudCLI, s3: str, victim: Any) -> None:
    env, backup, prefix = victim
    client = _s3(s3)
    manifest = client.get_object(Bucket="cl-sec", Key=prefix + "manifest.json")["Body"].read()
    data = client.get_object(Bucket="cl-sec", Key=prefix + "data.tar.zst")["Body"].read()
    try:
        client.put_object(Bucket="cl-sec", Key=prefix + "manifest.json", Body=b"{not json")
        _restore_fails(cloud, env, backup, "r-garbled", "garbled")
        client.put_object(Bucket="cl-sec", Key=prefix + "manifest.json", Body=b" " * (2 << 20))
        _restore_fails(cloud, env, backup, "r-huge", "larger than the 1048576 bytes")
        client.put_object(Bucket="cl-sec", Key=prefix + "manifest.json", Body=manifest)
        client.delete_object(Bucket="cl-sec", Key=prefix + "data.tar.zst")
        _restore_fails(cloud, env, backup, "r-missing", "missing")
        client.put_object(Bucket="cl-sec", Key=prefix + "data.tar.zst", Body=data + b"\0" * 4096)
        _restore_fails(cloud, env, backup, "r-long", "not the")
        client.put_object(Bucket="cl-sec", Key=prefix + "data.tar.zst", Body=data)
        cloud.run("backup", "restore", backup, "r-good", env=env)  # and the real one still restores
    finally:
        client.put_object(Bucket="cl-sec", Key=prefix + "manifest.json", Body=manifest)
        client.put_object(Bucket="cl-sec", Key=prefix + "data.tar.zst", Body=data)
    assert cloud.run("storage", "gc", "--check", check=False).returncode == 0


@pytest.mark.root
def test_aborted_multipart_uploads_go_with_the_backup(cloud: CloudCLI, s3: str, victim: Any) -> None:
    env, backup, prefix = victim
    client = _s3(s3)
    upload = client.create_multipart_upload(Bucket="cl-sec", Key=prefix + "data.tar.zst")
    client.upload_part(
        Bucket="cl-sec", Key=prefix + "data.tar.zst", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
    )
    assert client.list_multipart_uploads(Bucket="cl-sec", Prefix=prefix).get("Uploads")
    cloud.run("backup", "delete", backup, env=env)
    deadline = time.monotonic() + 20
    while client.list_multipart_uploads(Bucket="cl-sec", Prefix=prefix).get("Uploads"):
        assert time.monotonic() < deadline, "the aborted upload is still there"
        time.sleep(0.2)
    # the objects go in the same cleanup, which may finish a moment after the uploads were aborted
    while client.list_objects_v2(Bucket="cl-sec", Prefix=prefix).get("Contents"):
        assert time.monotonic() < deadline, "the backup's objects are still there"
        time.sleep(0.2)
