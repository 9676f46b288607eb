"""Time to plan a 1,000-resource stack on the fake cloud (goal ≤ 1 s): parse the YAML, list what the stack owns,
compare. Measured with nothing made yet (all creates), with everything made (all unchanged, the usual case of
applying the same file again) and with a count changed (creates and deletes), each repeated --runs times.

The fake cloud is the real control plane over SQLite on fake drivers (resilience/sim.py); the plan is the API's
own service function, without the HTTP layer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import spread

from cloudlet.core.clock import VirtualClock
from cloudlet.core.context import Caller
from cloudlet.resilience.sim import SimCloud
from cloudlet.stacks import stacks

ADMIN = Caller("admin", "admin")


def document(layers: int, count: int) -> str:
    """`layers` layers of `count` instances with one volume each: 2 x layers x count resources."""
    body = "".join(
        f"  l{i}:\n    count: {count}\n    memory: 16\n    volumes: [{{name: data, size_gib: 1}}]\n"
        for i in range(layers)
    )
    return "name: big\nlayers:\n" + body


def timed(sim: SimCloud, text: str, runs: int) -> tuple[list[float], dict[str, int]]:
    times, summary = [], {}
    for _ in range(runs):
        started = time.perf_counter()
        summary = stacks.plan_stack(sim.cloud, ADMIN, text)["summary"]
        times.append(time.perf_counter() - started)
    return times, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="plans per case (default 5)")
    args = ap.parse_args()
    text = document(layers=5, count=100)  # 500 instances + 500 volumes
    rows = []
    with tempfile.TemporaryDirectory() as home:
        sim = SimCloud(Path(home), clock=VirtualClock())
        rows.append(("nothing made yet", *timed(sim, text, args.runs)))
        stacks.apply_stack(sim.cloud, ADMIN, text)
        stack = sim.cloud.store.get(stacks.KIND, "admin", "big")
        stacks.StackReconciler(sim.cloud).reconcile(stack.id)  # makes the records (not stepped: nothing boots)
        rows.append(("all 1,000 made", *timed(sim, text, args.runs)))
        rows.append(("one layer 100 -> 50", *timed(sim, text.replace("count: 100", "count: 50", 1), args.runs)))
        sim.stop()
    print(f"{'case':<22} {'plan time, median (min-max)':<30} plan")
    for case, times, summary in rows:
        what = ", ".join(f"{n} {op}" for op, n in summary.items() if n)
        print(f"{case:<22} {spread([t * 1000 for t in times], 'ms', 0):<30} {what}")


if __name__ == "__main__":
    main()
