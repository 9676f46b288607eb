"""What makes a seed replay exactly: the wall clock and record ids follow the simulation, not the machine.

The code a simulation drives reads `time.time()` for timestamps that steer decisions (a replica's next cycle, a
heartbeat's age) and `time.perf_counter()` for durations that feed back into them (a replication cycle's length
sets the next one's start); record ids are ULIDs (wall time plus randomness) and lists come back in id order. Inside
`Deterministic`, both clocks read the virtual clock and ids come from a seeded counter, ordered like ULIDs. Every
work queue gets a seeded rng for its backoff jitter (`seed_queues`).
"""

from __future__ import annotations

__all__ = ["Deterministic", "seed_queues", "EPOCH"]

import random
import time
from typing import Any

from cloudlet.core import records
from cloudlet.core.clock import Clock
from cloudlet.core.reconcile import Manager

EPOCH = 1_800_000_000.0  # the virtual clock's zero as a wall time: timestamps look like dates, and stay positive


class _SeededUlid:
    """Stands in for `ulid.ULID()`: str() gives 26 lowercase characters, increasing with each one made."""

    def __init__(self, rng: random.Random, counter: list[int]) -> None:
        counter[0] += 1
        self._text = f"{counter[0]:010x}{rng.getrandbits(64):016x}"

    def __str__(self) -> str:
        return self._text


class Deterministic:
    """Entered around every stretch of a simulation (and left between them: a caller iterating over reports keeps
    its own clocks); the id sequence goes on from one stretch to the next."""

    def __init__(self, clock: Clock, seed: int) -> None:
        self.clock = clock
        self._rng, self._counter = random.Random(f"ids-{seed}"), [0]
        self._saved: tuple[Any, ...] = ()

    def __enter__(self) -> None:
        names = vars(records)  # records.new_id looks ULID up there at each call
        self._saved = time.time, time.perf_counter, names["ULID"]
        time.time = lambda: EPOCH + self.clock.now()
        time.perf_counter = self.clock.now
        names["ULID"] = lambda: _SeededUlid(self._rng, self._counter)

    def __exit__(self, *_: object) -> None:
        time.time, time.perf_counter, vars(records)["ULID"] = self._saved


def seed_queues(managers: list[Manager], seed: int, salt: str) -> None:
    for i, manager in enumerate(managers):
        manager.queue.rng = random.Random(f"{seed}-{salt}-{i}")
