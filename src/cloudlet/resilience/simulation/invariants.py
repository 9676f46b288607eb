"""What must hold after every step of a simulation, whatever the faults (DESIGN.md section 9):

- no instance runs twice: no two hosts' fake drivers run (or boot) the same instance;
- one holder per EIP: no two hosts that can be reached NAT the same address (a host cut off or powered off
  answers for nothing);
- no acknowledged resource lost: every create the API answered still exists, unless it was deleted by request;
- every stack is back at its desired count (each layer's instances running) within `bound` seconds of the
  last fault's end;
- RPO within policy: a replica promoted by a recovery was taken at most its interval + `RPO_MARGIN` before its
  source's host failed, counted in time its instances ran (a clock jump is a stall; an earlier outage of the
  source's host wrote nothing either),
  unless the replica host itself was down meanwhile (a second failure: no policy promises that).
"""

from __future__ import annotations

__all__ = ["Violation", "check", "stack_shortfalls", "RPO_MARGIN"]

from collections import Counter
from dataclasses import dataclass

from cloudlet.compute.drivers.base import InstanceState
from cloudlet.compute.resource import INSTANCE
from cloudlet.resilience.simulation.world import World
from cloudlet.stacks import stacks
from cloudlet.stacks.resource import StackSpec

RPO_MARGIN = 2.0  # seconds over the interval: a cycle's own length and a slow disk's lag (faults.py bounds it)
UP = (InstanceState.RUNNING, InstanceState.STARTING)


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str


def check(world: World, settled_after: float | None) -> list[Violation]:
    """`settled_after`: the time from which every stack must be at its count (None: never in this run)."""
    return [
        *_twice(world),
        *_eip_holders(world),
        *_lost(world),
        *(stack_shortfalls(world) if settled_after is not None and world.clock.now() >= settled_after else []),
        *_rpo(world),
    ]


def _twice(world: World) -> list[Violation]:
    where: dict[str, list[str]] = {}
    for host in world.names:
        driver = world.driver(host)
        for iid, inst in driver.instances.items():
            if inst.started_at is not None and driver.get_instance(iid).state in UP:
                where.setdefault(iid, []).append(host)
    twice = sorted((iid, hosts) for iid, hosts in where.items() if len(hosts) > 1)
    names = {r.id: f"{r.tenant}/{r.name}" for r in world.cloud.store.get_many([iid for iid, _ in twice])}
    return [
        Violation("instance-twice", f"instance {names.get(iid, iid)} runs on hosts {', '.join(sorted(hosts))}")
        for iid, hosts in twice
    ]


def _eip_holders(world: World) -> list[Violation]:
    held = Counter(
        address
        for host in world.names
        if host not in world.dead and host not in world.cut_cp
        for address, _ in world.agents[host].ctx.net.public.eips  # type: ignore[attr-defined]
    )
    return [Violation("eip-holders", f"EIP {a} is held by {n} hosts") for a, n in sorted(held.items()) if n > 1]


def _lost(world: World) -> list[Violation]:
    kept = world.cloud.store.existing(sorted(world.acknowledged))
    return [
        Violation("resource-lost", f"{kind} {tenant}/{name} ({rid}) is gone; nobody deleted it")
        for rid, (kind, tenant, name) in sorted(world.acknowledged.items())
        if rid not in world.deleted and rid not in kept
    ]


def stack_shortfalls(world: World) -> list[Violation]:
    store = world.cloud.store
    running = {(r.tenant, r.name) for r in store.list(INSTANCE) if r.status.get("state") == "running"}
    out = []
    for tenant, name in world.stacks:
        stack = store.get(stacks.KIND, tenant, name)
        for layer, spec in StackSpec.of(stack).document.get("layers", {}).items():
            want = int(spec.get("count", 1))
            names = [f"{layer}-{i}" for i in range(1, want + 1)]
            up = sum((tenant, n) in running for n in names)
            if up < want:
                out.append(Violation("stack-count", f"stack {tenant}/{name} layer {layer}: {up} of {want} running"))
    return out


def _rpo(world: World) -> list[Violation]:
    out, failed_at = [], world.failed_at
    for p in world.hosts.promotions:
        failed = failed_at.get(p.source)
        if failed is None or world.was_down(p.host, p.taken_at, failed):
            continue  # its replica host failed too (the newest replica could not land): two failures, no policy
        # written meanwhile: the time between, less the clock's leaps and the source's earlier outages (nothing
        # ran then: an outage that ended just before this failure left the newest replica where it was)
        stalled = sum(size for at, size in world.jumps if p.taken_at <= at < failed)
        lost = failed - p.taken_at - stalled - world.down_for(p.source, p.taken_at, failed)
        if lost > p.interval + RPO_MARGIN:
            out.append(
                Violation(
                    "rpo",
                    f"{p.volume} recovered on host {p.host} from a replica taken {lost:.1f} s before host {p.source} "
                    f"failed (interval {p.interval:g} s + {RPO_MARGIN:g} s)",
                )
            )
    return out
