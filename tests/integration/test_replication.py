"""Replicated disks between two real hosts (host `local` in zone-a, host `h2` added in zone-b, each with its own
agent and btrfs pool): an instance that keeps writing and a volume with `replicas: 1` are shipped to h2 every
second as incremental btrfs streams; two replicas are kept on each side; the replica holds what was written; the
token opens only its own volume; a replica host that stops answering raises ReplicaStale, and catching up
ReplicaCurrent; the newest replica promotes to a bootable root disk; recovery boots the instance from its replica on
the replica host (and its replica then goes the other way); deleting the source removes every replica."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from cloudlet.agent.client import HttpHosts
from cloudlet.core.store import Store
from cloudlet.storage import replication
from tests.conftest import CloudCLI, running_cloud
from tests.helpers import host_home

pytestmark = pytest.mark.root

# counts on from what its disk holds: booted from a replica, it goes on from the replica's value
WRITER = (
    "i=$(cat /counter 2>/dev/null || echo 0); "
    "while :; do i=$((i+1)); echo $i > /counter.tmp && mv /counter.tmp /counter; sleep 0.1; done"
)


@pytest.fixture(scope="module")
def two() -> Iterator[CloudCLI]:
    with running_cloud(hosts=[("h2", "zone-b")]) as cli:
        cli.run(
            "launch", "busybox", "db", "--zone", "zone-a", "--memory", "32", "--replicas", "1",
            "--replica-interval", "1", "--command", WRITER,
        )  # fmt: skip
        cli.wait_state("db", "running", timeout=60)
        yield cli


def _replica(cli: CloudCLI, name: str, kind: str = "instance", newer_than: int = 0, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        view = cli.json("volume", "show", name) if kind == "volume" else cli.json("show", name)
        rep = view["replica"]
        if rep and (rep["seq"] or 0) > newer_than:
            return view
        assert time.monotonic() < deadline, f"no replica of {name} after seq {newer_than}: {rep}"
        time.sleep(0.3)


def _seqs(cli: CloudCLI, host: str, sid: str) -> list[int]:
    where = host_home(cli, host) / "pool" / "replicas" / sid
    return sorted(int(p.name) for p in where.iterdir() if p.name.isdigit()) if where.is_dir() else []


def _agent(cli: CloudCLI, host: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((cli.home / "agents" / host / "endpoint.json").read_text())
    return found


def _events(cli: CloudCLI, name: str) -> list[str]:
    return [e["reason"] for e in cli.json("events", name, "--limit", "1000")]


def test_instance_disk_is_shipped_to_the_other_zone(two: CloudCLI) -> None:
    view = _replica(two, "db", newer_than=2)
    rep = view["replica"]
    assert view["host"] == "local" and (rep["host"], rep["zone"]) == ("h2", "zone-b"), rep
    assert rep["state"] in ("current", "waiting") and rep["age_s"] < 3 * rep["interval_s"] + 2, rep
    assert not {"endpoint", "token"} & set(rep)
    seq = rep["seq"]
    # the replica is a whole root disk holding what the instance wrote (at most a few intervals behind)
    got = host_home(two, "h2") / "pool" / "replicas" / view["id"] / str(seq)
    assert (got / "bin" / "busybox").exists()
    now = int(two.run("exec", "db", "--", "cat", "/counter").stdout)
    shipped = int((got / "counter").read_text())
    assert 0 < shipped <= now and now - shipped < 10 * (rep["age_s"] + 5), (shipped, now, rep)
    # two kept on each side, the newest in common
    _replica(two, "db", newer_than=seq + 2)
    for host in ("local", "h2"):
        assert len(_seqs(two, host, view["id"])) <= 2, (host, _seqs(two, host, view["id"]))
    assert set(_seqs(two, "h2", view["id"])) & set(_seqs(two, "local", view["id"]))


def test_volume_is_replicated(two: CloudCLI) -> None:
    two.run("volume", "create", "data", "--size", "1", "--replicas", "1", "--replica-interval", "1")
    vol = two.json("volume", "show", "data")
    (host_home(two, "local") / "pool" / "volumes" / vol["id"] / "file").write_text("volume data")
    deadline = time.monotonic() + 30
    while not (host_home(two, "h2") / "pool" / "replicas" / vol["id"]).is_dir() or not any(
        (p / "file").exists() for p in (host_home(two, "h2") / "pool" / "replicas" / vol["id"]).iterdir()
    ):
        assert time.monotonic() < deadline, two.json("volume", "show", "data")["replica"]
        time.sleep(0.3)
    assert _replica(two, "data", kind="volume")["replica"]["host"] == "h2"


def test_the_token_opens_only_its_own_volume(two: CloudCLI) -> None:
    db = two.json("show", "db")
    h2 = _agent(two, "h2")
    url = h2["url"]
    with httpx.Client(base_url=url, timeout=5) as http:
        for auth in ("", "Bearer wrong", f"Bearer {h2['key']}"):  # not even the agent's own key ships a replica
            resp = http.get(f"/replicas/disks/{db['id']}", headers={"Authorization": auth})
            assert resp.status_code == 401, resp.text
        for path in ("/replicas/images/x", f"/replicas/disks/{db['id']}/../../images", "/replicas/disks/ABC"):
            assert http.put(path, content=b"x").status_code in (401, 404, 405, 422), path
        # the promote route takes the agent's key only
        resp = http.post(f"/replicas/disks/{db['id']}/promote", json={"into": "disks/" + "0" * 26})
        assert resp.status_code == 401


def test_a_silent_replica_host_raises_replica_stale(two: CloudCLI) -> None:
    h2 = _agent(two, "h2")
    port = httpx.URL(h2["url"]).port
    netns = f"cl-{two.cloud_id()}-h-h2"
    block = f"""table inet cloudlet_test_block {{
  chain input {{
    type filter hook input priority -10;
    tcp dport {port} drop
  }}
}}
"""
    before = _events(two, "db")
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=block, text=True, check=True)
    try:
        deadline = time.monotonic() + 40
        while _events(two, "db").count("ReplicaStale") <= before.count("ReplicaStale"):
            assert time.monotonic() < deadline, two.json("show", "db")["replica"]
            time.sleep(0.5)
        rep = two.json("show", "db")["replica"]
        assert rep["state"] == "stale" and rep["age_s"] > 3 * rep["interval_s"], rep
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "cloudlet_test_block"])
    deadline = time.monotonic() + 40
    while _events(two, "db").count("ReplicaCurrent") <= before.count("ReplicaCurrent"):
        assert time.monotonic() < deadline, two.json("show", "db")["replica"]
        time.sleep(0.5)
    assert two.json("show", "db")["replica"]["state"] == "current"


def test_a_restarted_replica_host_gets_a_new_token_and_the_next_send_is_incremental(two: CloudCLI) -> None:
    """The replica host's agent is killed and started again (`up`): its new key means a new token; what its pool kept
    is the parent of the next send."""
    db = _replica(two, "db")
    old_key = _agent(two, "h2")["key"]
    os.kill(two.agent_pid("h2"), signal.SIGKILL)
    deadline = time.monotonic() + 15  # the monitor suspects and fences the silent host: let it finish first
    while two.json("host", "show", "h2")["state"] == "up" and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(1)
    two.run("up")
    assert _agent(two, "h2")["key"] != old_key
    seq = two.json("show", "db")["replica"]["seq"]
    view = _replica(two, "db", newer_than=seq, timeout=60)
    rep = view["replica"]
    assert rep["host"] == "h2" and rep["state"] == "current", rep
    assert rep["seq"] > db["replica"]["seq"] and len(_seqs(two, "h2", view["id"])) <= 2
    # a counter's changes, not the ~2 MB of busybox a full send holds
    assert rep["bytes"] < 500_000, rep


def test_the_newest_replica_promotes_to_a_bootable_disk(two: CloudCLI) -> None:
    db = _replica(two, "db")
    h2 = _agent(two, "h2")
    into = "disks/" + "z" * 26
    with httpx.Client(base_url=h2["url"], timeout=30, headers={"Authorization": f"Bearer {h2['key']}"}) as http:
        resp = http.post(f"/replicas/disks/{db['id']}/promote", json={"into": into})
        assert resp.status_code == 200, resp.text
        assert resp.json()["seq"] in _seqs(two, "h2", db["id"])
        disk = host_home(two, "h2") / "pool" / into
        (disk / "written-after-recovery").write_text("ok")  # writable, and a whole root file system
        assert (disk / "bin" / "busybox").exists() and int((disk / "counter").read_text()) > 0
        assert http.post(f"/replicas/disks/{db['id']}/promote", json={"into": into}).status_code == 409
    subprocess.run(["btrfs", "subvolume", "delete", str(disk)], check=True, capture_output=True)


def test_recovery_boots_the_instance_from_its_replica_on_the_replica_host(two: CloudCLI) -> None:
    db = two.json("show", "db")
    two.run("stop", "db", "--wait")
    stopped_at = time.time()
    last = int((host_home(two, "local") / "pool" / "disks" / db["id"] / "counter").read_text())
    deadline = time.monotonic() + 30
    while (two.json("show", "db")["replica"]["taken_at"] or 0) < stopped_at:  # the last delta, after the stop
        assert time.monotonic() < deadline
        time.sleep(0.3)
    store = Store(f"sqlite:///{two.home / 'state.db'}")
    try:  # what recovery (cloudletd) does, from here: the cloud is ours and the old copy is stopped
        replication.recover_from_replica(
            SimpleNamespace(store=store, hosts=HttpHosts(store)), store.get_by_id(db["id"])
        )  # type: ignore[arg-type]
    finally:
        store.close()
    two.run("start", "db")
    view = two.wait_state("db", "running", timeout=60)
    assert (view["host"], view["zone"]) == ("h2", "zone-b"), view
    assert "RecoveredFromReplica" in _events(two, "db")
    now = int(two.run("exec", "db", "--", "cat", "/counter").stdout)
    assert now > last, f"booted from the replica it counts on from {last}, not from 0 (now {now})"
    assert view["ip"] == db["ip"], "the same address, on the network that spans both hosts"
    # the old host let go of its disk, and the replica now goes from h2 back to local (an added host cannot ship
    # to local yet: local's agent listens on 127.0.0.1 of the root namespace only)
    deadline = time.monotonic() + 40
    while (rep := two.json("show", "db")["replica"]) is None or rep["target_host"] != "local":
        assert time.monotonic() < deadline, (rep or {}).get("message")
        time.sleep(0.5)
    assert not (host_home(two, "local") / "pool" / "disks" / db["id"]).exists()


def test_deleting_the_source_removes_every_replica(two: CloudCLI) -> None:
    db = two.json("show", "db")
    vol = two.json("volume", "show", "data")
    two.run("delete", "db")
    two.run("volume", "delete", "data")
    deadline = time.monotonic() + 30
    while any(
        (host_home(two, host) / "pool" / "replicas" / rid).exists()
        for host in ("local", "h2")
        for rid in (db["id"], vol["id"])
    ):
        assert time.monotonic() < deadline, "replicas left after their source was deleted"
        time.sleep(0.3)
