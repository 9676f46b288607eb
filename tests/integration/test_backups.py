"""Backups to a real S3-compatible server process, restored and compared by file hashes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from cloudlet.core.store import Store
from cloudlet.storage.policies import POLICY
from cloudlet.storage.resource import PolicyStatus
from cloudlet.storage.verify import VERIFY_LABEL
from tests.conftest import CloudCLI
from tests.helpers import wait_for
from tests.s3 import s3_server

pytestmark = pytest.mark.root
HASH = "find /data -type f | sort | xargs sha256sum"


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture(scope="module")
def bcloud(cloud: CloudCLI, s3: str) -> CloudCLI:
    cloud.run(
        "backup",
        "target",
        "add",
        "offsite",
        "--endpoint",
        s3,
        "--bucket",
        "cl-backups",
        "--access-key",
        "test",
        "--secret-key",
        "test",
    )
    return cloud


def _s3(url: str) -> object:
    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )


def test_instance_backup_restores_into_a_new_instance(bcloud: CloudCLI) -> None:
    bcloud.run("launch", "busybox", "b-1", "--wait")
    bcloud.run(
        "exec",
        "b-1",
        "--",
        "sh",
        "-c",
        "mkdir -p /data/sub && head -c 3000000 /dev/urandom > /data/blob && echo hi > /data/sub/x",
    )
    want = bcloud.run("exec", "b-1", "--", "sh", "-c", HASH).stdout
    backup = bcloud.json("backup", "create", "b-1", "--name", "b1-full")
    assert backup["state"] == "ready" and len(backup["sha256"]) == 64 and backup["compressed_bytes"] > 3_000_000
    bcloud.run("backup", "restore", "b1-full", "b1-restored")
    bcloud.run("launch", "--from-snapshot", "b1-restored", "b-2", "--wait")
    assert bcloud.run("exec", "b-2", "--", "sh", "-c", HASH).stdout == want


def test_volume_backup_restores_into_a_volume(bcloud: CloudCLI, s3: str) -> None:
    bcloud.run("volume", "create", "bv", "--size", "1")
    bcloud.run("volume", "attach", "bv", "b-1", "--path", "/data")
    bcloud.run("exec", "b-1", "--", "sh", "-c", "head -c 1000000 /dev/urandom > /data/v && echo x > /data/w")
    want = bcloud.run("exec", "b-1", "--", "sh", "-c", HASH).stdout
    bcloud.run("backup", "create", "bv", "--name", "bv-1")
    bcloud.run("backup", "restore", "bv-1", "bv-copy")
    bcloud.run("volume", "detach", "bv")
    bcloud.run("volume", "attach", "bv-copy", "b-1", "--path", "/data")
    assert bcloud.run("exec", "b-1", "--", "sh", "-c", HASH).stdout == want
    bcloud.run("volume", "detach", "bv-copy")
    keys = [o["Key"] for o in _s3(s3).list_objects_v2(Bucket="cl-backups")["Contents"]]  # type: ignore[attr-defined]
    assert any(k.endswith("manifest.json") for k in keys) and any(k.endswith("data.tar.zst") for k in keys)


def test_corrupt_backup_is_refused_and_leaves_nothing(bcloud: CloudCLI, s3: str) -> None:
    backup = bcloud.json("backup", "show", "bv-1")
    client = _s3(s3)
    key = next(
        o["Key"]
        for o in client.list_objects_v2(Bucket="cl-backups")["Contents"]  # type: ignore[attr-defined]
        if backup["id"] in o["Key"] and o["Key"].endswith("data.tar.zst")
    )
    data = client.get_object(Bucket="cl-backups", Key=key)["Body"].read()  # type: ignore[attr-defined]
    client.put_object(Bucket="cl-backups", Key=key, Body=data[:-10] + b"0123456789")  # type: ignore[attr-defined]
    proc = bcloud.run("backup", "restore", "bv-1", "bv-bad", check=False)
    assert proc.returncode == 1 and "corrupt" in proc.stderr
    assert bcloud.run("storage", "gc", "--check", check=False).returncode == 0


def test_delete_removes_objects_and_bad_input(bcloud: CloudCLI, s3: str) -> None:
    bid = bcloud.json("backup", "show", "b1-full")["id"]
    bcloud.run("backup", "delete", "b1-full")
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        objs = _s3(s3).list_objects_v2(Bucket="cl-backups").get("Contents", [])  # type: ignore[attr-defined]
        if not any(bid in o["Key"] for o in objs):
            break
        time.sleep(0.1)
    assert not any(bid in o["Key"] for o in objs)
    for args, needle in (
        (["backup", "create", "ghost"], "no volume or instance named"),
        (["backup", "restore", "nope", "x"], "not found"),
        (
            [
                "backup",
                "target",
                "add",
                "t2",
                "--endpoint",
                "ftp://x",
                "--bucket",
                "b",
                "--access-key",
                "a",
                "--secret-key",
                "s",
            ],
            "endpoint",
        ),
    ):
        proc = bcloud.run(*args, check=False)
        assert proc.returncode == 1 and needle in proc.stderr, (args, proc.stderr)


def test_policy_backs_up_on_schedule_and_expires_old_backups(bcloud: CloudCLI, s3: str) -> None:
    import time

    bcloud.run("volume", "create", "pv", "--size", "1")
    bcloud.run("backup", "policy", "create", "every-sec", "--every", "1s", "--volume", "pv", "--keep-last", "2")
    deadline = time.monotonic() + 40
    made: list[str] = []
    most_ready = 0
    while time.monotonic() < deadline and len(made) < 6:
        items = [b for b in bcloud.json("backup", "list") if b["name"].startswith("every-sec-pv")]
        made += sorted(b["name"] for b in items if b["name"] not in made)
        most_ready = max(most_ready, sum(b["state"] == "ready" for b in items))
        time.sleep(0.5)
    bcloud.run("backup", "policy", "delete", "every-sec")
    assert len(made) >= 6, made  # it kept running on schedule
    # keep-last 2, plus the one that finished since the policy last ran
    assert 2 <= most_ready <= 3, most_ready
    left = {b["name"] for b in bcloud.json("backup", "list")}
    assert not left & set(made[:3]), (made, left)  # the oldest were expired, from the target too
    snaps = [s["name"] for s in bcloud.json("snapshot", "list") if s["source"] == "pv"]
    assert len(snaps) <= 2, snaps  # shipped backups' snapshots are dropped (in-flight ones may remain)


def test_kill9_during_backup_is_resumed(bcloud: CloudCLI, s3: str) -> None:
    import time

    bcloud.run("volume", "create", "big", "--size", "2")
    bcloud.run("volume", "attach", "big", "b-1", "--path", "/big")
    bcloud.run("exec", "b-1", "--", "sh", "-c", "head -c 150000000 /dev/urandom > /big/blob", timeout=120)
    bcloud.run("volume", "detach", "big")
    bcloud.run("backup", "create", "big", "--name", "big-1", "--no-wait")
    deadline = time.monotonic() + 20
    while bcloud.json("backup", "show", "big-1")["state"] != "uploading" and time.monotonic() < deadline:
        time.sleep(0.02)
    bcloud.kill9("agent")  # mid-upload: the agent is the one streaming
    bcloud.run("up")
    deadline = time.monotonic() + 120
    while (state := bcloud.json("backup", "show", "big-1")["state"]) not in ("ready", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state == "ready"
    # the upload the kill cut short was aborted before the retry, not left holding its parts
    prefix = f"cloudlet/admin/{bcloud.json('backup', 'show', 'big-1')['id']}/"
    assert not _s3(s3).list_multipart_uploads(Bucket="cl-backups", Prefix=prefix).get("Uploads")  # type: ignore[attr-defined]
    bcloud.run("backup", "restore", "big-1", "big-back")
    assert bcloud.json("volume", "show", "big-back")["state"] == "ready"
    assert bcloud.run("storage", "gc", "--check", check=False).returncode == 0


def test_a_tenant_backs_up_to_an_endpoint_the_admin_allowed(bcloud: CloudCLI, s3: str) -> None:
    token = bcloud.run("tenant", "create", "acme").stdout.strip().splitlines()[-1]
    env = {"CLOUDLET_TOKEN": token}
    add = ["backup", "target", "add", "mine", "--endpoint", s3, "--bucket", "acme-b", "--access-key", "test"]
    proc = bcloud.run(*add, "--secret-key", "test", env=env, check=False)
    assert proc.returncode == 1 and "cloudlet backup endpoint allow" in proc.stderr, proc.stderr
    # the test server listens on loopback: the admin allows it with private addresses permitted
    bcloud.run("backup", "endpoint", "allow", s3, "--private")
    assert [e["url"] for e in bcloud.json("backup", "endpoint", "list", env=env)] == [s3]
    bcloud.run(*add, "--secret-key", "test", env=env)
    bcloud.run("volume", "create", "tv", "--size", "1", env=env)
    assert bcloud.json("backup", "create", "tv", "--name", "tv-1", env=env)["state"] == "ready"
    bcloud.run("backup", "restore", "tv-1", "tv-back", env=env)
    assert bcloud.json("volume", "show", "tv-back", env=env)["state"] == "ready"


def _verified(cli: CloudCLI, policy: str, timeout: float = 90) -> dict[str, Any]:
    """The policy once a verification finished."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = next(p for p in cli.json("backup", "policy", "list") if p["name"] == policy)
        if view["last_verify"] is not None and not view["verifying"]:
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.3)


