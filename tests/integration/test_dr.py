"""`cloudlet dr drill` on two real hosts (`local` in zone-a, `h2` added in zone-b): a busybox stack (an LB holding an
EIP over an app layer, a "db" layer with replicas: 1 and a volume a writer keeps counting on) rebuilt in zone-b
and failed back: everything runs in the drilled-to zone, the volume's data came with the replica, the EIP answers
2xx from the outside namespace, and the report holds RTO, RPO and each step's time. Refusals: a zone with no
live host (422), a second drill while one runs (409), a stack whose data has no copy in the zone (409, naming
it)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import CloudCLI, running_cloud
from tests.integration.test_lb import APP
from tests.s3 import s3_server

pytestmark = pytest.mark.root

# counts on from what its volume holds
WRITER = (
    "trap 'exit 0' TERM; i=$(cat /data/counter 2>/dev/null || echo 0); "
    "while :; do i=$((i+1)); echo $i > /data/counter.tmp && mv /data/counter.tmp /data/counter; sleep 0.1; done"
)
STACK = """\
name: dr
layers:
  app:
    memory: 32
    cpus: 0.2
    command: {app}
  db:
    memory: 32
    cpus: 0.2
    replicas: 1
    replica_interval_s: 1
    volumes: [{{name: data, size_gib: 1, path: /data}}]
    command: {writer}
load_balancers:
  front: {{layer: app, port: 80, health_check: "http:/health"}}
eips:
  public: {{load_balancer: front}}
"""
# a volume holding data and no replica: nothing of it is in another zone
BARE = """\
name: bare
layers:
  vault:
    memory: 32
    cpus: 0.2
    volumes: [{{name: data, size_gib: 1, path: /data}}]
    command: {writer}
