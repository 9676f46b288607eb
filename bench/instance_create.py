"""create→running latency of busybox instances: 50 one after another, then 20 at once (p50/p99), in --runs fresh
clouds (default 3), printing each run and the median and range over the runs.

Latency is the daemon's own record: from the record's creation (the API call) to the moment the agent saw the
instance running, read from the records after the fact; the benchmark's own polling (every 50 ms, to know when to
go on) does not steal CPU from what it measures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud, spread


def wait_running(api: httpx.Client, names: list[str]) -> list[float]:
    done: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(done) < len(names) and time.monotonic() < deadline:
        time.sleep(0.05)
        for item in api.get("/v1/instances").json()["items"]:
            if item["name"] in names and item["state"] == "running":
                done[item["name"]] = item["started_at"] - item["created_at"]
    return list(done.values())


def one_run() -> tuple[list[float], list[float]]:
    with real_cloud() as api:
        serial = []
        for i in range(50):
            name = f"s-{i}"
            api.post("/v1/instances", json={"name": name, "image": "busybox", "memory_mib": 32}).raise_for_status()
            serial += wait_running(api, [name])
        names = [f"p-{i}" for i in range(20)]
        for name in names:
            api.post("/v1/instances", json={"name": name, "image": "busybox", "memory_mib": 32}).raise_for_status()
        return serial, wait_running(api, names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh clouds to measure in (default 3)")
    args = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {"one after another": {}, "20 at once": {}}
    print("| create→running (busybox, runc) | run | n | p50 | p99 |")
    print("|---|---|---|---|---|")
    for run in range(1, args.runs + 1):
        for label, vals in zip(results, one_run(), strict=True):
            p50, p99 = percentile(vals, 50), percentile(vals, 99)
            results[label].setdefault("p50", []).append(p50)
            results[label].setdefault("p99", []).append(p99)
            print(f"| {label} | {run} | {len(vals)} | {p50:.3f} s | {p99:.3f} s |", flush=True)
    print()
    print(f"| create→running (busybox, runc), {args.runs} runs | p50: median (range) | p99: median (range) |")
    print("|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {spread(r['p50'])} | {spread(r['p99'])} |")


if __name__ == "__main__":
    main()
