"""Placement: filters, then weights, and a record of why.

Filters run in order and the first that rejects a host names it: host-state (phase `up`, heartbeat fresh),
volumes (attached volumes that hold data pin an instance to their host), cordoned, zone, memory, cpus,
anti-affinity. Anti-affinity keeps the members of one group (a stack layer's
`STACK/LAYER`, per tenant) apart: by default ("prefer") a host holding a live member is rejected only while another
host that passed every other filter holds none; `hosts` rejects it always. Weights rank the hosts left: each is a
named function times its multiplier, and the highest total wins (ties: the first name). Group members spread over
zones first (members per host of the zone), then over hosts; then every instance spreads by count; free memory and
the host's CPU pressure (PSI, from its heartbeats) break the rest.

Every decision lists each host's verdict, so `cloudlet instance why` and "no valid host" errors say which filter
rejected which host. Used capacity is cached and refreshed every few (clock) seconds, so placing thousands of
instances does not rescan every record each time.
"""

from __future__ import annotations

__all__ = [
    "Host",
    "Request",
    "Verdict",
    "Decision",
    "NoValidHost",
    "Placement",
    "FILTERS",
    "WEIGHTS",
    "CPU_RATIO",
    "MAX_LISTED",
    "explain",
]

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from cloudlet.compute.hosts import STALE_AFTER
from cloudlet.compute.resource import HOST, INSTANCE, HostSpec, HostStatus, InstanceSpec, InstanceStatus
from cloudlet.core.clock import Clock, RealClock
from cloudlet.core.context import SYSTEM_TENANT
from cloudlet.core.errors import InvalidSpec
from cloudlet.core.records import Resource
from cloudlet.core.store import Store

CPU_RATIO = 64  # vCPUs committed per core at most: CPU time is shared, not reserved (memory is), so this only
# stops a host from being piled with hundreds of vCPUs; one instance never gets more vCPUs than its host has cores
MAX_LISTED = 64  # hosts a decision record lists; the rest are counted
AntiAffinity = Literal["prefer", "hosts"]


@dataclass(frozen=True)
class Host:
    name: str
    zone: str
    cpus: int
    memory_mib: int
    phase: str
    cordoned: bool = False
    pressure: float = 0.0  # CPU PSI "some avg10" (% of time tasks waited), from the host's heartbeats
    heartbeat_age: float | None = None  # seconds since its last heartbeat; None: not known (simulation)


@dataclass(frozen=True)
class Request:
    memory_mib: int
    cpus: float = 0.0
    zone: str | None = None
    tenant: str | None = None
    group: str | None = None  # anti-affinity group, e.g. STACK/LAYER; members are this tenant's instances
    anti_affinity: AntiAffinity = "prefer"
    pinned: str | None = None  # the host holding its attached volumes' data
    pinned_why: str = ""

    def view(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "tenant" and v not in (None, "")}


@dataclass
class Load:
    count: int = 0
    memory_mib: int = 0
    cpus: float = 0.0

    def add(self, memory_mib: int, cpus: float) -> None:
        self.count, self.memory_mib, self.cpus = self.count + 1, self.memory_mib + memory_mib, self.cpus + cpus


@dataclass
class View:
    """What filters and weights see: the load of every host and, for a grouped request, where its members are."""

    load: dict[str, Load]
    members: Counter[str]  # live members of the request's group per host
    zone_members: Counter[str]  # ... per zone
    zone_hosts: Counter[str] = field(default_factory=Counter)  # hosts per zone that passed the other filters
    free_of_group: bool = False  # a host that passed the other filters holds no member


Filter = Callable[[Host, Request, View], str | None]  # a reason when it rejects the host


def host_state(h: Host, r: Request, v: View) -> str | None:
    if h.phase != "up":
        return f"host is {h.phase}"
    if h.heartbeat_age is not None and h.heartbeat_age > STALE_AFTER:
        return f"no heartbeat for {h.heartbeat_age:.0f} s"
    return None


def volumes(h: Host, r: Request, v: View) -> str | None:
    return r.pinned_why if r.pinned and h.name != r.pinned else None