"""


def _apply(cli: CloudCLI, path: Path, text: str) -> None:
    """The stack, placed in zone-a (h2 cordoned meanwhile)."""
    path.write_text(text.format(app=json.dumps(APP), writer=json.dumps(WRITER)))
    cli.run("host", "cordon", "h2")
    try:
        cli.run("stack", "apply", str(path), "--wait", timeout=120)
    finally:
        cli.run("host", "uncordon", "h2")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudCLI]:
    with running_cloud(hosts=[("h2", "zone-b")]) as cli:
        _apply(cli, tmp_path_factory.mktemp("dr") / "dr.yaml", STACK)
        yield cli


def _until(what: str, check: Any, timeout: float = 60.0, why: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what}: {why() if why else ''}"
        time.sleep(0.3)
    return got


def _zones(cli: CloudCLI) -> dict[str, str]:
    hosts = {h["name"]: h["zone"] for h in cli.json("host", "list")}
    found = {n: hosts[cli.json("show", n)["host"]] for n in ("app-1", "db-1")}
    found["dr-front"] = hosts[cli.json("lb", "show", "dr-front")["host"]]
    return found


def _outside(cli: CloudCLI, url: str) -> str:
    out = f"cl-{cli.cloud_id()}-out"
    argv = ["ip", "netns", "exec", out, "timeout", "3", "busybox", "wget", "-qO-", url]
    return subprocess.run(argv, capture_output=True, text=True).stdout


def test_refusals(two: CloudCLI, tmp_path: Path) -> None:
    bad = two.run("dr", "drill", "dr", "--to-zone", "zone-c", check=False)
    assert bad.returncode == 1 and "zone zone-c has no live host" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = two.run("dr", "drill", "nope", "--to-zone", "zone-b", check=False)
    assert unknown.returncode == 1 and "nope" in unknown.stderr, unknown.stderr
    # another tenant's stack is not there for a tenant, and its drills are not listed
    token = two.run("tenant", "create", "other").stdout.strip().splitlines()[-1]
    theirs = two.run("dr", "drill", "dr", "--to-zone", "zone-b", check=False, env={"CLOUDLET_TOKEN": token})
    assert theirs.returncode == 1 and "not found" in theirs.stderr, theirs.stderr
    assert two.json("dr", "status", env={"CLOUDLET_TOKEN": token}) == {"stacks": [], "backup_policies": []}
    # a stack whose db volume holds data but has no replica: nothing of it is in zone-b
    _apply(two, tmp_path / "bare.yaml", BARE)
    _until(
        "bare's volume holding data",
        lambda: two.run("exec", "vault-1", "--", "cat", "/data/counter", check=False).stdout,
    )
    refused = two.run("dr", "drill", "bare", "--to-zone", "zone-b", check=False)
    assert refused.returncode == 1, refused.stdout
    assert "no copy in zone zone-b" in refused.stderr and "instance vault-1 has no replica" in refused.stderr
    two.run("stack", "delete", "bare", "--wait", timeout=120)


def test_drill_to_zone_b_and_back(two: CloudCLI, tmp_path: Path) -> None:
    assert _zones(two) == {"app-1": "zone-a", "db-1": "zone-a", "dr-front": "zone-a"}
    eip = two.json("eip", "show", "dr-public")["address"]
    _until(
        "the EIP answering",
        lambda: "ok" in _outside(two, f"http://{eip}/health"),
        60,
        lambda: (two.json("lb", "show", "dr-front"), two.json("eip", "show", "dr-public")),
    )
    # a count the db wrote, then a replica of its volume taken after it: the drill must bring at least that back
    counted = int(two.run("exec", "db-1", "--", "cat", "/data/counter").stdout)
    read_at = time.time()
    _until("a replica after the read", lambda: (two.json("show", "db-1")["replica"] or {}).get("taken_at", 0) > read_at)
    start = two.json("dr", "drill", "dr", "--to-zone", "zone-b")
    assert start["state"] == "running", start
    again = two.run("dr", "drill", "dr", "--to-zone", "zone-b", check=False)
    assert again.returncode == 1 and "is running" in again.stderr, again.stderr

    def finished() -> dict[str, Any] | None:
        view: dict[str, Any] = two.json("dr", "show", start["name"])
        return view if view["state"] != "running" else None

    done = _until("the drill", finished, 120, lambda: two.json("dr", "show", start["name"])["summary"])
    assert done["state"] == "succeeded", done["summary"]
    assert set(_zones(two).values()) == {"zone-b"}, _zones(two)
    recovered = int(two.run("exec", "db-1", "--", "cat", "/data/counter").stdout)
    assert recovered >= counted, (recovered, counted)
    assert "ok" in _outside(two, f"http://{eip}/health")
    (leg,) = done["legs"]
    steps = [s["step"] for s in leg["steps"]]
    assert steps == ["pin", "fence", "restore", "load-balancers", "boot", "dns", "steady"], steps
    assert all(s["took_s"] is not None and s["took_s"] >= 0 for s in leg["steps"])
    assert 0 < leg["rto_s"] == done["rto_s"] < 120 and 0 <= leg["rpo_s"] == done["rpo_s"] < 10, leg
    assert {d["disk"] for d in leg["disks"]} == {"root disk", "volume db-1-data"}, leg["disks"]
    assert leg["probes"] and all(200 <= p["status"] < 300 for p in leg["probes"]), leg["probes"]
    saved = json.loads(Path(done["report"]).read_text())
    assert saved["verdict"].startswith("passed") and saved["rto_s"] == done["rto_s"]
    events = [e["reason"] for e in two.json("events", start["name"], "--limit", "100")]
    assert events.count("DrillStep") == 7 and "DrillFinished" in events, events

    # to zone-a and back (--failback), followed by the CLI (--report waits), once the replicas are in zone-a
    _until("a replica in zone-a", lambda: (two.json("show", "db-1")["replica"] or {}).get("host") == "local")
    report = tmp_path / "report.json"
    out = two.run("dr", "drill", "dr", "--to-zone", "zone-a", "--failback", "--report", str(report), timeout=240)
    assert "drill to zone-a: steady" in out.stdout and "failback to zone-b: steady" in out.stdout, out.stdout
    assert "verdict: passed" in out.stdout, out.stdout
    print(out.stdout)
    both = json.loads(report.read_text())
    assert both["state"] == "succeeded" and [leg["leg"] for leg in both["legs"]] == ["drill", "failback"]
    assert both["rto_s"] > 0 and both["failback_rto_s"] > 0 and both["failback_rpo_s"] is not None, both
    assert set(_zones(two).values()) == {"zone-b"}, _zones(two)
    # back where it ran, the stack follows its document (no zone) again: unpinned, and nothing moves for it
    assert both["legs"][1]["steps"][-1]["step"] == "unpin", both["legs"][1]["steps"]
    assert "cloudlet.io/dr-zone" not in two.json("stack", "show", "dr")["labels"]
    ids = {i["name"]: i["id"] for i in two.json("list")}
    _until("the stack's pass after the unpin", lambda: two.json("stack", "show", "dr")["state"] == "ready")
    time.sleep(2)
    assert {i["name"]: i["id"] for i in two.json("list")} == ids and set(_zones(two).values()) == {"zone-b"}
    assert int(two.run("exec", "db-1", "--", "cat", "/data/counter").stdout) >= recovered
    assert "ok" in _outside(two, f"http://{eip}/health")
    status = {d["stack"]: d for d in two.json("dr", "status")["stacks"]}
    assert status["dr"]["name"] == both["name"] and status["dr"]["rto"].endswith("s"), status


@pytest.mark.slow  # ~40 s (an S3 server, backups, restores): make test keeps the drill from replicas and back
def test_drill_from_offsite_backups(two: CloudCLI, tmp_path: Path) -> None:
    """To the other zone from the newest backup of the db's volume in a real S3 server (moto), the root disk from
    its image. The server listens on the underlay's address of this machine: h2's agent (in its namespace) backs
    up to it, local's restores from it."""
    other = "zone-a" if _zones(two)["db-1"] == "zone-b" else "zone-b"
    underlay = urlparse(json.loads((two.home / "endpoint.json").read_text())["underlay_url"]).hostname
    with s3_server(str(underlay)) as url:
        add = [
            "backup",
            "target",
            "add",
            "offsite",
            "--endpoint",
            url,
            "--bucket",
            "dr-offsite",
            "--access-key",
            "test",
        ]
        two.run(*add, "--secret-key", "test")
        refused = two.run("dr", "drill", "dr", "--to-zone", other, "--from-backups", check=False)
        assert refused.returncode == 1, refused.stdout
        assert "volume db-1-data of instance db-1 has no finished offsite backup" in refused.stderr, refused.stderr
        counted = int(two.run("exec", "db-1", "--", "cat", "/data/counter").stdout)
        two.run("backup", "create", "db-1-data", "--name", "db-offsite-1", timeout=120)
        report = tmp_path / "backups.json"
        args = ["dr", "drill", "dr", "--to-zone", other, "--from-backups", "--report", str(report)]
        out = two.run(*args, timeout=240)
        assert "from backups: db-1" in out.stdout and "verdict: passed" in out.stdout, out.stdout
        print(out.stdout)
    view = json.loads(report.read_text())
    (leg,) = view["legs"]
    assert [d["disk"] for d in leg["disks"]] == ["volume db-1-data"] and leg["rpo_s"] >= 0, leg["disks"]
    assert 0 < view["rto_s"] < 120, view
    assert set(_zones(two).values()) == {other}, _zones(two)
    # the count the backup holds, counted on from there
    assert int(two.run("exec", "db-1", "--", "cat", "/data/counter").stdout) >= counted


