"""Backup policy verification without a cloud to restore into: the VerifyOverdue Warning (once per overdue
period, its threshold from config), the sweep of scratch records a crash left, and bad input (storage/verify.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from cloudlet.api.app import create_app
from cloudlet.compute.resource import InstanceStatus
from cloudlet.core.records import Resource
from cloudlet.resilience.sim import SimCloud
from cloudlet.storage.policies import POLICY, BackupPolicyReconciler, sources
from cloudlet.storage.resource import VOLUME, Attachment, PolicySpec, PolicyStatus, VolumeSpec
from cloudlet.storage.verify import TRIAL_LABEL, VERIFY_LABEL, Verifier, overdue_since
from tests.helpers import fake_cloud

DAY = 86400.0


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimCloud:
    monkeypatch.setenv("CLOUDLET_VERIFY_OVERDUE_S", "60")  # the threshold comes from config
    return fake_cloud(tmp_path)


def _policy(sim: SimCloud, name: str, age: float, verify: bool = True, **status: float) -> Resource:
    """A policy created age seconds ago that ran just now (its next run a day away)."""
    spec = PolicySpec(interval_seconds=int(DAY), volumes=["v"], selector="tier", verify=verify)
    res = Resource(
        kind=POLICY,
        tenant="admin",
        name=name,
        spec=spec.dump(),
        phase="active",
        created_at=time.time() - age,
        status=PolicyStatus(last_run=time.time(), **status).dump(),  # type: ignore[arg-type]
    )
    return sim.cloud.store.create(res)


def _overdue(sim: SimCloud, name: str) -> list[str]:
    return [
        e.message for e in sim.cloud.store.list_events(name=name) if (e.type, e.reason) == ("Warning", "VerifyOverdue")
    ]


def test_overdue_since_is_the_last_verified_restore_or_the_creation() -> None:
    assert overdue_since(True, None, 0.0, 8 * DAY, 7 * DAY) == 0.0  # never verified, created 8 days ago
    assert overdue_since(True, None, 2 * DAY, 8 * DAY, 7 * DAY) is None
    assert overdue_since(True, 0.5 * DAY, 0.0, 8 * DAY, 7 * DAY) == 0.5 * DAY
    assert overdue_since(True, 1.5 * DAY, 0.0, 8 * DAY, 7 * DAY) is None
    assert overdue_since(False, None, 0.0, 80 * DAY, 7 * DAY) is None


def test_an_overdue_policy_warns_once_per_overdue_period(sim: SimCloud) -> None:
    reconciler = BackupPolicyReconciler(sim.cloud)
    old = _policy(sim, "old", age=120)
    for _ in range(3):
        reconciler.reconcile(old.id)
    (message,) = _overdue(sim, "old")
    assert "never verified" in message, message
    # a verified restore 90 s ago (after the warning) is a new period, overdue too: one more Warning
    st = PolicyStatus.of(sim.cloud.store.get_by_id(old.id))  # type: ignore[arg-type]
    sim.cloud.store.update_status(old.id, status=st.model_copy(update={"last_verified_at": time.time() - 90}).dump())
    reconciler.reconcile(old.id)
    reconciler.reconcile(old.id)
    assert len(_overdue(sim, "old")) == 2 and "no verified restore since" in _overdue(sim, "old")[1]
    # recent enough, or not verifying: no Warning; the fresh one looks again when it would become overdue
    fresh = _policy(sim, "fresh", age=10)
    assert 45 < (reconciler.reconcile(fresh.id).requeue_after or 0) <= 61
    reconciler.reconcile(_policy(sim, "off", age=120, verify=False).id)
    assert not _overdue(sim, "fresh") and not _overdue(sim, "off")


def test_scratch_records_of_no_current_trial_are_deleted_and_never_backed_up(sim: SimCloud) -> None:
    """What a crash left midway: the policy's scratch records of a trial it no longer runs."""
    pol = _policy(sim, "pol", age=10)
    labels = {VERIFY_LABEL: "pol", TRIAL_LABEL: "01old", "tier": "x"}
    never = Attachment(instance_id="01never", instance="verify-01old", path="/verify")  # its instance never made
    left = Resource(
        kind=VOLUME,
        tenant="admin",
        name="verify-01old",
        spec=VolumeSpec(size_gib=1, attachment=never).dump(),
        labels=labels,
        owner=pol.id,
    )
    sim.cloud.store.create(left)
    assert sources(sim.cloud, pol) == ["v"]  # the selector matches it, yet no policy backs scratch records up
    BackupPolicyReconciler(sim.cloud).reconcile(pol.id)
    gone = sim.cloud.store.get_by_id(left.id)
    assert gone is None or gone.deleting


