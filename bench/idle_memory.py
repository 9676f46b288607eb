"""Memory per idle instance beyond its own processes: the host's used memory grows by X per instance; the
instance's processes account for their PSS; the rest is overhead (netns, veth, root disk, cgroups, runc state).
MemAvailable moves with the page cache, so one run is noisy: --runs fresh clouds (default 4), median and range."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import real_cloud, spread

N = 20


def used_kib() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return info["MemTotal"] - info["MemAvailable"]


def pss_kib(pid: int) -> int:
    """PSS of a process and all its descendants."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total


def one_run() -> tuple[float, float]:
    """Host memory used per instance and its processes' PSS per instance, in KiB."""
    with real_cloud() as api:
        api.post("/v1/instances", json={"name": "warm", "image": "busybox", "command": ["sleep", "infinity"]})
        time.sleep(2)
        before = used_kib()
        for i in range(N):
            api.post(
                "/v1/instances",
                json={"name": f"idle-{i}", "image": "busybox", "memory_mib": 32, "command": ["sleep", "infinity"]},
            ).raise_for_status()
        while sum(i["state"] == "running" for i in api.get("/v1/instances").json()["items"]) < N + 1:
            time.sleep(0.1)
        time.sleep(2)
        after = used_kib()
        procs = sum(pss_kib(i["pid"]) for i in api.get("/v1/instances").json()["items"] if i["name"] != "warm")
    return (after - before) / N, procs / N


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4, help="fresh clouds to measure in (default 4)")
    args = ap.parse_args()
    rows: dict[str, list[float]] = {"host memory used": [], "its own processes (PSS)": [], "overhead": []}
    print(
        f"| idle instance memory (busybox sleep, {N} instances) | run | host memory used | its processes (PSS) | "
        "overhead beyond its processes |"
    )
    print("|---|---|---|---|---|")
    for run in range(1, args.runs + 1):
        per, own = one_run()
        for key, v in zip(rows, (per, own, per - own), strict=True):
            rows[key].append(v / 1024)
        print(f"| | {run} | {per / 1024:.2f} MiB | {own / 1024:.2f} MiB | {(per - own) / 1024:.2f} MiB |", flush=True)
    print()
    print(f"| idle instance memory, {args.runs} runs | median (range) |")
    print("|---|---|")
    for key, vals in rows.items():
        print(f"| {key} | {spread(vals, 'MiB', 2)} |")
    if min(rows["overhead"]) < 0:
        print("\n(a negative overhead: something else on this machine freed memory during a run; the host figure")
        print("means something only on an otherwise idle machine, the PSS figure always)")


if __name__ == "__main__":
    main()
