"""A seeded fault schedule and what each fault does to a `World` when it starts and when it ends.

- host-crash: the host powers off (its agent and fake instances die); it boots again when the fault ends (a new
  agent from its cache; the runtime starts what is still placed there).
- partition: the host's agent cannot reach the control plane, and in half the draws its peers either (the
  in-process transport and peer asks refuse); healed at the end (a host fenced meanwhile boots again).
- slow-disk: the host's pool completes received replicas `lag` seconds late (0.5-1.5 s): replication lags.
- agent-restart: a new agent process from the old one's cache; its instances ran on without it.
- control-plane-restart: cloudletd is down for the fault's length, then a new one starts over the same database.
- clock-jump: the virtual clock leaps forward (a stalled machine, a suspended VM) at once.
- duplicate: not a real fault but the checker's own test: a running instance is started on a second host.
"""

from __future__ import annotations

__all__ = ["KINDS", "SELF_TEST", "Fault", "schedule", "start", "end"]

import random
from dataclasses import dataclass

from cloudlet.core.errors import BadRequest
from cloudlet.resilience.simulation.world import World

KINDS = ("host-crash", "partition", "slow-disk", "agent-restart", "control-plane-restart", "clock-jump")
SELF_TEST = "duplicate"
INSTANT = ("agent-restart", "clock-jump", SELF_TEST)


@dataclass(frozen=True)
class Fault:
    at: int  # the step it starts at
    kind: str
    host: str | None
    steps: int  # how long it lasts (0: instant)
    size: float = 0.0  # clock-jump: seconds; slow-disk: lag seconds; partition: 1 if peers are cut too

    @property
    def end(self) -> int:
        return self.at + self.steps

    def describe(self) -> str:
        what = {
            "clock-jump": f"clock jumps {self.size:g} s",
            "slow-disk": f"disk of {self.host} lags {self.size:g} s for {self.steps} s",
            "partition": f"{self.host} cut from the control plane{' and its peers' if self.size else ''} "
            f"for {self.steps} s",
            "host-crash": f"{self.host} crashes for {self.steps} s",
            "agent-restart": f"agent of {self.host} restarts",
            "control-plane-restart": f"cloudletd down for {self.steps} s, then restarted",
            SELF_TEST: "an instance is started on a second host (checker self-test)",
        }
        return f"step {self.at:4d}: {self.kind}: {what[self.kind]}"


def schedule(rng: random.Random, kinds: list[str], hosts: list[str], first: int, last: int) -> list[Fault]:
    """Faults starting between steps first and last: 1-3 plus one per 50 hosts, each a kind of `kinds`."""
    for kind in kinds:
        if kind not in (*KINDS, SELF_TEST):
            raise BadRequest(f"unknown fault {kind!r}; faults: {', '.join(KINDS)}")
    if not kinds:
        return []
    out = []
    for _ in range(rng.randint(1, 3) + len(hosts) // 50):
        kind = rng.choice(kinds)
        at, host = rng.randint(first, last), rng.choice(hosts)
        steps = 0 if kind in INSTANT else rng.randint(2, 12)
        size = {
            "clock-jump": float(rng.randint(1, 15)),
            "slow-disk": rng.choice([0.5, 1.0, 1.5]),
            "partition": float(rng.random() < 0.5),
        }.get(kind, 0.0)
        out.append(Fault(at, kind, None if kind in ("clock-jump", "control-plane-restart") else host, steps, size))
    return sorted(out, key=lambda f: (f.at, f.kind, f.host or ""))


def start(world: World, fault: Fault, rng: random.Random) -> None:
    host = fault.host or ""
    if fault.kind == "host-crash" and host not in world.dead:
        world.power_off(host)
    elif fault.kind == "partition" and host not in world.dead:
        world.cut(host, peers=bool(fault.size))
    elif fault.kind == "slow-disk":
        world.pools[host].lag = fault.size
    elif fault.kind == "agent-restart" and host not in world.dead:
        world.restart_agent(host)
    elif fault.kind == "control-plane-restart" and not world.cp_down:
        world.stop_control_plane()
    elif fault.kind == "clock-jump":
        world.jump(fault.size)
    elif fault.kind == SELF_TEST:
        world.duplicate(rng)


def end(world: World, fault: Fault) -> None:
    host = fault.host or ""
    if fault.kind == "partition":
        world.heal(host)
    elif fault.kind == "slow-disk":
        world.pools[host].lag = 0.0
    elif fault.kind == "control-plane-restart" and world.cp_down:
        world.start_control_plane()
    if host in world.dead and fault.kind in ("host-crash", "partition"):
        world.restart_agent(host, boot=True)  # powered off by the crash or by a fence: it boots again