def cordoned(h: Host, r: Request, v: View) -> str | None:
    return "host is cordoned (cloudlet host uncordon lifts it)" if h.cordoned else None


def zone(h: Host, r: Request, v: View) -> str | None:
    return f"host is in {h.zone}, not {r.zone}" if r.zone and h.zone != r.zone else None


def memory(h: Host, r: Request, v: View) -> str | None:
    free = h.memory_mib - v.load[h.name].memory_mib
    return f"needs {r.memory_mib} MiB, {max(free, 0)} MiB free of {h.memory_mib}" if r.memory_mib > free else None


def cpus(h: Host, r: Request, v: View) -> str | None:
    if r.cpus > h.cpus:
        return f"needs {r.cpus:g} vCPUs, host has {h.cpus} cores"
    committed, most = v.load[h.name].cpus, h.cpus * CPU_RATIO
    if committed + r.cpus > most:
        return f"{committed:g} of {most} vCPUs committed ({CPU_RATIO} per core), needs {r.cpus:g} more"
    return None


def anti_affinity(h: Host, r: Request, v: View) -> str | None:
    held = v.members[h.name]
    if r.group is None or held == 0:
        return None
    if r.anti_affinity == "hosts":
        return f"holds {held} of group {r.group} (anti_affinity: hosts)"
    if v.free_of_group:
        return f"holds {held} of group {r.group}; another host holds none"
    return None


FILTERS: tuple[tuple[str, Filter], ...] = (
    ("host-state", host_state),
    ("volumes", volumes),
    ("cordoned", cordoned),
    ("zone", zone),
    ("memory", memory),
    ("cpus", cpus),
    ("anti-affinity", anti_affinity),  # last: "another host" means one that passed the filters above
)

WeightFn = Callable[[Host, Request, View], float | None]  # None: does not apply to this request


@dataclass(frozen=True)
class Weight:
    name: str
    multiplier: float
    fn: WeightFn


def _zones(h: Host, r: Request, v: View) -> float | None:
    return None if r.group is None else -v.zone_members[h.zone] / max(v.zone_hosts[h.zone], 1)


def _hosts(h: Host, r: Request, v: View) -> float | None:
    return None if r.group is None else -float(v.members[h.name])


def _spread(h: Host, r: Request, v: View) -> float | None:
    return -float(v.load[h.name].count)


def _free_memory(h: Host, r: Request, v: View) -> float | None:
    return (h.memory_mib - v.load[h.name].memory_mib - r.memory_mib) / h.memory_mib if h.memory_mib else 0.0


def _pressure(h: Host, r: Request, v: View) -> float | None:
    return -h.pressure / 100.0


# zones over hosts over instance count: a multiplier above the range of the weights below it (free memory and
# pressure are fractions; a host whose tasks wait 20% of the time weighs as one more instance)
WEIGHTS: tuple[Weight, ...] = (
    Weight("zones", 100.0, _zones),
    Weight("hosts", 10.0, _hosts),
    Weight("spread", 1.0, _spread),
    Weight("free-memory", 1.0, _free_memory),
    Weight("pressure", 5.0, _pressure),
)


