"""Memory per idle instance beyond its own processes: the host's used memory grows by X per instance; the
instance's processes account for their PSS; the rest is overhead (netns, veth, overlay, cgroups, runc state)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import real_cloud

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


def main() -> None:
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
    per = (after - before) / N
    own = procs / N
    print("| idle instance memory (busybox sleep) | per instance |")
    print("|---|---|")
    print(f"| host memory used | {per / 1024:.2f} MiB |")
    print(f"| its own processes (PSS) | {own / 1024:.2f} MiB |")
    print(f"| overhead beyond its processes | {(per - own) / 1024:.2f} MiB |")


if __name__ == "__main__":
    main()
