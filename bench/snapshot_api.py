"""Snapshot → ready through the API, beside storage_cow.py's pool-level figures: `POST /v1/snapshots` of a running
busybox instance (root disk, instance frozen for the moment) and of a 1 GiB volume holding 256 MiB of data, then
`GET /v1/snapshots/{name}` until its phase is ready. The client polls every --poll-ms (10 ms), so a figure is up to
that much late; `took_ms` is the agent's own time for the pool work (freeze, snapshot, thaw), read from the record.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud


def wait_ready(api: httpx.Client, path: str, poll: float, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = api.get(path).json()
        if view.get("state") in ("ready", "running"):
            return view
        if view.get("state") == "failed" or time.monotonic() > deadline:
            raise SystemExit(f"{path}: {view}")
        time.sleep(poll)


def timed_snapshots(api: httpx.Client, source: str, runs: int, poll: float) -> tuple[list[float], list[float]]:
    """Wall time from POST to ready as the client sees it, and the agent's took_ms, in ms."""
    walls, took = [], []
    for i in range(runs):
        name = f"{source}-s{i}"
        t = time.perf_counter()
        api.post("/v1/snapshots", json={"source": source, "name": name}).raise_for_status()
        view = wait_ready(api, f"/v1/snapshots/{name}", poll)
        walls.append((time.perf_counter() - t) * 1000)
        took.append(float(view.get("took_ms") or 0.0))
    return walls, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="snapshots per source (default 20)")
    ap.add_argument("--poll-ms", type=float, default=10.0, help="client polling interval (default 10 ms)")
    args = ap.parse_args()
    poll = args.poll_ms / 1000
    with real_cloud() as api:
        api.post("/v1/instances", json={"name": "snap-vm", "image": "busybox", "memory_mib": 32}).raise_for_status()
        wait_ready(api, "/v1/instances/snap-vm", 0.1)
        api.post("/v1/volumes", json={"name": "snap-vol", "size_gib": 1}).raise_for_status()
        vol = wait_ready(api, "/v1/volumes/snap-vol", 0.1)
        home = Path(str(api.get("/v1/info").json()["home"]))
        data = home / "pool" / "volumes" / str(vol["id"]) / "data"
        subprocess.run(["dd", "if=/dev/urandom", f"of={data}", "bs=4M", "count=64", "status=none"], check=True)
        subprocess.run(["sync"], check=True)
        rows = [
            ("running busybox instance (root disk, frozen)", *timed_snapshots(api, "snap-vm", args.runs, poll)),
            ("1 GiB volume, 256 MiB written", *timed_snapshots(api, "snap-vol", args.runs, poll)),
        ]
    print(
        f"| POST /v1/snapshots → ready, through the API (client polls every {args.poll_ms:g} ms) | n | p50 | p95 | ",
        end="",
    )
    print("agent's took_ms, median |")
    print("|---|---|---|---|---|")
    for label, walls, took in rows:
        print(
            f"| {label} | {len(walls)} | {percentile(walls, 50):.0f} ms | {percentile(walls, 95):.0f} ms | "
            f"{statistics.median(took):.1f} ms |"
        )


if __name__ == "__main__":
    main()
