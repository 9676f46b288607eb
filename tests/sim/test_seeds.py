"""The deterministic simulation (issue 11): many seeded fault schedules on small clouds hold every invariant, the
same seed prints the same report, and a broken invariant is caught with the command that reproduces it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cloudlet.resilience.simulation import SimParams, command, run
from cloudlet.resilience.simulation.runner import run_many

SMALL = SimParams(hosts=3, instances=9)


# 1,000 seeds take about a minute on this machine's 2 shared cores, two at a time (bench/sim.py)
def test_seeded_fault_schedules_hold_every_invariant() -> None:
    count = 1000
    started = time.monotonic()
    failed = [r.text() for r in run_many(SMALL, range(count), jobs=2) if not r.ok]
    took = time.monotonic() - started
    assert failed == [], "\n\n".join(failed[:3])
    print(f"{count} seeds in {took:.1f} s ({count / took:.1f} seeds/s)")


def test_a_seed_of_a_shared_world_replays_alone_and_in_another_process() -> None:
    shared = list(run_many(SimParams(hosts=5, instances=20), [7, 8]))
    alone = run(shared[0].params)
    assert alone.model_dump() == shared[0].model_dump()
    assert shared[0].model_dump() != shared[1].model_dump()  # another seed, another schedule
    # a fresh interpreter with another hash seed (set and dict orders of strings) prints the same, byte for byte
    argv = [sys.executable, "-m", "cloudlet.cli.main", "sim", "run", *command(alone.params).split()[3:], "--json"]
    outs = [
        subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": h}, check=False)
        for h in ("1", "2")
    ]
    assert outs[0].stdout == outs[1].stdout and outs[0].returncode == (0 if alone.ok else 1)


def test_a_broken_invariant_is_caught_with_the_command_that_reproduces_it() -> None:
    """The checker can fail: a 'fault' that starts a running instance on a second host (as a broken fence would)."""
    seed = 1
    p = SimParams(seed=seed, hosts=4, instances=12, faults=["duplicate"])
    report = run(p)
    assert not report.ok and report.violation is not None
    assert report.violation["invariant"] == "instance-twice" and "runs on hosts" in report.violation["detail"]
    assert (
        report.reproduce
        == command(p)
        == (f"cloudlet sim run --seed {seed} --hosts 4 --instances 12 --zones 3 --faults duplicate")
    )
    text = report.text()
    assert "VIOLATION instance-twice" in text and f"reproduce: {report.reproduce}" in text
    again = subprocess.run(
        [sys.executable, "-m", "cloudlet.cli.main", *report.reproduce.split()[1:]], capture_output=True, text=True
    )
    assert again.returncode == 1 and again.stdout.strip() == text
