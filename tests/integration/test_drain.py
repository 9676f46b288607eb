"""`cloudlet host drain` on two real hosts (host `local` in zone-a, host `h2` added in zone-b, each with its own
agent, runc root and btrfs pool): an instance on h2 that keeps writing a counter moves to local with its disk's
data (a full copy while it runs, then the last delta once it stopped), its name, address and DNS name; runc runs
it exactly once (on local, never on h2 again); an instance with a volume attached moves with the volume's data
(shipped the same way, the record placed on local before the instance); drained, h2 holds nothing and
`host remove` works."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import DNSRecord

from tests.conftest import CloudCLI, running_cloud

pytestmark = pytest.mark.root

# counts on from what its disk holds; exits at once on TERM, as a service should (an init that ignores TERM is
# killed 5 s later by the runtime: that much more downtime)
WRITER = (
    "trap 'exit 0' TERM; i=$(cat /counter 2>/dev/null || echo 0); "
    "while :; do i=$((i+1)); echo $i > /counter.tmp && mv /counter.tmp /counter; sleep 0.1; done"
)


@pytest.fixture(scope="module")
def two() -> Iterator[CloudCLI]:
    with running_cloud() as cli:
        cli.run("host", "add", "h2", "--zone", "zone-b")
        cli.run("launch", "busybox", "counter", "--zone", "zone-b", "--memory", "32", "--command", WRITER)
        # and one with a replica (on local, the other zone): the drain boots it from that, after a cycle past its stop
        cli.run(
            "launch", "busybox", "rep", "--zone", "zone-b", "--memory", "32", "--replicas", "1",
            "--replica-interval", "1", "--command", WRITER,
        )  # fmt: skip
        cli.wait_state("counter", "running", timeout=60)
        cli.wait_state("rep", "running", timeout=60)
        # an EIP and a load balancer point at it: both must follow it (the record, by id and by name)
        cli.run("secgroup", "rule", "add", "default", "tcp", "8080", "--cidr", "0.0.0.0/0")
        cli.run("eip", "allocate", "e1")
        cli.run("eip", "associate", "e1", "counter")
        cli.run("lb", "create", "web", "--port", "8080", "--members", "counter", "--health-check", "tcp")
        yield cli


def _runc_ids(cli: CloudCLI, host: str) -> dict[str, str]:
    """What runc itself runs under a host's root: container id -> status."""
    root = cli.home / "runc" if host == "local" else cli.home / "agents" / host / "runc"
    if not root.exists():
        return {}
    out = subprocess.run(["runc", "--root", str(root), "list", "-f", "json"], capture_output=True, text=True)
    return {c["id"]: c["status"] for c in json.loads(out.stdout or "null") or []}


def _pool(cli: CloudCLI, host: str) -> Path:
    return cli.home / "pool" if host == "local" else cli.home / "agents" / host / "pool"


def _resolve(cli: CloudCLI, name: str) -> list[str]:
    port = int(json.loads((cli.home / "agents/local/endpoint.json").read_text())["dns_port"])
    reply = DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", port, timeout=2))
    return [str(r.rdata) for r in reply.rr]


def _get(cli: CloudCLI, src: str, ip: str, path: str) -> str:
    """An HTTP GET from inside instance src (busybox wget -T crashes: nc -w bounds it)."""
    probe = f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 8080"
    return cli.run("exec", src, "--", "sh", "-c", probe, check=False).stdout


def _from_outside(cli: CloudCLI, url: str) -> str:
    out = f"cl-{cli.cloud_id()}-out"
    argv = ["ip", "netns", "exec", out, "timeout", "3", "busybox", "wget", "-qO-", url]
    return subprocess.run(argv, capture_output=True, text=True).stdout


