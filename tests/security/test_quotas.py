"""Per-tenant quotas hold under attack: parallel creates never overshoot, one instance cannot take a host's memory,
and one tenant cannot take the address space the others launch in.

The races go through the real API and store of a running cloud: a burst of requests released at once by a barrier,
each on its own connection, with a tenant token. The store's guard is also raced directly on SQLite and PostgreSQL,
where a check-then-insert without the tenant lock lets several creates through past the limit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import cloudlet.domains  # noqa: F401  registers every kind and meter
from cloudlet.core import quota
from cloudlet.core.errors import Conflict
from cloudlet.core.kinds import TENANT
from cloudlet.core.records import Resource
from cloudlet.core.store import Store
from cloudlet.network.resource import NETWORK
from tests.conftest import CloudCLI, running_cloud

BURST = 12


def _burst(send: Any, n: int = BURST) -> list[Any]:
    """Runs send(i) in n threads released together."""
    barrier = threading.Barrier(n)

    def one(i: int) -> Any:
        barrier.wait()
        return send(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


# the guard itself, on both databases


def test_store_guard_never_overshoots(store: Store) -> None:
    spec = quota.TenantQuota(quota={"networks": 5}).dump()
    for tenant in ("racer", "other"):
        store.create(Resource(kind=TENANT, tenant=tenant, name=tenant, spec=spec))

    def create(tenant: str, i: int) -> str:
        try:
            res = Resource(kind=NETWORK, tenant=tenant, name=f"n-{i}", spec={})
            store.create(res, guard=quota.guard(tenant, {"networks": 1}))
        except Conflict as exc:
            return exc.message
        return "created"

    # two tenants at once: each gets exactly its own limit, neither waits the other out of its share
    results = _burst(lambda i: create(("racer", "other")[i % 2], i // 2), 2 * BURST)
    assert results.count("created") == 10, results
    refused = [r for r in results if r != "created"]
    assert all(r.startswith("quota exceeded: networks would be 6, the limit is 5;") for r in refused), refused
    for tenant in ("racer", "other"):
        assert len(store.list(NETWORK, tenant=tenant)) == 5


# through the API of a real cloud


@pytest.fixture(scope="module")
def qcloud() -> Iterator[CloudCLI]:
    with running_cloud() as cli:
        yield cli


def _tenant(cloud: CloudCLI, name: str, **limits: int) -> httpx.Client:
    token = cloud.run("tenant", "create", name).stdout.strip().splitlines()[-1]
    if limits:
        args = [a for k, v in limits.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        cloud.run("tenant", "quota", name, *args)
    return _client(cloud, token)


def _client(cloud: CloudCLI, token: str) -> httpx.Client:
    return httpx.Client(base_url=cloud.json("info")["api"], headers={"Authorization": f"Bearer {token}"}, timeout=120)


def _admin(cloud: CloudCLI) -> httpx.Client:
    return _client(cloud, (cloud.home / "admin.token").read_text().strip())


def _post_burst(client: httpx.Client, path: str, body: Any) -> list[httpx.Response]:
    """BURST POSTs at once, each on its own connection (the client's pool), body(i) for the i-th."""
    return _burst(lambda i: client.post(path, json=body(i)))


def _split(responses: list[httpx.Response], accepted: int) -> tuple[int, list[str]]:
    ok = sum(1 for r in responses if r.status_code == accepted)
    refused = [r for r in responses if r.status_code != accepted]
    assert all(r.status_code == 409 for r in refused), [(r.status_code, r.text) for r in refused]
    return ok, [r.json()["error"]["message"] for r in refused]


def test_parallel_instance_creates_stop_at_the_limit(qcloud: CloudCLI) -> None:
    client = _tenant(qcloud, "racer", instances=5)
    body = {"image": "busybox", "memory_mib": 32, "cpus": 0.1}
    ok, refused = _split(_post_burst(client, "/v1/instances", lambda i: {**body, "name": f"r-{i}"}), 202)
    assert ok == 5 and len(refused) == BURST - 5, refused
    assert all(m.startswith("quota exceeded: instances would be 6, the limit is 5") for m in refused), refused
    assert len(client.get("/v1/instances").json()["items"]) == 5
    usage = client.get("/v1/tenants/racer").json()["quota"]
    assert usage["instances"] == {"used": 5, "limit": 5} and usage["addresses"]["used"] == 5
    assert usage["vcpus"]["used"] == 0.5 and usage["memory_mib"]["used"] == 160


def test_parallel_memory_creates_stop_at_the_limit(qcloud: CloudCLI) -> None:
    client = _tenant(qcloud, "hungry", memory_mib=200)
    body = {"image": "busybox", "memory_mib": 64, "cpus": 0.1}
    ok, refused = _split(_post_burst(client, "/v1/instances", lambda i: {**body, "name": f"h-{i}"}), 202)
    assert ok == 3, refused  # 3 x 64 = 192 MiB; a fourth would be 256
    assert all(m.startswith("quota exceeded: memory_mib would be 256, the limit is 200") for m in refused), refused


def test_parallel_network_and_volume_creates_stop_at_the_limit(qcloud: CloudCLI) -> None:
    client = _tenant(qcloud, "netter", volumes=5)
    ok, refused = _split(_post_burst(client, "/v1/networks", lambda i: {"name": f"n-{i}"}), 201)
    assert ok == 5, refused  # the default limit
    assert all(m.startswith("quota exceeded: networks would be 6, the limit is 5") for m in refused), refused
    ok, refused = _split(_post_burst(client, "/v1/volumes", lambda i: {"name": f"v-{i}", "size_gib": 1}), 202)
    assert ok == 5, refused
    assert all(m.startswith("quota exceeded: volumes would be 6, the limit is 5") for m in refused), refused
    assert len(client.get("/v1/volumes").json()["items"]) == 5


def test_one_instance_cannot_take_the_host(qcloud: CloudCLI) -> None:
    host_memory = max(h["memory_mib"] for h in qcloud.json("host", "list"))
    client = _tenant(qcloud, "greedy")
    for memory in (host_memory, host_memory // 2 + 1):
        r = client.post("/v1/instances", json={"name": "all", "image": "busybox", "memory_mib": memory})
        assert r.status_code == 409 and f"memory {memory} MiB is more than" in r.json()["error"]["message"], r.text
    r = client.post("/v1/instances", json={"name": "cpus", "image": "busybox", "cpus": 64})
    assert r.status_code == 409 and "more than the largest host has" in r.json()["error"]["message"], r.text
    # the sum is bounded too
    qcloud.run("tenant", "quota", "greedy", "--memory-mib", "200", "--vcpus", "1")
    assert client.post("/v1/instances", json={"name": "g-1", "image": "busybox", "memory_mib": 128}).status_code == 202
    r = client.post("/v1/instances", json={"name": "g-2", "image": "busybox", "memory_mib": 128, "cpus": 0.5})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["message"].startswith(
        "quota exceeded: vcpus would be 1.5, the limit is 1; memory_mib would be 256, the limit is 200;"
    )
    assert [i["name"] for i in client.get("/v1/instances").json()["items"]] == ["g-1"]


def test_tenant_networks_are_bounded_and_leave_space_for_others(qcloud: CloudCLI) -> None:
    first = _tenant(qcloud, "first")
    r = first.post("/v1/networks", json={"name": "wide", "subnet": "10.240.0.0/12"})
    assert r.status_code == 422 and "between /16 and /29" in r.json()["error"]["message"], r.text
    for subnet in ("10.244.0.0/16", "10.244.0.0/19"):
        r = first.post("/v1/networks", json={"name": "wide", "subnet": subnet})
        assert r.status_code == 403 and "prefix from /20" in r.json()["error"]["message"], r.text
    made = [first.post("/v1/networks", json={"name": f"w-{i}", "subnet": f"10.244.{16 * i}.0/20"}) for i in range(5)]
    assert [r.status_code for r in made] == [201] * 5, [r.text for r in made]
    r = first.post("/v1/networks", json={"name": "w-5", "subnet": "10.244.80.0/20"})
    assert r.status_code == 409 and r.json()["error"]["message"].startswith("quota exceeded: networks"), r.text
    # launching on its default network would be a sixth network
    r = first.post("/v1/instances", json={"name": "x", "image": "busybox"})
    assert r.status_code == 409 and "quota exceeded: networks" in r.json()["error"]["message"], r.text
    # the admin may make a /16
    admin = _admin(qcloud)
    assert admin.post("/v1/networks", json={"name": "big", "subnet": "10.245.0.0/16"}).status_code == 201
    assert admin.delete("/v1/networks/big").status_code == 202
    # another tenant still gets a network and an instance on it
    second = _tenant(qcloud, "second")
    assert second.post("/v1/networks", json={"name": "mine"}).status_code == 201
    env = {"CLOUDLET_TOKEN": second.headers["Authorization"].removeprefix("Bearer ")}
    qcloud.run("launch", "busybox", "s-1", "--network", "mine", "--memory", "32", "--wait", env=env)
    assert qcloud.json("show", "s-1", env=env)["state"] == "running"


def test_tenant_quota_command_shows_and_sets_every_limit(qcloud: CloudCLI, tmp_path: Path) -> None:
    client = _tenant(qcloud, "quoted")
    view = qcloud.json(
        "tenant", "quota", "quoted", "--instances", "3", "--vcpus", "2", "--memory-mib", "512", "--networks", "2",
        "--addresses", "4",
    )  # fmt: skip
    limits = {k: v["limit"] for k, v in view["quota"].items()}
    assert (
        limits.items()
        >= {
            "instances": 3,
            "vcpus": 2,
            "memory_mib": 512,
            "networks": 2,
            "addresses": 4,
            "volumes": 100,
            "volume_gib": 1000,
            "snapshots": 500,
        }.items()
    )
    assert all(v["used"] == 0 for v in view["quota"].values())
    table = qcloud.run("tenant", "show", "quoted").stdout
    assert "memory_mib" in table and "512" in table
    assert qcloud.json("tenant", "show", "admin")["quota"]["instances"]["limit"] is None  # the admin: no limits
    # the tenant sees its own, not others', and cannot change them
    token = client.headers["Authorization"].removeprefix("Bearer ")
    assert qcloud.json("tenant", "show", "quoted", env={"CLOUDLET_TOKEN": token})["quota"]["networks"]["limit"] == 2
    assert client.get("/v1/tenants/racer").status_code == 403
    r = client.put("/v1/tenants/quoted/quota", json={"instances": 99})
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    denied = qcloud.run("tenant", "quota", "quoted", "--instances", "99", check=False, env={"CLOUDLET_TOKEN": token})
    assert denied.returncode == 1 and "admin" in denied.stderr
    # more networks than half the address space in /20s is refused
    assert _admin(qcloud).put("/v1/tenants/quoted/quota", json={"networks": 129}).status_code == 422
