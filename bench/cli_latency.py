"""`cloudlet list` with 20 instances, end to end (process start to exit), beside curl of the same endpoint:
the CLI's own cost is the difference. Median and p90 of 15 calls each, repeated --runs times (default 3) in the
same cloud, printing the median and range of the medians."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud_env, spread

CALLS = 15


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="repetitions of the 15 calls (default 3)")
    args = ap.parse_args()
    with real_cloud_env() as (api, env):
        for i in range(20):
            api.post("/v1/instances", json={"name": f"l-{i}", "image": "busybox", "memory_mib": 32}).raise_for_status()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum(i["state"] == "running" for i in api.get("/v1/instances").json()["items"]) == 20:
                break
            time.sleep(0.2)
        cli = [str(Path(sys.executable).parent / "cloudlet"), "list"]
        rows = [("cloudlet list (table)", cli), ("cloudlet list -o json", [*cli, "-o", "json"])]
        token = api.headers["authorization"]
        if shutil.which("curl"):
            rows.append(
                (
                    "curl GET /v1/instances",
                    ["curl", "-sf", "-H", f"Authorization: {token}", f"{str(api.base_url).rstrip('/')}/v1/instances"],
                )
            )
        medians: dict[str, list[float]] = {label: [] for label, _ in rows}
        print(f"| command (20 instances) | run | median of {CALLS} | p90 |")
        print("|---|---|---|---|")
        for run in range(1, args.runs + 1):
            for label, argv in rows:
                timed(argv, env)  # warm the page cache
                vals = [timed(argv, env) for _ in range(CALLS)]
                medians[label].append(percentile(vals, 50))
                print(f"| {label} | {run} | {percentile(vals, 50):.3f} s | {percentile(vals, 90):.3f} s |", flush=True)
        print()
        print(f"| command (20 instances), {args.runs} runs of {CALLS} | median of the medians (range) |")
        print("|---|---|")
        for label, m in medians.items():
            print(f"| {label} | {spread(m)} |")


if __name__ == "__main__":
    main()