def _until(check: Any, why: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, why()
        time.sleep(0.2)


def _events(cli: CloudCLI, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cli.json("events", name, "--limit", "1000")
    return found


def test_drain_moves_the_instance_with_its_data_name_and_address(two: CloudCLI) -> None:
    before = two.json("show", "counter")
    assert before["host"] == "h2", before
    cid = f"cl-{before['id']}"
    two.run("exec", "counter", "--", "sh", "-c", "echo kept > /marker")
    time.sleep(0.5)
    counted = int(two.run("exec", "counter", "--", "cat", "/counter").stdout)
    assert counted > 0
    deadline = time.monotonic() + 30
    while not (two.json("show", "rep")["replica"] or {}).get("seq"):
        assert time.monotonic() < deadline, two.json("show", "rep")["replica"]
        time.sleep(0.3)
    rep_counted = int(two.run("exec", "rep", "--", "cat", "/counter").stdout)
    # a volume made on local (the configured host) and attached to an instance on h2: it holds no data yet, so it
    # is made again on h2, where the instance writes to it
    two.run("launch", "busybox", "holder", "--zone", "zone-b", "--memory", "32", "--command", WRITER)
    two.wait_state("holder", "running", timeout=60)
    two.run("volume", "create", "data", "--size", "1")
    assert two.json("volume", "show", "data")["host"] == "local"
    two.run("volume", "attach", "data", "holder", "--path", "/data")
    vol = two.json("volume", "show", "data")
    assert (vol["host"], vol["attached"]) == ("h2", True), vol
    two.run("exec", "holder", "--", "sh", "-c", "echo on-the-volume > /data/marker")

    t0 = time.monotonic()
    proc = two.run("host", "drain", "h2", "--wait", timeout=120)
    took = time.monotonic() - t0
    assert "moved counter to local" in proc.stdout and "moved holder to local" in proc.stdout, proc.stdout
    assert took < 60, took  # the goal is 20 instances in 30 s; three, with generous room

    after = two.wait_state("counter", "running", timeout=30)
    assert (after["host"], after["zone"], after["ip"], after["id"]) == (
        "local",
        "zone-a",
        before["ip"],
        before["id"],
    ), after
    # its disk came along: what it wrote before the drain, and the counter goes on from at least there
    assert two.run("exec", "counter", "--", "cat", "/marker").stdout.strip() == "kept"
    assert int(two.run("exec", "counter", "--", "cat", "/counter").stdout) >= counted
    reasons = [e["reason"] for e in _events(two, "counter")]
    assert {"DrainStarted", "Shipped", "Moved"} <= set(reasons), reasons
    shipped = [e["message"] for e in _events(two, "counter") if e["reason"] == "Shipped"]
    assert any("full copy" in m for m in shipped) and any("last delta" in m for m in shipped), shipped
    # runc runs it exactly once: on local, and nothing of it is left under h2's root
    assert _runc_ids(two, "local").get(cid) == "running"
    assert cid not in _runc_ids(two, "h2")
    assert _resolve(two, "counter.default.zone-a.cloudlet") == [before["ip"]]
    # reachable at its address from another instance
    two.run("exec", "counter", "--", "httpd", "-p", "8080", "-h", "/")
    assert "kept" in _get(two, "holder", before["ip"], "/marker")
    # its EIP (served by the hub of the host holding it: local has the outside) and its LB follow it
    eip = two.json("eip", "show", "e1")
    assert eip["private_ip"] == before["ip"], eip
    _until(
        lambda: "kept" in _from_outside(two, f"http://{eip['address']}:8080/marker"),
        lambda: two.json("eip", "show", "e1"),
    )
    lb = two.json("lb", "show", "web")
    _until(lambda: "kept" in _get(two, "holder", lb["ip"], "/marker"), lambda: two.json("lb", "show", "web"), 30)
    # and its old namespace on h2 is gone: nothing of it answers there
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"h-h2.i-{before['id']}" not in netns and f"-i-{before['id']}" in netns, netns

    # the replicated one came back on local from its replica, with what it wrote up to its stop
    rep = two.wait_state("rep", "running", timeout=30)
    assert rep["host"] == "local" and _runc_ids(two, "local").get(f"cl-{rep['id']}") == "running", rep
    assert f"cl-{rep['id']}" not in _runc_ids(two, "h2")
    assert int(two.run("exec", "rep", "--", "cat", "/counter").stdout) >= rep_counted
    started = [e["message"] for e in _events(two, "rep") if e["reason"] == "DrainStarted"]
    assert started and "its replica on host local" in started[0], started

    # the one with a volume: on local with what it wrote on the volume, and the volume's record and data with it
    holder = two.wait_state("holder", "running", timeout=30)
    assert holder["host"] == "local" and _runc_ids(two, "local").get(f"cl-{holder['id']}") == "running", holder
    assert two.run("exec", "holder", "--", "cat", "/data/marker").stdout.strip() == "on-the-volume"
    vol = two.json("volume", "show", "data")
    assert (vol["host"], vol["attached_to"]) == ("local", "holder"), vol
    assert not (_pool(two, "h2") / "volumes" / vol["id"]).exists()
    shipped = [e["message"] for e in _events(two, "holder") if e["reason"] == "Shipped"]
    assert any("volume data" in m for m in shipped), shipped

    view = two.json("host", "show", "h2")
    assert view["cordoned"] and view["drain"]["state"] == "done", view["drain"]
    assert (view["drain"]["moved"], view["drain"]["total"]) == (3, 3), view["drain"]
    assert "Drained" in [e["reason"] for e in view["events"]], view["events"]


def test_a_drain_cut_by_a_killed_cloudletd_is_finished_by_the_next_one(two: CloudCLI) -> None:
    """kill -9 of cloudletd a moment into a drain: whatever step each move was at, the restarted cloudletd carries
    the drain on (DrainResumer): every instance ends up running exactly once, none lost."""
    two.run("host", "uncordon", "h2")
    names = ["m1", "m2", "m3"]
    for name in names:
        two.run("launch", "busybox", name, "--zone", "zone-b", "--memory", "32", "--command", WRITER)
    for name in names:
        two.wait_state(name, "running", timeout=60)
    ids = {n: two.json("show", n)["id"] for n in names}
    two.run("host", "drain", "h2")
    time.sleep(0.6)
    two.kill9("cloudletd")
    two.run("up")
    deadline = time.monotonic() + 60
    while (drain := two.json("host", "show", "h2")["drain"])["state"] == "running" or any(
        two.json("show", n)["host"] != "local" for n in names
    ):
        assert time.monotonic() < deadline, drain
        time.sleep(0.5)
    for name in names:
        view = two.wait_state(name, "running", timeout=30)
        assert view["host"] == "local", view
        assert _runc_ids(two, "local").get(f"cl-{ids[name]}") == "running"
        assert f"cl-{ids[name]}" not in _runc_ids(two, "h2")
        assert "stopped" not in [view["state"]] and "cloudlet.io/drain" not in view.get("labels", {}), view


def test_draining_again_continues_then_the_host_is_empty_and_removable(two: CloudCLI) -> None:
    two.run("host", "uncordon", "h2")  # the drain above cordoned it again
    two.run("launch", "busybox", "late", "--zone", "zone-b", "--memory", "32", "--command", WRITER)
    late = two.wait_state("late", "running", timeout=60)
    assert late["host"] == "h2", late
    proc = two.run("host", "drain", "h2", "--wait", timeout=120)
    assert "moved late to local" in proc.stdout and "1 of 1 moved" in proc.stdout, proc.stdout
    moved = two.wait_state("late", "running", timeout=30)
    assert (moved["host"], moved["ip"]) == ("local", late["ip"]), moved
    assert two.json("host", "show", "h2")["drain"]["state"] == "done"
    # h2 holds nothing: no container, no root disk, no shipped replicas
    assert not _runc_ids(two, "h2")
    pool = _pool(two, "h2")
    for inst in two.json("list"):
        rid = inst["id"]
        assert not (pool / "disks" / rid).exists()
        # rep's replica went to h2 while h2 was uncordoned: the drain has its planner choose again (no host left)
        assert not (pool / "replicas" / rid).exists(), inst["name"]
        if inst["name"] != "rep":
            assert not (_pool(two, "local") / "replicas" / rid).exists(), inst["name"]
    two.run("host", "remove", "h2")
    assert "h2" not in [h["name"] for h in two.json("host", "list")]
    assert two.json("show", "counter")["state"] == "running"
