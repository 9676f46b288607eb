"""Labels and selectors on every kind, owner references collected with their owner, cron and selector policies:
through the in-process API on the fake drivers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloudlet.api.app import create_app
from cloudlet.core.labels import parse_selector
from cloudlet.core.records import FINALIZER, Resource
from cloudlet.resilience.sim import SimCloud
from cloudlet.storage.policies import next_run, sources
from cloudlet.storage.resource import PolicySpec
from tests.helpers import fake_cloud

Api = tuple[TestClient, dict[str, str], SimCloud]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    sim = fake_cloud(tmp_path)
    sim.start()
    with TestClient(create_app(sim.cloud)) as client:
        yield client, {"Authorization": f"Bearer {sim.token}"}, sim
    sim.stop()


def test_selector_syntax() -> None:
    sel = parse_selector("env=prod,tier,!canary,zone!=b")
    assert sel.matches({"env": "prod", "tier": "web", "zone": "a"})
    assert not sel.matches({"env": "prod", "tier": "web", "canary": "1"})
    assert not sel.matches({"env": "prod"})
    assert not sel.matches({"env": "prod", "tier": "x", "zone": "b"})
    assert not parse_selector("") and parse_selector(None).matches({})


def test_labels_at_create_edit_and_select(api: Api) -> None:
    client, admin, _ = api
    for name, labels in (
        ("front", {"tier": "web", "env": "prod"}),
        ("back", {"tier": "db", "env": "prod"}),
        ("scratch", {}),
    ):
        r = client.post("/v1/networks", json={"name": name, "labels": labels}, headers=admin)
        assert r.status_code == 201, r.text
        assert r.json()["labels"] == labels

    def names(selector: str) -> list[str]:
        r = client.get("/v1/networks", params={"selector": selector}, headers=admin)
        assert r.status_code == 200, r.text
        return sorted(n["name"] for n in r.json()["items"])

    assert names("env=prod") == ["back", "front"]
    assert names("tier!=db,env") == ["front"]
    assert names("!env") == ["default", "scratch"]
    r = client.patch("/v1/networks/front/labels", json={"set": {"canary": "yes"}, "remove": ["env"]}, headers=admin)
    assert r.status_code == 200 and r.json()["labels"] == {"tier": "web", "canary": "yes"}
    assert names("env=prod") == ["back"]
    # instances are listed from the render cache: selectors and label edits must reach it too
    client.post("/v1/instances", json={"name": "i-1", "image": "busybox", "labels": {"app": "shop"}}, headers=admin)
    client.post("/v1/instances", json={"name": "i-2", "image": "busybox"}, headers=admin)
    listed = client.get("/v1/instances", params={"selector": "app=shop"}, headers=admin).json()["items"]
    assert [i["name"] for i in listed] == ["i-1"]
    client.patch("/v1/instances/i-2/labels", json={"set": {"app": "shop"}}, headers=admin)
    listed = client.get("/v1/instances", params={"selector": "app=shop"}, headers=admin).json()["items"]
    assert [i["name"] for i in listed] == ["i-1", "i-2"]


@pytest.mark.parametrize(
    "body,status",
    [
        ({"name": "n1", "labels": {"Bad Key": "x"}}, 422),
        ({"name": "n1", "labels": {"k": "spaces not allowed"}}, 422),
        ({"name": "n1", "labels": {f"k{i}": "v" for i in range(65)}}, 422),
    ],
)
def test_bad_labels_are_refused(api: Api, body: dict[str, object], status: int) -> None:
    client, admin, _ = api
    r = client.post("/v1/networks", json=body, headers=admin)
    assert r.status_code == status and "label" in r.json()["error"]["message"], r.text


def test_bad_selector_and_unknown_kind(api: Api) -> None:
    client, admin, _ = api
    r = client.get("/v1/networks", params={"selector": "a==b"}, headers=admin)
    assert r.status_code == 422 and "a label selector is k=v, k!=v, k or !k" in r.json()["error"]["message"], r.text
    assert client.patch("/v1/gizmos/x/labels", json={"set": {}}, headers=admin).status_code in (404, 422)
    assert client.patch("/v1/networks/nope/labels", json={"set": {"a": "b"}}, headers=admin).status_code == 404


def test_owned_records_go_with_their_owner_deepest_first(api: Api) -> None:
    _, _, sim = api
    store = sim.cloud.store
    owner = store.create(
        Resource(
            kind="Network", tenant="admin", name="owner", spec={"subnet": "10.249.0.0/24", "gateway": "10.249.0.1"}
        )
    )
    child = store.create(
        Resource(kind="BackupTarget", tenant="admin", name="child", spec={}, owner=owner.id, finalizers=[FINALIZER])
    )
    grandchild = store.create(Resource(kind="BackupTarget", tenant="admin", name="grandchild", spec={}, owner=child.id))
    store.mark_deleted(owner.id)

    def collected() -> bool:  # the collector works in the background, grandchild first; its event comes last
        left = store.get_by_id(child.id)
        marked = store.get_by_id(grandchild.id) is None and (left is None or left.deleting)
        return marked and "Collected" in [e.reason for e in store.list_events("admin", "child")]

    deadline = time.monotonic() + 5
    while not collected() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.get_by_id(grandchild.id) is None  # no finalizer: gone at once
    left = store.get_by_id(child.id)
    assert left is not None and left.deleting  # marked; its finalizer still holds it until its cleanup
    reasons = [e.reason for e in store.list_events("admin", "child")]
    assert "Collected" in reasons


def test_policy_schedules_and_selectors(api: Api) -> None:
    client, admin, sim = api
    created = datetime(2026, 11, 24, 1, 30, tzinfo=UTC).timestamp()
    cron, every = PolicySpec(schedule="0 3 * * *"), PolicySpec(interval_seconds=60)
    nightly = next_run(cron, 0, created)
    assert datetime.fromtimestamp(nightly, UTC) == datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    assert next_run(cron, nightly, created) == nightly + 86400
    assert next_run(every, 1000.0, created) == 1060.0
    for body, needle in (
        ({"name": "p", "volumes": ["v"]}, "either an interval"),
        ({"name": "p", "volumes": ["v"], "interval_seconds": 60, "schedule": "0 3 * * *"}, "either an interval"),
        ({"name": "p", "schedule": "61 * * * *", "volumes": ["v"]}, "schedule"),
        ({"name": "p", "interval_seconds": 60}, "at least one"),
    ):
        r = client.post("/v1/backup-policies", json=body, headers=admin)
        assert r.status_code == 422 and needle in r.json()["error"]["message"], r.text
    client.post("/v1/volumes", json={"name": "db-data", "size_gib": 1, "labels": {"backup": "nightly"}}, headers=admin)
    client.post("/v1/volumes", json={"name": "tmp", "size_gib": 1}, headers=admin)
    r = client.post(
        "/v1/backup-policies",
        json={"name": "nightly", "schedule": "0 3 * * *", "selector": "backup=nightly", "volumes": []},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    policy = sim.cloud.store.get("BackupPolicy", "admin", "nightly")
    assert sources(sim.cloud, policy) == ["db-data"]


def test_a_backups_own_snapshot_goes_with_it(api: Api) -> None:
    client, admin, sim = api
    client.post("/v1/volumes", json={"name": "bv", "size_gib": 1}, headers=admin)
    target = {
        "name": "nowhere",
        "endpoint": "http://127.0.0.1:9",
        "bucket": "b-1",
        "access_key": "k",
        "secret_key": "s",
    }
    assert client.post("/v1/backup-targets", json=target, headers=admin).status_code == 201
    r = client.post("/v1/backups", json={"source": "bv", "name": "bv-1"}, headers=admin)
    assert r.status_code in (201, 202), r.text
    store = sim.cloud.store
    backup = store.get("Backup", "admin", "bv-1")
    (snap,) = [s for s in store.list("Snapshot", tenant="admin") if s.owner == backup.id]
    assert client.delete("/v1/backups/bv-1", headers=admin).status_code == 202
    deadline = time.monotonic() + 5
    while (left := store.get_by_id(snap.id)) is not None and not left.deleting and time.monotonic() < deadline:
        time.sleep(0.02)
    assert left is None or left.deleting  # collected with its owner