def test_a_scheduled_drill_starts_when_due_and_a_cloudletd_restart_fails_it(two: CloudCLI) -> None:
    other = "zone-a" if _zones(two)["db-1"] == "zone-b" else "zone-b"
    bad = two.run("dr", "schedule", "dr", "--every", "30s", "--to-zone", other, check=False)
    assert bad.returncode == 1 and "at least 1m" in bad.stderr, bad.stderr
    two.run("dr", "schedule", "dr", "--every", "14d", "--to-zone", other)
    assert {d["stack"]: d for d in two.json("dr", "status")["stacks"]}["dr"]["schedule"] == f"every 14d to {other}"

    def drills() -> set[str]:
        return {d["name"] for d in two.json("dr", "status")["stacks"] if d.get("name")}

    before = drills()
    # a period of a second (below what the CLI takes), so that one is due at once: the label set through the API
    url = json.loads((two.home / "endpoint.json").read_text())["url"]
    token = (two.home / "admin.token").read_text().strip()
    body = {"set": {"cloudlet.io/dr-every": "1"}, "remove": []}
    headers = {"Authorization": f"Bearer {token}"}
    httpx.patch(f"{url}/v1/stacks/dr/labels", json=body, headers=headers, trust_env=False).raise_for_status()
    (name,) = _until("a scheduled drill", lambda: drills() - before, 60)
    two.run("dr", "schedule", "dr", "--off")
    assert {d["stack"]: d for d in two.json("dr", "status")["stacks"]}["dr"]["schedule"] == "-"
    view = two.json("dr", "show", name)
    assert view["failback"] and view["to_zone"] == other, view["summary"]
    # cut by a kill -9 of cloudletd: the next one marks it failed, saying why
    two.kill9("cloudletd")
    two.run("up")
    view = two.json("dr", "show", name)
    if view["state"] == "succeeded":
        pytest.skip("the drill finished before cloudletd was killed")
    assert view["state"] == "failed" and "cloudletd restarted during the drill" in view["message"], view
    assert view["verdict"] == "failed" and view["finished_at"], view
    assert {d["stack"]: d for d in two.json("dr", "status")["stacks"]}["dr"]["state"] == "failed"