def test_a_scratch_label_a_tenant_sets_makes_no_policy_of_its_owner(sim: SimCloud) -> None:
    """A tenant may label its own records like scratch ones, and a stack's records are owned by the stack: the
    policy reconciler reached so must leave the stack alone (it wrote its status over the stack's, every second)."""
    stack = sim.cloud.store.create(
        Resource(kind="Stack", tenant="admin", name="s", spec={"document": {}}, status={"message": "mine"})
    )
    owned = Resource(kind=VOLUME, tenant="admin", name="s-v", spec=VolumeSpec(size_gib=1).dump(), owner=stack.id)
    owned.labels = {VERIFY_LABEL: "x", TRIAL_LABEL: "01x"}
    reconciler = BackupPolicyReconciler(sim.cloud)
    (key,) = reconciler.watches[VOLUME](sim.cloud.store.create(owned))
    assert reconciler.reconcile(key).requeue_after is None
    after = sim.cloud.store.get_by_id(stack.id)
    assert after is not None and after.status == {"message": "mine"}, after.status
    assert sim.cloud.store.get_by_id(owned.id) is not None


@pytest.fixture
def api(sim: SimCloud) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with TestClient(create_app(sim.cloud)) as client:
        yield client, {"Authorization": f"Bearer {sim.token}"}


def test_bad_input_is_a_clear_4xx(api: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = api
    body = {"name": "p", "interval_seconds": 60, "volumes": ["v"]}
    r = client.post("/v1/backup-policies", json={**body, "verify": "yes"}, headers=admin)
    assert r.status_code == 422 and "verify" in r.text, r.text
    assert client.post("/v1/backup-policies", json={**body, "verify": True}, headers=admin).status_code == 201
    view = client.get("/v1/backup-policies/p", headers=admin).json()
    assert view["verify"] is True and view["last_verified_at"] is None and view["last_verify"] is None
    r = client.post("/v1/backup-policies/p/verify", headers=admin)
    assert r.status_code == 409 and "no finished backup to verify" in r.json()["error"]["message"], r.text
    assert client.post("/v1/backup-policies/nope/verify", headers=admin).status_code == 404


def test_a_read_back_runs_off_the_reconcile_worker_one_per_tenant(sim: SimCloud) -> None:
    """A scratch instance's read-back may take 120 s: the policy's reconcile only polls it, and a tenant holds one
    of the READ_SLOTS at a time (its policies cannot take every reconcile worker, nor every slot)."""
    release, started = threading.Event(), []

    class SlowAgent:
        def exec_instance(self, iid: str, argv: list[str], timeout: float) -> dict[str, object]:
            started.append(iid)
            release.wait(30)
            return {"exit_code": 0, "stdout": "", "stderr": ""}

    sim.cloud.hosts = SimpleNamespace(agent=lambda host: SlowAgent())  # type: ignore[assignment]
    verifier = Verifier(sim.cloud)
    snap = Resource(kind="Snapshot", tenant="acme", name="verify-t", spec={})

    def scratch(tenant: str, name: str) -> Resource:
        spec = {"image": "busybox", "image_id": "i", "network": "n", "network_id": "n", "cpus": 1, "memory_mib": 32}
        status = InstanceStatus(state="running").dump()
        return Resource(kind="Instance", tenant=tenant, name=name, host="local", spec=spec, status=status)

    a1, a2, b1, c1 = scratch("acme", "a1"), scratch("acme", "a2"), scratch("bravo", "b1"), scratch("charlie", "c1")
    took = time.monotonic()
    assert [verifier._check(i, snap) for i in (a1, a2, b1, c1)] == [None] * 4
    assert time.monotonic() - took < 5, "a read-back blocked the reconcile"
    deadline = time.monotonic() + 10
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(started) == sorted([a1.id, b1.id])  # acme's second waits for its first; charlie for a slot
    release.set()
    deadline = time.monotonic() + 10
    while verifier._check(a1, snap) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert verifier._check(b1, snap) in (None, "")
    assert verifier._check(a2, snap) is None  # a slot is free now: it starts
    while len(started) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a2.id in started