@dataclass
class Verdict:
    host: str
    zone: str
    verdict: Literal["chosen", "passed", "rejected"]
    filter: dict[str, str] | None = None  # {name, reason} of the filter that rejected it
    weights: dict[str, float] | None = None  # weight name -> value x multiplier
    total: float | None = None
    decided_by: str | None = None  # a passed host: the weight it fell furthest behind the chosen one on

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Decision:
    request: Request
    verdicts: list[Verdict]
    host: str | None = None
    zone: str | None = None

    def record(self) -> dict[str, Any]:
        """What status.placement keeps: the outcome, and the decision as JSON text (`decision()` reads it back).
        Text, because the record travels with the instance to its agent on every status change: as nested data,
        copying 64 hosts' verdicts made each of those copies ten times dearer (tests/sim/test_scale.py: 12 s to
        10 minutes)."""
        order = {"chosen": 0, "passed": 1, "rejected": 2}
        ranked = sorted(self.verdicts, key=lambda v: (order[v.verdict], -(v.total or 0.0), v.host))
        left = Counter(v.verdict for v in ranked[MAX_LISTED:])
        decision = {
            "request": self.request.view(),
            "multipliers": {w.name: w.multiplier for w in WEIGHTS},
            "hosts": [v.record() for v in ranked[:MAX_LISTED]],
            "more": sum(left.values()),
            "more_by_verdict": dict(left),
        }
        counts: Counter[str] = Counter(v.verdict for v in self.verdicts)
        return {
            "chosen": self.host,
            "zone": self.zone,
            "verdicts": {k: counts[k] for k in order},
            "decision": json.dumps(decision, separators=(",", ":")),
        }

    def reasons(self) -> str:
        """Each rejected host and its filter, for the "no valid host" message (bounded like the record)."""
        rejected = sorted((v for v in self.verdicts if v.filter), key=lambda v: v.host)
        parts = [f"{v.host}: {v.filter['name']}: {v.filter['reason']}" for v in rejected[:MAX_LISTED] if v.filter]
        rest = Counter(v.filter["name"] for v in rejected[MAX_LISTED:] if v.filter)
        if rest:
            parts.append(f"and {sum(rest.values())} more ({', '.join(f'{k} {n}' for k, n in sorted(rest.items()))})")
        return "; ".join(parts) or "no hosts registered"


class NoValidHost(InvalidSpec):
    """Every host was rejected; `decision` says by which filter."""

    def __init__(self, decision: Decision) -> None:
        r = decision.request
        what = f"{r.memory_mib} MiB" + (f", {r.cpus:g} vCPU{'' if r.cpus == 1 else 's'}" if r.cpus else "")
        super().__init__(f"no valid host for {what}: {decision.reasons()}")
        self.decision = decision


class Placement:
    def __init__(self, store: Store, clock: Clock, refresh: float = 5.0) -> None:
        self.store = store
        self.clock = clock
        self.refresh = refresh
        # heartbeats carry wall time; a simulation on a virtual clock sends none on a timer, so there only the
        # phase says whether a host is up
        self.check_heartbeats = isinstance(clock, RealClock)
        self._lock = threading.Lock()
        self._loaded_at: float | None = None
        self._hosts: list[Host] = []
        self._load: dict[str, Load] = {}
        self._groups: dict[tuple[str, str], Counter[str]] = {}  # (tenant, group) -> live members per host

    def _refresh(self) -> None:
        now = self.clock.now()
        if self._loaded_at is not None and now - self._loaded_at < self.refresh:
            return
        wall = time.time()
        hosts = []
        for r in self.store.cached(HOST).list(SYSTEM_TENANT):
            spec, st = HostSpec.of(r), HostStatus.of(r)
            age = wall - st.last_heartbeat if self.check_heartbeats and st.last_heartbeat else None
            hosts.append(
                Host(r.name, r.zone or "zone-a", spec.cpus, spec.memory_mib, r.phase, spec.cordoned, st.pressure, age)
            )
        self._hosts = hosts
        load: dict[str, Load] = {}
        groups: dict[tuple[str, str], Counter[str]] = {}
        for res in self.store.list(INSTANCE):
            if res.host is None:
                continue
            ispec = InstanceSpec.of(res)
            load.setdefault(res.host, Load()).add(ispec.memory_mib, ispec.cpus)
            if ispec.group and not res.deleting:
                groups.setdefault((res.tenant, ispec.group), Counter())[res.host] += 1
        self._load, self._groups = load, groups
        self._loaded_at = now

    def largest_memory(self) -> int:
        with self._lock:
            self._refresh()
            return max((h.memory_mib for h in self._hosts), default=0)

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = None

    def place(
        self,
        memory_mib: int,
        zone: str | None = None,
        *,
        cpus: float = 0.0,
        tenant: str | None = None,
        group: str | None = None,
        anti_affinity: AntiAffinity = "prefer",
        pinned: tuple[str | None, str] = (None, ""),
    ) -> Decision:
        """Chooses a host and counts the request on it; raises NoValidHost naming each host's filter.
        pinned: (host, why) when its volumes' data leaves it one host."""
        req = Request(memory_mib, cpus, zone, tenant, group if tenant else None, anti_affinity, *pinned)
        with self._lock:
            self._refresh()
            d = decide(self._hosts, req, self._view(req))
            if d.host is None:
                raise NoValidHost(d)
            self._load.setdefault(d.host, Load()).add(memory_mib, cpus)
            if req.group and req.tenant:
                self._groups.setdefault((req.tenant, req.group), Counter())[d.host] += 1
            return d

    def place_instance(self, res: Resource, zone: str | None, pinned: tuple[str | None, str] = (None, "")) -> Decision:
        """place() with what an instance record asks for (its memory, CPUs, tenant and group), in zone."""
        spec = InstanceSpec.of(res)
        return self.place(
            spec.memory_mib,
            zone,
            cpus=spec.cpus,
            tenant=res.tenant,
            group=spec.group,
            anti_affinity=spec.anti_affinity,
            pinned=pinned,
        )

    def _view(self, req: Request) -> View:
        members: Counter[str] = Counter()
        if req.group and req.tenant:
            members = self._groups.get((req.tenant, req.group), Counter())
        zone_of = {h.name: h.zone for h in self._hosts}
        zone_members: Counter[str] = Counter()
        for host, n in members.items():
            zone_members[zone_of.get(host, "")] += n
        return View(load=self._load, members=members, zone_members=zone_members)


