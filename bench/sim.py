"""Deterministic simulation speed: wall time per 1,000 seeds on small clouds (one shared booted world, a forked copy
per seed), and single runs of large clouds with every fault kind, each phase timed and profiled (where it goes).
A large run that passes --limit stops there and says which phase it was in and what its time went to so far.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from cloudlet.core.clock import VirtualClock
from cloudlet.resilience.simulation.determinism import Deterministic
from cloudlet.resilience.simulation.runner import WARMUP, SimParams, _break, run_many
from cloudlet.resilience.simulation.world import World


class OutOfTime(BaseException):  # not an Exception: the code under test catches those and retries
    pass


def seeds_row(count: int, hosts: int, instances: int, jobs: int) -> None:
    started, bad, steps = time.monotonic(), 0, 0
    for report in run_many(SimParams(hosts=hosts, instances=instances), range(count), jobs=jobs):
        bad += not report.ok
        steps += report.steps
    took = time.monotonic() - started
    print(
        f"| {count} | {hosts} hosts, {instances} instances | {jobs} | {took:.1f} s | {took / count * 1000:.1f} s "
        f"| {count / took:.1f} | {steps / count:.1f} | {bad} |",
        flush=True,
    )


def big_run(hosts: int, instances: int, limit: int) -> None:
    """One large run with every fault kind; phases timed on the monotonic clock (the simulation's own clocks are
    virtual), the profile's top functions printed at the end or when --limit runs out."""
    phase, marks = "start", [time.monotonic()]
    profile = cProfile.Profile()

    def out_of_time(_sig: int, _frame: FrameType | None) -> None:
        raise OutOfTime

    def mark(name: str) -> None:
        nonlocal phase
        marks.append(time.monotonic())
        print(f"  {phase} took {marks[-1] - marks[-2]:.1f} s", flush=True)
        phase = name

    logging.disable(logging.CRITICAL)  # the code under test logs every fault it handles
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(limit)
    clock = VirtualClock(100.0)
    p = SimParams(seed=1, hosts=hosts, instances=instances)
    profile.enable()
    try:
        with tempfile.TemporaryDirectory() as tmp, Deterministic(clock, p.seed):
            phase = "hosts"
            world = World(Path(tmp), clock, p.seed, hosts, p.zones)
            mark("workload")
            world.populate(instances, random.Random(p.seed))
            mark("boot")
            for _ in range(WARMUP):
                world.step()
            mark("faults")
            report = _break(p, world)
            mark("done")
        print(report.text(), flush=True)
        print(f"  wall {marks[-1] - marks[0]:.1f} s, {report.steps} steps", flush=True)
    except OutOfTime:
        print(f"  stopped after {limit} s in phase {phase} ({time.monotonic() - marks[-1]:.1f} s into it)")
    profile.disable()
    signal.alarm(0)
    for order, column, title in (("cumulative", 3, "cloudlet's functions, with what they call"), ("tottime", 1, "own")):
        text = io.StringIO()
        where = r"src/cloudlet/(?!resilience/simulation)" if order == "cumulative" else ""
        pstats.Stats(profile, stream=text).sort_stats(order).print_stats(where, 12)
        print(f"  where it went ({title} time, top 12):")
        for line in text.getvalue().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[0].replace("/", "").isdigit() and parts[1].replace(".", "").isdigit():
                print(f"    {parts[column]:>8} s  {parts[5].split('site-packages/')[-1].split('src/')[-1]}")
    print(f"  peak memory {peak_mib()} MiB", flush=True)


def peak_mib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--small", default="3x9", help="HOSTSxINSTANCES of the seeds' cloud (default 3x9)")
    ap.add_argument("--jobs", default="1,2", help="forked seeds at a time, one row each (default 1,2)")
    ap.add_argument("--big", default="1000x20000", help="HOSTSxINSTANCES of the single runs (default 1000x20000)")
    # 1,000 hosts / 20,000 instances took 2,547 s under the profiler (README)
    ap.add_argument("--limit", type=int, default=3600, help="seconds a single run may take (default 3600)")
    args = ap.parse_args()
    if args.seeds:
        hosts, instances = map(int, args.small.split("x"))
        print("| seeds | cloud | jobs | wall | per 1,000 seeds | seeds/s | steps/seed | violations |")
        print("|---|---|---|---|---|---|---|---|")
        for jobs in map(int, args.jobs.split(",")):
            seeds_row(args.seeds, hosts, instances, jobs)
    for size in filter(None, args.big.split(",")):
        hosts, instances = map(int, size.split("x"))
        print(f"{hosts} hosts, {instances} instances, 3 zones, every fault kind:", flush=True)
        pid = os.fork()  # each in a process of its own: its memory and a timer of its own
        if pid == 0:
            try:
                big_run(hosts, instances, args.limit)
            except Exception:  # os._exit below would swallow it
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(0)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
