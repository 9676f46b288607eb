"""Time placement takes per instance: filters and weights over every host, the decision record included (what
the scheduler stores), on a real store (SQLite) with hosts in three zones. Ungrouped instances, and a stack
layer's (a group: anti-affinity and the zones/hosts weights), each repeated --runs times on fresh stores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import spread

from cloudlet.compute.hosts import register_host
from cloudlet.compute.placement import Placement
from cloudlet.core.clock import VirtualClock
from cloudlet.core.store import Store


def one_run(hosts: int, count: int, group: str | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/state.db")
        store.migrate()
        for i in range(hosts):
            register_host(store, f"h{i:04d}", f"zone-{'abc'[i % 3]}", 32, 256 * 1024)
        p = Placement(store, VirtualClock())
        started = time.perf_counter()
        for _ in range(count):
            p.place(64, tenant="t1", group=group).record()
        took = time.perf_counter() - started
        store.close()
        return took / count * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh stores per row (default 3)")
    args = ap.parse_args()
    print(f"| hosts | instances | group | per placement, {args.runs} runs: median (range) |")
    print("|---|---|---|---|")
    for hosts, count in ((3, 300), (101, 1000), (1000, 300)):
        for group in (None, "shop/web"):
            vals = [one_run(hosts, count, group) for _ in range(args.runs)]
            print(f"| {hosts} | {count} | {group or '-'} | {spread(vals, 'ms')} |", flush=True)


if __name__ == "__main__":
    main()
