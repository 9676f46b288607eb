"""One seeded simulation run (`cloudlet sim run`): a world of N hosts and M instances, a fault schedule, the
invariants checked after every step, and a report that is the same for the same parameters, byte for byte.

Steps: WARMUP steps for the workload to boot (and its replicas to ship once), faults starting within the first
half of the run, then at least BOUND steps after the last one ends: by then every stack is back at its count.
"""

from __future__ import annotations

__all__ = ["SimParams", "SimReport", "SimulationFailed", "run", "run_many", "command", "BOUND", "WARMUP"]

import dataclasses
import gc
import logging
import os
import random
import shutil
import signal
import tempfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.resource import INSTANCE
from cloudlet.core.clock import VirtualClock
from cloudlet.core.errors import CloudletError
from cloudlet.resilience.simulation import faults
from cloudlet.resilience.simulation.determinism import Deterministic
from cloudlet.resilience.simulation.invariants import Violation, check, stack_shortfalls
from cloudlet.resilience.simulation.world import World

WARMUP = 10
WINDOW = 8  # steps within which the faults start, plus one per 20 hosts (--steps: the first half after WARMUP)
BOUND = 40  # steps (virtual seconds) after the last fault's end within which every stack is at its count again


class SimulationFailed(CloudletError):
    """A forked simulation died without a report."""


class SimParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    hosts: int = Field(10, ge=2, le=5000)
    instances: int = Field(50, ge=0, le=100_000)
    zones: int = Field(3, ge=1, le=10)
    steps: int | None = Field(None, ge=WARMUP + 2, description="steps in all (one virtual second each)")
    faults: list[str] = list(faults.KINDS)
    world_seed: int | None = None  # the workload's seed, if not `seed` (run_many shares one world among seeds)


class SimReport(BaseModel):
    params: SimParams
    ok: bool
    steps: int
    faults: list[str]
    violation: dict[str, Any] | None = None
    reproduce: str
    summary: dict[str, Any]

    def text(self) -> str:
        p = self.params
        lines = [
            (
                f"simulation seed {p.seed}: {p.hosts} hosts in {p.zones} zones, {p.instances} instances, "
                f"{self.summary['stacks']} stacks, {self.steps} steps"
            ),
            *(f"  {f}" for f in self.faults),
            "  " + ", ".join(f"{k} {v}" for k, v in self.summary.items() if k != "stacks"),
        ]
        if self.violation is None:
            lines.append("ok: every invariant held after every step")
        else:
            v = self.violation
            lines += [f"VIOLATION {v['invariant']} at step {v['step']}: {v['detail']}", f"reproduce: {self.reproduce}"]
        return "\n".join(lines)


def command(p: SimParams) -> str:
    steps = f" --steps {p.steps}" if p.steps is not None else ""
    world = f" --world-seed {p.world_seed}" if p.world_seed is not None and p.world_seed != p.seed else ""
    return (
        f"cloudlet sim run --seed {p.seed}{world} --hosts {p.hosts} --instances {p.instances} --zones {p.zones}"
        f"{steps} --faults {','.join(p.faults)}"
    )


@contextmanager
def _quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)  # the code under test logs every fault it handles; the report says what counts
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def run(p: SimParams, home: Path | None = None) -> SimReport:
    if home is None:
        with tempfile.TemporaryDirectory(prefix="cloudlet-sim-") as tmp:
            return run(p, Path(tmp))
    clock = VirtualClock(100.0)
    with _quiet(), Deterministic(clock, p.world_seed if p.world_seed is not None else p.seed):
        return _break(p, _build(p, home, clock))


def run_many(base: SimParams, seeds: Iterable[int], jobs: int = 1) -> Iterator[SimReport]:
    """One world (base's size, built from `world_seed`, 0 if unset) for many fault schedules: it is built and
    warmed up once, and each seed runs in a forked copy of this process with a copy of its home (database, agents'
    cache files), `jobs` at a time, so a seed costs only its faults. Each report equals `run` of its own parameters (`reproduce` says them);
    they come in the order of `seeds`."""
    world_seed = base.world_seed or 0
    with tempfile.TemporaryDirectory(prefix="cloudlet-sim-") as tmp:
        home = Path(tmp)
        clock = VirtualClock(100.0)
        same = Deterministic(clock, world_seed)  # entered for each stretch: between reports the caller's clocks
        with _quiet(), same:
            world = _build(base.model_copy(update={"world_seed": world_seed}), home / "world", clock)
            with world.cloud.store.engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the file alone holds every write
        # the world's objects out of the collector's reach: a child's collections no longer walk them all (nor
        # copy every page they touch); what a seed allocates is collected as usual
        gc.freeze()
        running: deque[tuple[SimParams, int, int]] = deque()  # (params, pid, the pipe's read end)
        try:
            for seed in [*seeds, None]:
                if seed is not None:
                    p = base.model_copy(update={"seed": seed, "world_seed": world_seed})
                    with _quiet(), same:
                        running.append((p, *_fork(world, p)))
                while running and (seed is None or len(running) >= jobs):
                    yield _report(*running.popleft())
        finally:
            gc.unfreeze()
            for _, pid, read in running:  # a failure or a caller that stopped early: no child left behind
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(read)