def _scratch_left(cli: CloudCLI) -> list[str]:
    """Records a verification made that are still there."""
    return [
        f"{kind} {r['name']}"
        for kind in ("volume", "snapshot")
        for r in cli.json(kind, "list")
        if "cloudlet.io/verify-of" in (r.get("labels") or {})
    ] + [f"instance {r['name']}" for r in cli.json("list") if "cloudlet.io/verify-of" in (r.get("labels") or {})]


def _events(cli: CloudCLI, name: str) -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"]) for e in cli.json("events", name, "--limit", "200")]


def test_a_verifying_policy_restores_boots_and_checks_each_backup(bcloud: CloudCLI) -> None:
    bcloud.run("launch", "busybox", "vfy-web", "--health", "http:80/", "--health-interval", "0.5", "--wait")
    bcloud.run("volume", "create", "vfy-v", "--size", "1")
    bcloud.run("volume", "attach", "vfy-v", "vfy-web", "--path", "/data")
    bcloud.run("exec", "vfy-web", "--", "sh", "-c", "head -c 1000000 /dev/urandom > /data/blob && echo x > /data/y")
    create = ["backup", "policy", "create", "vfy", "--every", "1h", "--volume", "vfy-v", "--instance", "vfy-web"]
    bcloud.run(*create, "--target", "offsite", "--keep-last", "3", "--verify")
    t = time.monotonic()
    view = _verified(bcloud, "vfy")
    took = time.monotonic() - t
    assert view["verify"] and view["last_verify"]["ok"], view
    assert view["last_verify"]["backups"] == 2 and view["last_verified_at"] == view["last_verify"]["at"]
    events = _events(bcloud, "vfy")
    assert any(e[:2] == ("Normal", "Verified") for e in events), events
    # each trial really booted a scratch instance (the instance backup's with its source's health check)
    events = bcloud.json("events", "--limit", "500")
    booted = {e["name"] for e in events if e["reason"] == "Scheduled" and e["name"].startswith("verify-")}
    healthy = {e["name"] for e in events if e["reason"] == "Healthy" and e["name"].startswith("verify-")}
    assert len(booted) == 2 and len(healthy) == 1 and healthy < booted, (booted, healthy)
    wait_for(lambda: not _scratch_left(bcloud), 30, "the scratch records to go")
    table = bcloud.run("dr", "status").stdout.splitlines()
    assert any(line.split()[:2] == ["vfy", "on"] and line.split()[-1] == "ok" for line in table), table
    assert bcloud.json("dr", "status")["backup_policies"][0]["result"] == "ok"
    print(f"verification of 2 backups: {took:.1f} s")


