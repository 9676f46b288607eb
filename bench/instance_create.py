"""create→running latency of busybox instances: 50 one after another, then 20 at once (p50/p99)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud  # noqa: E402


def wait_running(api: httpx.Client, names: list[str], t0: dict[str, float]) -> dict[str, float]:
    done: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(done) < len(names) and time.monotonic() < deadline:
        for item in api.get("/v1/instances").json()["items"]:
            if item["name"] in t0 and item["name"] not in done and item["state"] == "running":
                done[item["name"]] = time.monotonic() - t0[item["name"]]
        time.sleep(0.005)
    return done


def main() -> None:
    with real_cloud() as api:
        serial = []
        for i in range(50):
            name = f"s-{i}"
            t0 = {name: time.monotonic()}
            api.post("/v1/instances", json={"name": name, "image": "busybox", "memory_mib": 32}).raise_for_status()
            serial.append(wait_running(api, [name], t0)[name])
        t0 = {}
        names = [f"p-{i}" for i in range(20)]
        for name in names:
            t0[name] = time.monotonic()
            api.post("/v1/instances", json={"name": name, "image": "busybox", "memory_mib": 32}).raise_for_status()
        parallel = list(wait_running(api, names, t0).values())
    print("| create→running (busybox, runc) | n | p50 | p99 |")
    print("|---|---|---|---|")
    for label, vals in (("one after another", serial), ("20 at once", parallel)):
        print(f"| {label} | {len(vals)} | {percentile(vals, 50):.3f} s | {percentile(vals, 99):.3f} s |")


if __name__ == "__main__":
    main()