def decide(hosts: list[Host], req: Request, view: View) -> Decision:
    """Pure: every host's verdict for the request, and the winner (none if every host was rejected)."""
    for h in hosts:
        view.load.setdefault(h.name, Load())
    verdicts: dict[str, Verdict] = {}
    candidates: list[Host] = []
    for h in hosts:
        for name, fn in FILTERS[:-1]:
            reason = fn(h, req, view)
            if reason is not None:
                verdicts[h.name] = Verdict(h.name, h.zone, "rejected", {"name": name, "reason": reason})
                break
        else:
            candidates.append(h)
    view.zone_hosts = Counter(h.zone for h in candidates)
    view.free_of_group = any(view.members[h.name] == 0 for h in candidates)
    name, last = FILTERS[-1]
    passed: list[Host] = []
    for h in candidates:
        reason = last(h, req, view)
        if reason is not None:
            verdicts[h.name] = Verdict(h.name, h.zone, "rejected", {"name": name, "reason": reason})
        else:
            passed.append(h)
    best: Verdict | None = None
    for h in passed:
        weights = {}
        for w in WEIGHTS:
            value = w.fn(h, req, view)
            if value is not None:
                weights[w.name] = round(value * w.multiplier, 6) + 0.0  # no "-0.0" in the table
        v = Verdict(h.name, h.zone, "passed", weights=weights, total=round(sum(weights.values()), 6))
        verdicts[h.name] = v
        if best is None or (v.total or 0.0) > (best.total or 0.0) or (v.total == best.total and v.host < best.host):
            best = v
    if best is not None:
        best.verdict = "chosen"
        for v in verdicts.values():
            if v.verdict == "passed":
                v.decided_by = _behind_on(v.weights or {}, best.weights or {})
    ordered = [verdicts[h.name] for h in hosts]
    return Decision(req, ordered, best.host if best else None, best.zone if best else None)


def _behind_on(weights: dict[str, float], best: dict[str, float]) -> str:
    """The weight a host lost most on against the chosen one; an equal total loses on the name."""
    gaps = {k: best[k] - v for k, v in weights.items() if best[k] > v}
    return max(gaps, key=lambda k: gaps[k]) if gaps else "name (equal totals)"


def explain(res: Resource) -> dict[str, Any]:
    """What `instance why` shows: the recorded decision (per host: verdict, filter or weights; no other
    tenant's instances, only counts)."""
    st = InstanceStatus.of(res)
    placement = st.placement or {}
    decision: dict[str, Any] = json.loads(placement["decision"]) if "decision" in placement else {}
    return {
        "name": res.name,
        "state": "deleting" if res.deleting else st.state,
        "host": res.host,
        "zone": res.zone,
        "message": st.message,
        "chosen": placement.get("chosen"),
        "request": decision.get("request", {}),
        "multipliers": decision.get("multipliers", {}),
        "hosts": decision.get("hosts", []),
        "more": decision.get("more", 0),
    }
