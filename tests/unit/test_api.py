"""The HTTP API in-process on the fake drivers: auth, tenant isolation, clear 4xx for bad input."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloudlet.api.app import create_app
from tests.helpers import fake_cloud


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    sim = fake_cloud(tmp_path)
    sim.start()
    with TestClient(create_app(sim.cloud)) as client:
        yield client, {"Authorization": f"Bearer {sim.token}"}
    sim.stop()


def _error(resp: object) -> str:
    body = resp.json()  # type: ignore[attr-defined]
    assert set(body["error"]) == {"code", "message"}
    return str(body["error"]["message"])


def test_requires_token(api: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = api
    assert client.get("/v1/instances").status_code == 401
    r = client.get("/v1/instances", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "unknown token" in _error(r)


def test_tenants_are_isolated(api: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = api
    assert client.post("/v1/instances", json={"name": "web-1", "image": "busybox"}, headers=admin).status_code == 202
    tok = client.post("/v1/tenants", json={"name": "acme"}, headers=admin).json()["token"]
    acme = {"Authorization": f"Bearer {tok}"}
    assert client.get("/v1/instances", headers=acme).json()["items"] == []
    for method, path in (
        ("GET", "/v1/instances/web-1"),
        ("DELETE", "/v1/instances/web-1"),
        ("POST", "/v1/instances/web-1/actions"),
    ):
        r = client.request(method, path, headers=acme, json={"action": "stop"} if method == "POST" else None)
        assert r.status_code == 404, (method, path, r.text)
    assert client.post("/v1/tenants", json={"name": "evil"}, headers=acme).status_code == 403
    # the tenant can use the same name in its own space
    assert client.post("/v1/instances", json={"name": "web-1", "image": "busybox"}, headers=acme).status_code == 202


@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"name": "Bad_Name", "image": "busybox"}, 400, "invalid instance name"),
        ({"name": "a", "image": "nope"}, 404, "image 'nope' not found"),
        ({"name": "a", "image": "busybox", "network": "nonet"}, 404, "network 'nonet' not found"),
        ({"name": "a", "image": "busybox", "memory_mib": 1000000}, 409, "more than the largest host"),
        ({"name": "a", "image": "busybox", "cpus": -1}, 422, "cpus"),
        ({"name": "a", "image": "busybox", "restart": "sometimes"}, 422, "restart"),
        ({"name": "a", "image": "busybox", "colour": "red"}, 422, "colour"),
    ],
)
def test_bad_input_says_what_to_fix(
    api: tuple[TestClient, dict[str, str]], body: dict[str, object], status: int, needle: str
) -> None:
    client, admin = api
    r = client.post("/v1/instances", json=body, headers=admin)
    assert r.status_code == status, r.text
    assert needle in _error(r)


def test_malformed_json_and_duplicates(api: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = api
    r = client.post("/v1/instances", content=b"{not json", headers={**admin, "Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in _error(r)
    assert client.post("/v1/instances", json={"name": "d", "image": "busybox"}, headers=admin).status_code == 202
    r = client.post("/v1/instances", json={"name": "d", "image": "busybox"}, headers=admin)
    assert r.status_code == 409 and "already exists" in _error(r)


def test_network_rules(api: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = api
    assert client.post("/v1/networks", json={"name": "n1", "subnet": "10.240.8.0/24"}, headers=admin).status_code == 201
    r = client.post("/v1/networks", json={"name": "n2", "subnet": "10.240.8.128/25"}, headers=admin)
    assert r.status_code == 409 and "overlaps" in _error(r)
    r = client.post("/v1/networks", json={"name": "n3", "subnet": "192.168.1.0/24"}, headers=admin)
    assert r.status_code == 422 and "10.240.0.0/12" in _error(r)
    assert (
        client.post("/v1/instances", json={"name": "u", "image": "busybox", "network": "n1"}, headers=admin).status_code
        == 202
    )
    r = client.delete("/v1/networks/n1", headers=admin)
    assert r.status_code == 409 and "used by instances u" in _error(r)


def test_openapi_is_served(api: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = api
    spec = client.get("/openapi.json").json()
    assert "/v1/instances" in spec["paths"] and "/v1/networks/{name}" in spec["paths"]


def test_instance_list_pages(api: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = api
    for i in range(3):
        client.post("/v1/instances", json={"name": f"p-{i}", "image": "busybox"}, headers=admin)
    first = client.get("/v1/instances?limit=2", headers=admin).json()
    assert [i["name"] for i in first["items"]] == ["p-0", "p-1"] and first["next"]
    rest = client.get(f"/v1/instances?limit=2&after={first['next']}", headers=admin).json()
    assert [i["name"] for i in rest["items"]] == ["p-2"] and rest["next"] is None


def test_instance_list_is_never_stale(api: tuple[TestClient, dict[str, str]]) -> None:
    """The list's render cache must follow every write: status, spec, deletion."""
    client, admin = api
    client.post("/v1/instances", json={"name": "s-1", "image": "busybox"}, headers=admin)
    store = client.app.state.cloud.store  # type: ignore[attr-defined]

    def listed() -> dict[str, dict[str, object]]:
        return {i["name"]: i for i in client.get("/v1/instances", headers=admin).json()["items"]}

    deadline = time.monotonic() + 10
    while listed()["s-1"]["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.01)  # let the reconciler finish, so the marker below is the last status write
    rid = listed()["s-1"]["id"]
    store.update_status(rid, status={"state": "marker-1"}, phase="marker-1")
    assert listed()["s-1"]["state"] == "marker-1"
    assert client.post("/v1/instances/s-1/actions", json={"action": "stop"}, headers=admin).status_code == 202
    assert listed()["s-1"]["desired_state"] == "stopped"
    client.delete("/v1/instances/s-1", headers=admin)
    deadline = time.monotonic() + 10
    while "s-1" in listed() and time.monotonic() < deadline:
        time.sleep(0.01)  # the agent cleans up, then the record goes
    assert "s-1" not in listed()
