"""create→running latency of busybox instances: 50 one after another, then 20 at once (p50/p99).

Latency is the daemon's own record: from the record's creation (the API call) to the moment the reconciler saw
the instance running, so the benchmark's polling (every 50 ms) does not steal CPU from what it measures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud


def wait_running(api: httpx.Client, names: list[str]) -> list[float]:
    done: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(done) < len(names) and time.monotonic() < deadline:
        time.sleep(0.05)
        for item in api.get("/v1/instances").json()["items"]:
            if item["name"] in names and item["state"] == "running":
                done[item["name"]] = item["started_at"] - item["created_at"]
    return list(done.values())


def main() -> None:
    with real_cloud() as api:
        serial = []
        for i in range(50):
            name = f"s-{i}"
            api.post("/v1/instances", json={"name": name, "image": "busybox", "memory_mib": 32}).raise_for_status()
            serial += wait_running(api, [name])
        names = [f"p-{i}" for i in range(20)]
        for name in names:
            api.post("/v1/instances", json={"name": name, "image": "busybox", "memory_mib": 32}).raise_for_status()
        parallel = wait_running(api, names)
    print("| create→running (busybox, runc) | n | p50 | p99 |")
    print("|---|---|---|---|")
    for label, vals in (("one after another", serial), ("20 at once", parallel)):
        print(f"| {label} | {len(vals)} | {percentile(vals, 50):.3f} s | {percentile(vals, 99):.3f} s |")


if __name__ == "__main__":
    main()