def test_a_verification_cut_short_by_a_crash_is_finished_after_restart(bcloud: CloudCLI) -> None:
    before = next(p for p in bcloud.json("backup", "policy", "list") if p["name"] == "vfy")["last_verify"]
    store = Store(f"sqlite:///{bcloud.home / 'state.db'}")  # read directly: the kill must come mid-trial
    try:
        bcloud.run("backup", "policy", "verify", "vfy")
        wait_for(lambda: any(VERIFY_LABEL in r.labels for r in store.list(tenant="admin")), 30, "a scratch record")
        bcloud.kill9("cloudletd")
        assert PolicyStatus.of(store.get(POLICY, "admin", "vfy")).verifying is not None
    finally:
        store.close()
    bcloud.run("up")
    view = _verified(bcloud, "vfy")
    assert view["last_verify"]["ok"] and view["last_verify"]["at"] > before["at"], view["last_verify"]
    wait_for(lambda: not _scratch_left(bcloud), 30, "the scratch records to go")


def test_a_corrupt_backup_fails_verification_with_a_warning(bcloud: CloudCLI, s3: str) -> None:
    before = next(p for p in bcloud.json("backup", "policy", "list") if p["name"] == "vfy")
    newest = max(
        (b for b in bcloud.json("backup", "list") if b["source"] == "vfy-v" and b["name"].startswith("vfy-")),
        key=lambda b: b["created_at"],
    )
    client = _s3(s3)
    key = f"cloudlet/admin/{newest['id']}/data.tar.zst"
    data = client.get_object(Bucket="cl-backups", Key=key)["Body"].read()  # type: ignore[attr-defined]
    client.put_object(Bucket="cl-backups", Key=key, Body=data[:-10] + b"0123456789")  # type: ignore[attr-defined]
    proc = bcloud.run("backup", "policy", "verify", "vfy", "--wait", check=False)
    assert proc.returncode == 1 and "corrupt" in proc.stderr and newest["name"] in proc.stderr, proc.stderr
    view = next(p for p in bcloud.json("backup", "policy", "list") if p["name"] == "vfy")
    assert not view["last_verify"]["ok"] and view["last_verified_at"] == before["last_verified_at"]
    assert any(e[:2] == ("Warning", "VerifyFailed") and "corrupt" in e[2] for e in _events(bcloud, "vfy"))
    wait_for(lambda: not _scratch_left(bcloud), 30, "the scratch records to go")
    status = bcloud.json("dr", "status")["backup_policies"]
    assert status[0]["result"].startswith("failed: ") and "corrupt" in status[0]["result"], status
    bcloud.run("backup", "policy", "create", "vfy-none", "--every", "1h", "--volume", "ghost-vol", "--verify")
    for args, needle in (
        (["backup", "policy", "verify", "ghost"], "not found"),
        (["backup", "policy", "verify", "vfy-none"], "no finished backup to verify"),
    ):
        proc = bcloud.run(*args, check=False)
        assert proc.returncode == 1 and needle in proc.stderr, (args, proc.stderr)
    bcloud.run("backup", "policy", "delete", "vfy")
    bcloud.run("backup", "policy", "delete", "vfy-none")