def _fork(world: World, p: SimParams) -> tuple[int, int]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a home of its own (database, cache files), its faults, its report down the pipe
        code = 1
        try:
            os.close(read)
            home = world.sim.config.home
            mine = home.with_name(f"{home.name}-seed-{p.seed}")
            shutil.copytree(home, mine, ignore=shutil.ignore_patterns("*-wal", "*-shm"))  # checkpointed: empty
            url = f"sqlite:///{mine / Path(sa.make_url(world.cloud.store.url).database or '').name}"
            world.cloud.store.reopen(url)
            world.sim.config = dataclasses.replace(world.sim.config, home=mine, db_url=url)
            with os.fdopen(write, "w") as out:
                out.write(_break(p, world).model_dump_json())
            shutil.rmtree(mine)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def _report(p: SimParams, pid: int, read: int) -> SimReport:
    with os.fdopen(read) as got:
        text = got.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not text:
        raise SimulationFailed(f"the simulation of seed {p.seed} died (status {status}): {command(p)}")
    return SimReport.model_validate_json(text)


def _build(p: SimParams, home: Path, clock: VirtualClock) -> World:
    """The world of p's size from its world seed, booted: WARMUP steps."""
    world_seed = p.world_seed if p.world_seed is not None else p.seed
    world = World(home, clock, world_seed, p.hosts, p.zones)
    world.populate(p.instances, random.Random(world_seed))
    for _ in range(WARMUP):
        world.step()
    return world


def _break(p: SimParams, world: World) -> SimReport:
    """p's fault schedule on a booted world, every invariant checked after every step."""
    rng = random.Random(p.seed)
    world.reseed(p.seed)
    begin = world.steps
    window = max(1, (p.steps - WARMUP) // 2) if p.steps else WINDOW + p.hosts // 20
    plan = faults.schedule(rng, p.faults, world.names, begin, begin + window)
    last = max((f.end for f in plan), default=begin)
    total = p.steps or last + BOUND + 1
    violation: tuple[int, Violation] | None = None
    crashed: set[str] = set()
    for step in range(begin, total):
        for f in plan:
            if f.end == step and f.steps:
                faults.end(world, f)
        for host in sorted(world.dead - crashed - world.cut_cp):
            world.restart_agent(host, boot=True)  # fenced with nothing keeping it down: it boots again
        for f in plan:
            if f.at == step:
                faults.start(world, f, rng)
        crashed = {f.host for f in plan if f.kind == "host-crash" and f.at <= step < f.end and f.host}
        world.step()
        found = check(world, settled_after=world.clock.now() if step >= last + BOUND else None)
        world.hosts.promotions.clear()
        if found:
            violation = (step, found[0])
            break
        if not p.steps and step >= last and not world.dead and not stack_shortfalls(world):
            break  # every fault is over and every stack is whole again: nothing left to prove
    return SimReport(
        params=p,
        ok=violation is None,
        steps=world.steps,
        faults=[f.describe() for f in plan],
        violation=None if violation is None else {"step": violation[0], **violation[1].__dict__},
        reproduce=command(p),
        summary=_summary(world),
    )


def _summary(world: World) -> dict[str, Any]:
    store = world.cloud.store
    states = Counter(str(r.status.get("state")) for r in store.list(INSTANCE))
    reasons: Counter[str] = Counter()
    for tenant in world.tenants:
        reasons.update(e.reason for e in store.list_events(tenant, limit=100_000))
    return {
        "stacks": len(world.stacks),
        "running": states.get("running", 0),
        "not running": sum(states.values()) - states.get("running", 0),
        "fenced": len(world.fence.fenced),
        "self-fenced": reasons["SelfFenced"],
        "recovered": reasons["Recovered"],
        "from replica": reasons["RecoveredFromReplica"],
    }
