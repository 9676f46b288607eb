"""Fencing, measured (needs root).

1. The netns fence alone: a throw-away host namespace pair (`cl-bench<id>-h-x`, `.i-1`) holding N `sleep`
   processes (half of them children of shells, as an instance's would be), fenced; prints the time until none is
   left, per N.
2. With --cloud, a real cloud with host h2 (zone-b) and the default lease (CLOUDLET_LEASE_S, 10 s): h2 holds an HA
   instance and another; its underlay is cut (`host partition`). Once with CLOUDLET_FENCE=none: when h2's agent kills
   its HA instance (self-fencing), and when the control plane calls its lease expired (a copy may start from then);
   the gap between them is the safety margin. Once with the netns fence: detection (suspect) and fenced.

    sudo .venv/bin/python bench/fencing.py [--cloud]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cloudlet.compute.resource import INSTANCE, InstanceSpec
from cloudlet.core.store import Store
from cloudlet.resilience.fence import NetnsFence

CLI = [sys.executable, "-m", "cloudlet.cli.main"]


def fence_alone(count: int) -> tuple[int, float]:
    cid = f"bench{secrets.token_hex(2)}"
    names = [f"cl-{cid}-h-x", f"cl-{cid}-h-x.i-1"]
    procs = []
    for ns in names:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for i in range(count // 2):
            procs.append(subprocess.Popen(["ip", "netns", "exec", names[i % 2], "sleep", "600"]))
        shells = count - count // 2
        for _ in range(shells // 5):
            script = "for i in 1 2 3 4; do sleep 600 & done; wait"
            procs.append(subprocess.Popen(["ip", "netns", "exec", names[1], "sh", "-c", script]))
        fence = NetnsFence(cid)
        want = count // 2 + (shells // 5) * 5
        deadline = time.monotonic() + 30
        while len(fence.processes_in(fence.namespaces("x"))) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        result = fence.fence("x")
        return result.killed, result.took_s
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _run(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*CLI, *args], env=env, check=True, capture_output=True, text=True).stdout


def _state(env: dict[str, str], host: str) -> str:
    return next(h["state"] for h in json.loads(_run(env, "host", "list", "-o", "json")) if h["name"] == host)


def _running(home: Path, iid: str) -> bool:
    root = str(home / "agents/h2/runc")
    out = subprocess.run(["runc", "--root", root, "state", f"cl-{iid}"], capture_output=True, text=True).stdout
    return bool(out) and json.loads(out).get("status") == "running"


def partition_run(fence: str) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="cloudlet-bench-"))
    env = {**os.environ, "CLOUDLET_HOME": str(home), "CLOUDLET_API_PORT": "0", "CLOUDLET_DNS_PORT": "0"}
    env["CLOUDLET_FENCE"] = fence
    _run(env, "up")
    try:
        _run(env, "host", "add", "h2", "--zone", "zone-b")
        _run(env, "launch", "busybox", "ha1", "--zone", "zone-b", "--memory", "32", "--wait")
        store = Store(f"sqlite:///{home / 'state.db'}")
        res = next(r for r in store.list(INSTANCE) if r.name == "ha1")
        store.update_spec(res.id, InstanceSpec.of(res).model_copy(update={"ha": True}).dump())
        store.close()
        time.sleep(3)  # h2's agent sees it (its watch) and everything has been up a while
        start, wall = time.monotonic(), time.time()
        _run(env, "host", "partition", "h2")
        marks: dict[str, float] = {}
        while time.monotonic() - start < 60:
            if "killed" not in marks and not _running(home, res.id):
                marks["killed"] = time.monotonic() - start
            if _state(env, "h2") in ("fenced", "lease-expired"):
                break
        marks.setdefault("killed", time.monotonic() - start)  # by the fence, then
        reasons = {"HostSuspect": "suspect", "HostFenced": "fenced", "LeaseExpired": "lease-expired"}
        for event in json.loads(_run(env, "host", "show", "h2", "-o", "json"))["events"]:
            if event["reason"] in reasons and event["time"] >= wall:
                marks[reasons[event["reason"]]] = event["time"] - wall
        _run(env, "host", "partition", "h2", "--heal")
        return marks
    finally:
        subprocess.run([*CLI, "down", "--purge"], env=env, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cloud", action="store_true", help="also partition a host of a real cloud")
    args = ap.parse_args()
    print("| processes in the host's namespaces | killed | fence took |")
    print("|---|---|---|")
    for count in (10, 100, 500):
        killed, took = fence_alone(count)
        print(f"| {count} | {killed} | {took * 1000:.0f} ms |")
    if args.cloud:
        print("\n| fence | h2 partitioned at 0 s: suspect | HA instance killed | fenced | lease expired |")
        print("|---|---|---|---|---|")
        for fence in ("none", "netns"):
            m = partition_run(fence)
            cells = [f"{m[k]:.1f} s" if k in m else "-" for k in ("suspect", "killed", "fenced", "lease-expired")]
            print(f"| {fence} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
