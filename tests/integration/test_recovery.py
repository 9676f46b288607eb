"""Recovery for real: `cloudlet recover` fences an instance, keeps a forensic snapshot of its failed disk and
rebuilds it from its newest snapshot; `instance replace --from-snapshot` swaps its disk keeping its address; an HA
instance of a host killed whole (every process of its namespaces) comes back on another host with its address,
after the host was suspected and fenced, and runs exactly once."""

from __future__ import annotations

import time

import pytest

from cloudlet.resilience.fence import NetnsFence
from tests.conftest import CloudCLI

pytestmark = pytest.mark.root
SERVE = "mkdir -p /w && echo hi > /w/index.html && exec httpd -f -p 8080 -h /w"


def _read(cloud: CloudCLI, name: str, path: str) -> str:
    return cloud.run("exec", name, "--", "cat", path, check=False).stdout.strip()


def _events(cloud: CloudCLI, name: str) -> list[str]:
    return [e["reason"] for e in cloud.json("events", name, "--limit", "200")]


def _wait_events(cloud: CloudCLI, name: str, reason: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = _events(cloud, name)
        if reason in seen:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{name} never had a {reason} event: {_events(cloud, name)}")


def _wait_running_again(cloud: CloudCLI, name: str, since_pid: int | None, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    view: dict = {}
    while time.monotonic() < deadline:
        view = cloud.json("show", name)
        if view["state"] == "running" and view.get("pid") != since_pid and "cloudlet.io/recovery" not in view["labels"]:
            return view
        time.sleep(0.2)
    raise AssertionError(f"{name} did not come back: {view}")


def test_recover_keeps_a_forensic_snapshot_and_rebuilds_from_the_newest_snapshot(cloud: CloudCLI) -> None:
    cloud.run("launch", "busybox", "web", "--wait", "--memory", "32", "--command", SERVE)
    cloud.run("exec", "web", "--", "sh", "-c", "echo v1 > /data.txt")
    cloud.run("snapshot", "create", "web", "--name", "web-v1")
    deadline = time.monotonic() + 30
    while cloud.json("snapshot", "show", "web-v1")["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.1)
    cloud.run("exec", "web", "--", "sh", "-c", "echo v2-broken > /data.txt")
    before = cloud.json("show", "web")
    cloud.run("recover", "web")
    after = _wait_running_again(cloud, "web", before["pid"])
    assert after["ip"] == before["ip"] and after["host"] == before["host"]
    assert _read(cloud, "web", "/data.txt") == "v1"  # the newest snapshot, not the failed disk
    seen = _events(cloud, "web")
    for reason in ("RecoveryStarted", "Fenced", "ForensicSnapshot", "Replaced", "Recovered", "Rebuilt"):
        assert reason in seen, seen
    assert seen.index("Fenced") < seen.index("Replaced")
    forensic = [s for s in cloud.json("snapshot", "list") if s["labels"].get("cloudlet.io/forensic-of") == before["id"]]
    assert len(forensic) == 1 and forensic[0]["state"] == "ready", forensic
    # the forensic copy holds the failed disk: boot a look-alike from it and read the file
    cloud.run("launch", "--from-snapshot", forensic[0]["name"], "autopsy", "--wait", "--memory", "32")
    assert _read(cloud, "autopsy", "/data.txt") == "v2-broken"
    cloud.run("delete", "autopsy")


def test_replace_from_snapshot_keeps_address_and_name(cloud: CloudCLI) -> None:
    before = cloud.json("show", "web")
    cloud.run("exec", "web", "--", "sh", "-c", "echo v3 > /data.txt")
    cloud.run("instance", "replace", "web", "--from-snapshot", "web-v1")
    after = _wait_running_again(cloud, "web", before["pid"])
    assert after["ip"] == before["ip"] and after["name"] == "web" and after["id"] == before["id"]
    assert _read(cloud, "web", "/data.txt") == "v1"


def test_bad_replace_and_recover_requests_are_clear(cloud: CloudCLI) -> None:
    for args, words in (
        (("instance", "replace", "web", "--from-snapshot", "nope"), "nope"),
        (("instance", "replace", "nope", "--from-snapshot", "web-v1"), "nope"),
        (("recover", "nope"), "nope"),
    ):
        proc = cloud.run(*args, check=False)
        assert proc.returncode == 1 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_ha_instance_of_a_killed_host_comes_back_elsewhere_once(cloud: CloudCLI) -> None:
    cloud.run("host", "add", "h2", "--zone", "zone-b")
    cloud.run("host", "cordon", "local")  # so it lands on h2, but may come back on local (no zone pinned)
    fast = ("--replicas", "1", "--replica-interval", "1")
    cloud.run("launch", "busybox", "db", "--ha", "--memory", "32", *fast, "--command", SERVE)
    before = cloud.wait_state("db", "running", timeout=60)
    cloud.run("host", "uncordon", "local")
    assert before["host"] == "h2"
    # a volume made on local follows db to h2 on attach; its replica goes where db's root disk's does (local)
    cloud.run("volume", "create", "dbdata", "--size", "1", *fast)
    cloud.run("volume", "attach", "dbdata", "db", "--path", "/data")
    assert cloud.json("volume", "show", "dbdata")["host"] == "h2"
    cloud.run("exec", "db", "--", "sh", "-c", "echo kept > /data/marker && sync")
    written = time.time()

    def shipped_after_write(view: dict[str, object]) -> bool:
        rep = view.get("replica")
        return isinstance(rep, dict) and rep.get("host") == "local" and (rep.get("taken_at") or 0) > written

    deadline = time.monotonic() + 60
    while not (
        shipped_after_write(cloud.json("show", "db")) and shipped_after_write(cloud.json("volume", "show", "dbdata"))
    ):
        assert time.monotonic() < deadline, (
            cloud.json("show", "db")["replica"],
            cloud.json("volume", "show", "dbdata"),
        )
        time.sleep(0.3)
    killed_at = time.monotonic()
    result = NetnsFence(cloud.cloud_id()).fence("h2")  # the host dies: its agent and every instance process
    assert result.killed >= 2
    after = _wait_running_again(cloud, "db", before["pid"], timeout=90)
    took = time.monotonic() - killed_at
    print(f"host killed -> HA instance running on {after['host']}: {took:.1f} s")
    assert after["host"] == "local" and after["ip"] == before["ip"]
    # from the replicas: its volume came along with what was written on it, and the record is on local too
    assert cloud.run("exec", "db", "--", "cat", "/data/marker").stdout.strip() == "kept"
    vol = cloud.json("volume", "show", "dbdata")
    assert (vol["host"], vol["attached_to"]) == ("local", "db"), vol
    hosts = {h["name"]: h["state"] for h in cloud.json("host", "list")}
    assert hosts["h2"] == "fenced", hosts
    seen = _events(cloud, "db")
    assert "RecoveryStarted" in seen and "RecoveredFromReplica" in seen and "Recovered" in seen, seen
    # exactly one copy: local's runc runs it, h2's runc state has no running container
    assert "running" in cloud.runc("state", f"cl-{before['id']}").stdout
    h2 = cloud.run("host", "remove", "h2", "--force", check=False)
    assert h2.returncode == 0, h2.stderr


def test_snapshot_an_instance_was_replaced_from_deletes_by_cascade_only(cloud: CloudCLI) -> None:
    """web boots from its own snapshot web-v1 (replaced above) and web-v1 is a snapshot of web: a cycle in the
    dependency graph, which a cascade walked for ever (a 500, RecursionError) until each record was visited once."""
    proc = cloud.run("snapshot", "delete", "web-v1", check=False)
    assert proc.returncode == 1 and "instance web" in proc.stderr, proc.stderr
    cloud.run("snapshot", "delete", "web-v1", "--cascade")
    names = {s["name"] for s in cloud.json("snapshot", "list")} | {i["name"] for i in cloud.json("list")}
    deadline = time.time() + 30
    while {"web", "web-v1"} & names and time.time() < deadline:
        time.sleep(0.2)
        names = {s["name"] for s in cloud.json("snapshot", "list")} | {i["name"] for i in cloud.json("list")}
    assert not {"web", "web-v1"} & names, names
