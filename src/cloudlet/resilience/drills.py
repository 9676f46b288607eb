"""`cloudlet dr drill STACK --to-zone Z [--failback]` (issue 11): the whole stack rebuilt in another zone, each
step timed, with the measured RTO (start -> steady state in Z) and RPO (how much of the newest writes the
recovered copies lack), in cloudletd on a thread of its own; the API answers 202 with the Drill record at once.

A leg (the drill, then the failback the other way) is:
1. pin (t0): the stack's label `cloudlet.io/dr-zone=Z`; its reconciler then sets every instance's spec.zone to Z
   in place (stacks/plan.py), so placement and later recoveries keep them there.
2. fence: data-bearing instances (a replica, or a volume holding data) are stopped for sure: their spec says
   stopped and their agent reported it at that generation.
3. restore: each one boots from its replica on the live host in Z holding it (storage/replication.py
   `recover_from_replica`: root disk and attached volumes); stateless instances are placed again, in Z, from their
   image. A data-bearing instance with no copy in Z refuses the drill before anything is touched.
4. load balancers: placed again in Z (LbPlacer); the EIPs holding them follow (NATed by the holder's host).
5. boot: every instance running on a host in Z, every LB running there.
6. dns: through each Z host agent's resolver, `LAYER-N.STACK.cloudlet` and `LAYER-N.STACK.Z.cloudlet` answer with
   the instance's address and `LAYER.STACK.cloudlet` includes it.
7. steady: health checks healthy, every LB member up, and an HTTP GET through each EIP, sent from the cloud's
   outside namespace, answering 2xx. RTO = t0 -> here.

RPO, per recovered disk: the writes its copy lacks, from the copy's `taken_at` to the moment the instance was
stopped (its writes end there), 0 for a copy taken after; the report also gives the copy's age at t0 (what a zone
lost at t0 would lose). The failback first waits (outside its RTO) for the replicas to reach the original zone.

The report (JSON and a readable summary) is saved under the cloud's home, `drills/<drill>.json|.txt`, and kept on
the Drill record. A cloudletd that stops mid-drill leaves its record saying running: the next one marks it failed.
"""

from __future__ import annotations

__all__ = [
    "DrillRequest",
    "DRILLS",
    "DrillReaper",
    "DrillScheduler",
    "start_drill",
    "drill_view",
    "list_drills",
    "summary",
    "next_drill",
    "EVERY_LABEL",
    "TO_ZONE_LABEL",
    "SINCE_LABEL",
]

import functools
import json
import logging
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
from dnslib import DNSRecord
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudlet.compute.placement import NoValidHost
from cloudlet.compute.resource import HOST, INSTANCE, HostSpec, HostStatus, InstanceSpec, InstanceStatus
from cloudlet.core.context import SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.errors import CloudletError, Conflict, InvalidSpec, TooManyRequests
from cloudlet.core.reconcile import Result, Watches
from cloudlet.core.records import NameRef, Resource
from cloudlet.lb.resource import LOADBALANCER, LoadBalancerSpec, LoadBalancerStatus
from cloudlet.network.netns import run_in_netns
from cloudlet.network.resource import ELASTIC_IP, ElasticIPSpec
from cloudlet.network.underlay import host_netns
from cloudlet.resilience.drill_resource import DRILL, FAILED, RUNNING, SUCCEEDED, DrillSpec, DrillStatus
from cloudlet.stacks.resource import DR_ZONE_LABEL, LAYER_LABEL, STACK, StackSpec, StackStatus
from cloudlet.stacks.spec import StackDoc
from cloudlet.storage import replication
from cloudlet.storage.backups import BackupCreate, create_backup
from cloudlet.storage.resource import BACKUP, VOLUME, BackupSpec, BackupStatus, ReplicaStatus, VolumeSpec, VolumeStatus
from cloudlet.storage.volumes import attached_to

log = logging.getLogger("cloudlet.drills")
TOTAL = 4  # drills at once in all: each moves a whole stack
STOP_WAIT = 30.0  # the runtime gives an init 5 s after TERM before it kills it
STEADY_WAIT = 180.0  # boot, hooks, health checks and LB checks of a whole stack
REPLICA_WAIT = 120.0  # before a failback: the replicas' first cycle into the original zone
RTO_GOAL = {False: 60.0, True: 120.0}  # seconds, from replicas / from backups (issue 11)
POLL = 0.1


class DrillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_zone: NameRef
    from_backups: bool = Field(False, description="restore data from the newest offsite backups, not from replicas")
    failback: bool = Field(False, description="then the same back to the zone the stack ran in")


def _live_hosts(cloud: Cloud, zone: str) -> list[Resource]:
    return [
        h
        for h in cloud.store.list(HOST, tenant=SYSTEM_TENANT)
        if (h.zone or cloud.config.zone) == zone and h.phase == "up" and not HostSpec.of(h).cordoned
    ]


def _instances(cloud: Cloud, stack: Resource) -> list[Resource]:
    return [i for i in cloud.store.list(INSTANCE, tenant=stack.tenant, owner=stack.id) if not i.deleting]


def _owned(cloud: Cloud, stack: Resource, kind: str) -> list[Resource]:
    return [r for r in cloud.store.list(kind, tenant=stack.tenant, owner=stack.id) if not r.deleting]


def _bound(cloud: Cloud, inst: Resource) -> list[Resource]:
    return [v for v in attached_to(cloud, inst) if VolumeStatus.of(v).bound]


def _data_bearing(cloud: Cloud, inst: Resource, from_backups: bool) -> bool:
    """From replicas: it has one, or a volume holding data; from backups only its volumes are restored (the root
    disk comes from its image)."""
    return bool(_bound(cloud, inst)) or (not from_backups and InstanceSpec.of(inst).replicas > 0)


def newest_backup(cloud: Cloud, vol: Resource) -> Resource | None:
    """The newest finished backup of volume vol."""
    found = [
        b
        for b in cloud.store.list(BACKUP, tenant=vol.tenant)
        if b.phase == "ready"
        and not b.deleting
        and BackupSpec.of(b).source_kind == VOLUME
        and BackupSpec.of(b).source == vol.name
    ]
    return max(found, key=lambda b: b.created_at, default=None)


def _backup_in(cloud: Cloud, inst: Resource, zone: str) -> str | None:
    """Why a volume of instance inst has no backup to restore from (None: each has one)."""
    for vol in _bound(cloud, inst):
        if newest_backup(cloud, vol) is None:
            return f"volume {vol.name} of instance {inst.name} has no finished offsite backup"
    return None


def _copy_in(cloud: Cloud, inst: Resource, zone: str) -> str | None:
    """Why instance inst has no copy of its data on a live host in zone (None: it has one there)."""
    rep = replication.replica_of(cloud.store, inst.id)
    st = ReplicaStatus.of(rep) if rep is not None else None
    if rep is None or st is None or st.host is None or st.seq is None:
        return f"instance {inst.name} has no replica (give its layer replicas: 1)"
    live = {h.name for h in _live_hosts(cloud, zone)}
    if st.host not in live:
        return f"instance {inst.name}'s replica is on host {st.host}, not on a live host in {zone}"
    for vol in _bound(cloud, inst):
        vrep = replication.replica_of(cloud.store, vol.id)
        if vrep is None or ReplicaStatus.of(vrep).host != st.host or ReplicaStatus.of(vrep).seq is None:
            return f"volume {vol.name} of instance {inst.name} has no replica on host {st.host} in {zone}"
    return None


def _check_copies(cloud: Cloud, stack: Resource, zone: str, from_backups: bool) -> None:
    """Refuses (409, naming each) when a data-bearing instance of stack has no copy of its data in zone (from
    backups: no backup, which any zone can restore)."""
    copy = _backup_in if from_backups else _copy_in
    missing = [
        why
        for inst in _instances(cloud, stack)
        if _data_bearing(cloud, inst, from_backups)
        and (inst.zone != zone)
        and (why := copy(cloud, inst, zone)) is not None
    ]
    if missing:
        raise Conflict(f"stack {stack.name} has data with no copy in zone {zone}: " + "; ".join(missing))


def start_drill(cloud: Cloud, caller: Caller, name: str, req: DrillRequest) -> dict[str, Any]:
    """Checks the request, makes the Drill record and starts it in the background; its view."""
    stack = cloud.store.get(STACK, caller.tenant, name)
    if stack.deleting:
        raise Conflict(f"stack {name} is being deleted")
    if not _live_hosts(cloud, req.to_zone):
        zones = sorted({h.zone or cloud.config.zone for h in _live_hosts_any(cloud)})
        raise InvalidSpec(f"zone {req.to_zone} has no live host; zones with one: {', '.join(zones) or 'none'}")
    running = [
        d for d in cloud.store.list(DRILL, tenant=stack.tenant) if d.phase == RUNNING and d.spec["stack"] == name
    ]
    if running:
        raise Conflict(f"drill {running[0].name} of stack {name} is running; see it with 'cloudlet dr status'")
    insts = _instances(cloud, stack)
    if not insts:
        raise Conflict(f"stack {name} has no instances to drill")
    if all(i.zone == req.to_zone for i in insts):
        raise Conflict(f"stack {name} runs in zone {req.to_zone} already; drill to another zone")
    _check_copies(cloud, stack, req.to_zone, req.from_backups)
    from_zone = Counter(i.zone or cloud.config.zone for i in insts).most_common(1)[0][0]
    now = time.time()
    status = DrillStatus(from_zone=from_zone, started_at=now)
    res = Resource(
        kind=DRILL,
        tenant=stack.tenant,
        name=f"{name[:46]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}",
        spec=DrillSpec(stack=name, to_zone=req.to_zone, from_backups=req.from_backups, failback=req.failback).dump(),
        status=status.dump(),
        phase=RUNNING,
    )
    if cloud.store.list(DRILL, tenant=stack.tenant, name=res.name):
        raise Conflict(f"a drill of stack {name} started this second already; retry in a second")
    if DRILLS.full():
        raise TooManyRequests(f"{DRILLS.total} drills are running, the most this cloud allows; retry later")
    res = cloud.store.create(res, created=f"drill of stack {name} from zone {from_zone} to zone {req.to_zone}")
    DRILLS.start(cloud, res.id)
    return drill_view(res)


def _live_hosts_any(cloud: Cloud) -> list[Resource]:
    return [h for h in cloud.store.list(HOST, tenant=SYSTEM_TENANT) if h.phase == "up"]


def drill_view(res: Resource) -> dict[str, Any]:
    spec, st = DrillSpec.of(res), DrillStatus.of(res)
    return {"name": res.name, "id": res.id, "state": res.phase, **spec.dump(), **st.dump()}


def list_drills(cloud: Cloud, caller: Caller) -> list[dict[str, Any]]:
    """The caller's drills, newest first."""
    found = cloud.store.list(DRILL, tenant=caller.tenant)
    return [drill_view(r) for r in sorted(found, key=lambda r: r.created_at, reverse=True)]


def _wait(
    what: str, check: Callable[[], str | None], timeout: float, note: Callable[[str], None] | None = None
) -> None:
    """Until check answers None (done); its answer (what is still missing) goes to note about once a second, and
    into the error when time runs out."""
    deadline = time.monotonic() + timeout
    noted = 0.0
    while (missing := check()) is not None:
        if time.monotonic() > deadline:
            raise Conflict(f"timed out after {timeout:g} s {what}: {missing}")
        if note is not None and time.monotonic() - noted > 1.0:
            note(missing)
            noted = time.monotonic()
        time.sleep(POLL)


class _Run:
    """One drill, on its own thread: the legs, each step timed into the record's status and an event."""

    def __init__(self, cloud: Cloud, rid: str) -> None:
        self.cloud = cloud
        self.res = cloud.store.get_by_id(rid) or Resource(kind=DRILL, tenant="", name="", spec={})
        self.spec = DrillSpec.of(self.res)
        self.status = DrillStatus.of(self.res)
        self.stack = cloud.store.get(STACK, self.res.tenant, self.spec.stack)

    def _save(self, phase: str = RUNNING) -> None:
        self.res = self.cloud.store.update_status(self.res.id, status=self.status.dump(), phase=phase)

    def _event(self, reason: str, message: str, type_: str = "Normal") -> None:
        self.cloud.store.add_event(self.res, reason, message, type_)

    def _noting(self, step: dict[str, Any]) -> Callable[[str], None]:
        """A _wait note that shows what the step waits for in its detail (`dr show` while it runs)."""

        def note(missing: str) -> None:
            step["detail"] = f"waiting: {missing}"
            waits = step.setdefault("waits", [])  # what it waited for, each change of it, for the report
            if not waits or waits[-1]["for"] != missing:
                waits.append({"for": missing, "at_s": round(time.time() - step["started_at"], 2)})
            self._save()

        return note

    @contextmanager
    def _step(self, leg: dict[str, Any], name: str, in_rto: bool = True) -> Iterator[dict[str, Any]]:
        step: dict[str, Any] = {"step": name, "started_at": time.time(), "took_s": None, "detail": ""}
        if not in_rto:
            step["in_rto"] = False
        leg["steps"].append(step)
        self._save()
        yield step
        step["took_s"] = round(time.time() - step["started_at"], 3)
        self._save()
        self._event(
            "DrillStep", f"{leg['leg']} to {leg['to_zone']}: {name} in {step['took_s']:.2f} s: {step['detail']}"
        )

    def run(self) -> None:
        try:
            self._leg("drill", self.spec.to_zone)
            if self.spec.failback and self.status.from_zone:
                self._leg("failback", self.status.from_zone)
            self._finish(SUCCEEDED)
        except Exception as exc:
            message = exc.message if isinstance(exc, CloudletError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, CloudletError):
                log.exception("drill %s failed", self.res.name)
            legs = self.status.legs
            step = legs[-1]["steps"][-1]["step"] if legs and legs[-1]["steps"] else "start"
            self.status.message = f"{legs[-1]['leg'] if legs else 'drill'} failed at step {step}: {message}"
            self._finish(FAILED)

    def _finish(self, phase: str) -> None:
        st = self.status
        st.finished_at = time.time()
        for leg in st.legs:
            if leg["leg"] == "drill":
                st.rto_s, st.rpo_s = leg["rto_s"], leg["rpo_s"]
            else:
                st.failback_rto_s, st.failback_rpo_s = leg["rto_s"], leg["rpo_s"]
        goal = RTO_GOAL[self.spec.from_backups]
        rtos = [r for r in (st.rto_s, st.failback_rto_s) if r is not None]
        if phase == FAILED:
            st.verdict = "failed"
        else:
            st.verdict = "passed, RTO goal " + (f"met (<= {goal:g} s)" if max(rtos) <= goal else f"missed ({goal:g} s)")
        folder = self.cloud.config.home / "drills"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.res.name}.json"
        st.report = str(path)
        self._save(phase)
        view = drill_view(self.res)
        path.write_text(json.dumps(view, indent=2) + "\n")
        path.with_suffix(".txt").write_text(summary(view))
        text = f"{st.verdict}: RTO {_s(st.rto_s)}, RPO {_s(st.rpo_s)}" + (f"; {st.message}" if st.message else "")
        self._event("DrillFinished", text, "Normal" if phase == SUCCEEDED else "Warning")
        self.cloud.store.add_event(self.stack, "DrillFinished", f"drill {self.res.name}: {text}")

    def _leg(self, name: str, zone: str) -> None:
        cloud, store = self.cloud, self.cloud.store
        leg: dict[str, Any] = {"leg": name, "to_zone": zone, "started_at": None, "steps": [], "rto_s": None}
        leg.update(rpo_s=None, disks=[], probes=[])
        self.status.legs.append(leg)
        stack = store.get_by_id(self.stack.id) or self.stack
        backups = self.spec.from_backups
        data = [i for i in _instances(cloud, stack) if _data_bearing(cloud, i, backups) and i.zone != zone]
        if name == "failback" and data and backups:
            with self._step(leg, "backups", in_rto=False) as step:
                step["detail"] = self._fresh_backups(data, step)
        elif name == "failback" and data:
            with self._step(leg, "replicas", in_rto=False) as step:
                _wait(f"for replicas in zone {zone}", lambda: self._no_copies(zone), REPLICA_WAIT, self._noting(step))
                step["detail"] = f"replicas of {len(data)} instances are in zone {zone}"
        _check_copies(cloud, stack, zone, backups)
        t0 = leg["started_at"] = time.time()
        with self._step(leg, "pin") as step:
            store.edit_labels(stack.id, {DR_ZONE_LABEL: zone})
            cloud.manager.enqueue(STACK, stack.id)
            _wait(
                "for the stack to pin its instances",
                lambda: next((f"{i.name}" for i in _instances(cloud, stack) if InstanceSpec.of(i).zone != zone), None),
                30.0,
            )
            step["detail"] = f"every instance's spec.zone is {zone}"
        with self._step(leg, "fence") as step:
            stopped_at = self._fence(data)
            step["detail"] = f"stopped {', '.join(i.name for i in data) or 'nothing (no data-bearing instance)'}"
        with self._step(leg, "restore") as step:
            leg["disks"] = (self._from_backups if backups else self._restore)(data, zone, t0, stopped_at)
            moved = self._replace_stateless(stack, zone)
            step["detail"] = (
                f"from {'backups' if backups else 'replicas'}: {', '.join(i.name for i in data) or 'none'}; "
                f"from images: {', '.join(moved) or 'none'}"
            )
        with self._step(leg, "load-balancers") as step:
            lbs = self._move_lbs(stack, zone)
            step["detail"] = f"placed again in {zone}: {', '.join(lbs) or 'none'}"
        hosts = {h.name for h in _live_hosts(cloud, zone)}
        with self._step(leg, "boot") as step:
            _wait(
                f"for the stack to run in zone {zone}",
                lambda: self._not_running(stack, zone, hosts),
                STEADY_WAIT,
                self._noting(step),
            )
            step["detail"] = f"every instance and LB runs on a host in {zone}"
        with self._step(leg, "dns") as step:
            _wait("for the DNS names", lambda: self._dns_wrong(stack, zone), STEADY_WAIT, self._noting(step))
            step["detail"] = "LAYER-N.STACK.cloudlet, LAYER-N.STACK.ZONE.cloudlet and LAYER.STACK.cloudlet answer"
        with self._step(leg, "steady") as step:
            _wait("for the steady state", lambda: self._unsteady(stack, leg), STEADY_WAIT, self._noting(step))
            step["detail"] = "health checks pass, LB members up; " + (
                "; ".join(f"{p['url']} {p['status']}" for p in leg["probes"]) or "no EIP to probe"
            )
        leg["rto_s"] = round(time.time() - t0, 3)
        rpos = [d["rpo_s"] for d in leg["disks"]]
        leg["rpo_s"] = max(rpos) if rpos else None
        if name == "failback":
            with self._step(leg, "unpin", in_rto=False) as step:
                step["detail"] = self._unpin(stack, zone)
        self._save()

    def _unpin(self, stack: Resource, zone: str) -> str:
        """Back where it ran, the stack follows its document again, unless that would move instances: a pinned
        stack's recoveries stay in its zone, and its replicas are in the other one."""
        doc = StackDoc.model_validate(StackSpec.of(stack).document)
        spread = [k for k, layer in doc.layers.items() if (layer.placement or doc.placement).spread == "zones"]
        why = f"its document's zone is {doc.zone}" if doc.zone not in (None, zone) else None
        why = why or (f"layers {', '.join(spread)} spread over zones" if spread else None)
        if why:
            return f"still pinned to {zone} ({why}): remove label {DR_ZONE_LABEL} to follow the document again"
        self.cloud.store.edit_labels(stack.id, {DR_ZONE_LABEL: None})
        self.cloud.manager.enqueue(STACK, stack.id)
        return f"label {DR_ZONE_LABEL} removed: placement and recoveries follow the stack's document again"

    def _no_copies(self, zone: str) -> str | None:
        """What is not yet in zone for a failback from replicas: a copy of each data-bearing instance's data, each
        replica current (a cycle within its interval: the first after the drill is a full copy)."""
        stack = self.cloud.store.get_by_id(self.stack.id) or self.stack
        try:
            _check_copies(self.cloud, stack, zone, False)
        except Conflict as exc:
            return exc.message
        for inst in _instances(self.cloud, stack):
            for src in (inst, *_bound(self.cloud, inst)):
                rep = replication.replica_of(self.cloud.store, src.id)
                if rep is not None and rep.phase != "current":
                    return f"the replica of {src.kind.lower()} {src.name} is {rep.phase}"
        return None

    def _fence(self, data: list[Resource]) -> float:
        """Stops each data-bearing instance and waits until its agent reported it at that generation; when."""
        store, gens = self.cloud.store, {}
        for inst in data:
            spec = InstanceSpec.of(inst)
            spec.state = "stopped"
            gens[inst.id] = store.update_spec(inst.id, spec.dump()).generation

        def left() -> str | None:
            for rid, gen in gens.items():
                r = store.get_by_id(rid)
                if r is not None and not (r.phase == "stopped" and r.observed_generation >= gen):
                    return f"instance {r.name} is {r.phase}"
            return None

        _wait("for the data-bearing instances to stop", left, STOP_WAIT)
        return time.time()

    def _restore(self, data: list[Resource], zone: str, t0: float, stopped_at: float) -> list[dict[str, Any]]:
        """Each data-bearing instance booted from its replica; the disks recovered, with their RPO."""
        store, disks = self.cloud.store, []
        for inst in data:
            inst = store.get_by_id(inst.id) or inst
            sources = [(inst, "root disk"), *((v, f"volume {v.name}") for v in _bound(self.cloud, inst))]
            for src, what in sources:
                rep = replication.replica_of(store, src.id)
                taken = ReplicaStatus.of(rep).taken_at if rep is not None else None
                if taken is None:
                    continue
                disks.append(_disk(inst, what, taken, t0, stopped_at))
            moved = replication.recover_from_replica(self.cloud, inst)
            spec = InstanceSpec.of(moved)
            spec.state = "running"
            store.update_spec(moved.id, spec.dump())
        return disks

    def _from_backups(self, data: list[Resource], zone: str, t0: float, stopped_at: float) -> list[dict[str, Any]]:
        """Each data-bearing instance on a host placement chooses in zone, its volumes made again there from their
        newest backups (the same records: the agent there restores a pending volume whose spec says restore_from),
        its root disk from its image; the disks recovered, with their RPO."""
        store, disks = self.cloud.store, []
        for inst in data:
            inst = store.get_by_id(inst.id) or inst
            spec = InstanceSpec.of(inst)
            host, _ = _choose(self.cloud, inst, zone)
            for vol in _bound(self.cloud, inst):
                backup = newest_backup(self.cloud, vol)
                if backup is None:
                    raise Conflict(f"volume {vol.name} has no finished backup any more")
                # an agent sees the backups placed on its host only; the data is offsite, so a ready backup's record
                # (nothing of it on its old host) goes where it is restored
                if backup.host != host:
                    store.place(backup.id, host, zone)
                vspec = VolumeSpec.of(vol)
                vspec.restore_from = backup.id
                store.update_spec(vol.id, vspec.dump())
                store.place(vol.id, host, zone, phase="pending")
                store.add_event(vol, "DrillRestoring", f"restoring backup {backup.name} on host {host} (DR drill)")
                disks.append(_disk(inst, f"volume {vol.name}", backup.created_at, t0, stopped_at))
            # the runtime waits for volumes only before a first boot: the instance goes there once they are restored
            _wait(
                f"for the volumes of {inst.name} to be restored",
                functools.partial(self._restoring, inst, host),
                STEADY_WAIT,
            )
            spec.state, spec.from_snapshot_id = "running", None
            spec.run_nonce += 1
            store.update_spec(inst.id, spec.dump())
            status = InstanceStatus.of(inst).model_copy(
                update={"state": "scheduled", "pid": None, "started_at": None, "message": "", "retry_at": None}
            )
            moved = store.place(inst.id, host, zone, phase="scheduled", status=status.dump())
            store.add_event(moved, "DrillRestored", f"booting on host {host} from its image, volumes from backups")
        return disks

    def _restoring(self, inst: Resource, host: str) -> str | None:
        for vol in attached_to(self.cloud, inst):
            if vol.host != host or vol.phase != "ready":
                message = VolumeStatus.of(vol).message
                return f"volume {vol.name} is {vol.phase} on host {vol.host}" + (f": {message}" if message else "")
        return None

    def _fresh_backups(self, data: list[Resource], step: dict[str, Any]) -> str:
        """Before a failback from backups: a backup of each volume now (the newest before held the other zone's
        data as it was before the drill); waits until each is offsite."""
        caller, made = Caller(self.res.tenant, "member"), []
        for inst in data:
            for vol in _bound(self.cloud, inst):
                name = f"{vol.name[:40]}-dr-{time.strftime('%H%M%S')}"
                made.append(create_backup(self.cloud, caller, BackupCreate(source=vol.name, name=name)).id)

        def pending() -> str | None:
            for bid in made:
                b = self.cloud.store.get_by_id(bid)
                if b is None or b.phase == "failed":
                    raise Conflict(f"backup {bid} failed: {BackupStatus.of(b).message if b else 'gone'}")
                if b.phase != "ready":
                    return f"backup {b.name} is {b.phase}"
            return None

        _wait("for fresh backups", pending, STEADY_WAIT, self._noting(step))
        return f"{len(made)} volumes backed up offsite"

    def _replace_stateless(self, stack: Resource, zone: str) -> list[str]:
        """Instances without data that are not in zone: placed again (in zone, by their spec) from their image."""
        store, moved = self.cloud.store, []
        for inst in _instances(self.cloud, stack):
            if inst.zone == zone or _data_bearing(self.cloud, inst, self.spec.from_backups):
                continue
            spec = InstanceSpec.of(inst)
            spec.state, spec.from_snapshot_id = "running", None
            spec.run_nonce += 1
            inst = store.update_spec(inst.id, spec.dump())
            status = InstanceStatus.of(inst).model_copy(
                update={"state": "pending", "pid": None, "run_nonce": None, "started_at": None, "placement": None}
            )
            store.place(inst.id, None, phase="pending", status=status.dump())
            store.add_event(inst, "DrillMoved", f"placed again in zone {zone} from its image (DR drill)")
            moved.append(inst.name)
        return moved

    def _move_lbs(self, stack: Resource, zone: str) -> list[str]:
        store, moved = self.cloud.store, []
        for lb in _owned(self.cloud, stack, LOADBALANCER):
            spec = LoadBalancerSpec.of(lb)
            if spec.zone == zone and (lb.host is None or lb.zone == zone):
                continue
            spec.zone = zone
            lb = store.update_spec(lb.id, spec.dump())
            status = {**lb.status, "state": "pending", "placement": None}
            store.place(lb.id, None, phase="pending", status=status)
            store.add_event(lb, "DrillMoved", f"placed again in zone {zone} (DR drill)")
            moved.append(lb.name)
        return moved

    def _not_running(self, stack: Resource, zone: str, hosts: set[str]) -> str | None:
        # the stack's lifecycle drains members out of its LBs meanwhile, writing the LB's spec from a copy read
        # before the drill's: a zone lost so is set again
        self._move_lbs(stack, zone)
        for r in [*_instances(self.cloud, stack), *_owned(self.cloud, stack, LOADBALANCER)]:
            st = InstanceStatus.of(r) if r.kind == INSTANCE else LoadBalancerStatus.of(r)
            if r.host not in hosts or st.state != "running":
                return f"{r.kind.lower()} {r.name} is {st.state} on host {r.host}" + (
                    f": {st.message}" if st.message else ""
                )
        return None

    def _dns_wrong(self, stack: Resource, zone: str) -> str | None:
        """What the resolver of each instance's host (an agent's DNS knows its own host's instances) does not
        answer right yet (None: all of it)."""
        hosts = {h.name: h for h in _live_hosts(self.cloud, zone)}
        for inst in _instances(self.cloud, stack):
            host = hosts.get(inst.host or "")
            port = HostStatus.of(host).dns_port if host is not None else None
            if host is None or port is None:
                return f"host {inst.host} of instance {inst.name} has not reported its resolver"
            netns = None if host.name == self.cloud.config.host else host_netns(self.cloud.config.cloud_id(), host.name)
            ip = InstanceStatus.of(inst).ip
            layer = inst.labels.get(LAYER_LABEL, "")
            for name in (f"{inst.name}.{stack.name}.cloudlet", f"{inst.name}.{stack.name}.{zone}.cloudlet"):
                got = _resolve(netns, port, name)
                if got != [ip]:
                    return f"{name} answers {got} on host {host.name}, not {ip}"
            group = f"{layer}.{stack.name}.cloudlet"
            if ip not in _resolve(netns, port, group):
                return f"{group} does not answer {ip} on host {host.name}"
        return None

    def _unsteady(self, stack: Resource, leg: dict[str, Any]) -> str | None:
        for inst in _instances(self.cloud, stack):
            health = InstanceStatus.of(inst).health
            if InstanceSpec.of(inst).health is not None and (health is None or health.state != "healthy"):
                return f"instance {inst.name} is not healthy yet"
        lbs = {lb.id: lb for lb in _owned(self.cloud, stack, LOADBALANCER)}
        for lb in lbs.values():
            down = [f"{m.name} ({m.state})" for m in LoadBalancerStatus.of(lb).members if m.state != "up"]
            if down or not LoadBalancerStatus.of(lb).members:
                return f"load balancer {lb.name}: members not up: {', '.join(down) or 'none reported'}"
        members = StackStatus.of(self.cloud.store.get_by_id(stack.id) or stack).members
        if any(m.state != "in-service" for m in members.values()):
            return "the stack's lifecycle hooks have not put every instance in service yet"
        probes = []
        netns = f"cl-{self.cloud.config.cloud_id()}-out"
        for eip in _owned(self.cloud, stack, ELASTIC_IP):
            spec = ElasticIPSpec.of(eip)
            holder = lbs.get(spec.target.id) if spec.target else None
            if holder is None:
                continue
            lspec = LoadBalancerSpec.of(holder)
            path = lspec.health_check[len("http:") :] if lspec.health_check.startswith("http:") else "/"
            url = f"http://{spec.address}:{lspec.port}{path}"
            status = run_in_netns(netns, functools.partial(_probe, url))
            probes.append({"url": url, "status": status, "at": time.time()})
            if status is None or not 200 <= status < 300:
                return f"{url} from the outside answered {status} ({_route_of(netns, spec.address)})"
        leg["probes"] = probes
        return None


def _route_of(netns: str, address: str) -> str:
    """Where the outside sends an EIP's packets (the hub of the host holding it, by each agent's /32 route)."""
    out = subprocess.run(["ip", "-n", netns, "route", "get", address], capture_output=True, text=True)
    return f"the outside routes it {out.stdout.splitlines()[0].strip()}" if out.stdout else out.stderr.strip()


def _disk(inst: Resource, what: str, taken: float, t0: float, stopped_at: float) -> dict[str, Any]:
    """A recovered disk: its copy's time, its age at t0, and the writes it lacks (to the stop)."""
    return {
        "instance": inst.name,
        "disk": what,
        "taken_at": taken,
        "age_at_t0_s": round(t0 - taken, 3),
        "rpo_s": round(max(0.0, stopped_at - taken), 3),
    }


def _choose(cloud: Cloud, inst: Resource, zone: str) -> tuple[str, str]:
    """(host, zone) for inst in zone, by placement."""
    try:
        d = cloud.placement.place_instance(inst, zone)
    except NoValidHost as exc:
        raise Conflict(f"no host in zone {zone} can take instance {inst.name}: {exc.message}") from exc
    return str(d.host), str(d.zone)


def _resolve(netns: str | None, port: int, name: str) -> list[str]:
    """The A records a host's resolver (on 127.0.0.1 of its namespace, netns None: this one) answers for name."""

    def ask() -> bytes:
        return DNSRecord.question(name).send("127.0.0.1", port, timeout=1.0)  # type: ignore[no-any-return]

    try:
        reply = DNSRecord.parse(run_in_netns(netns, ask) if netns else ask())
    except (OSError, ValueError):
        return []
    return sorted(str(r.rdata) for r in reply.rr)


def _probe(url: str) -> int | None:
    """The status of one GET (None: no answer); made in the outside namespace by the caller."""
    try:
        return httpx.get(url, timeout=2.0, trust_env=False).status_code  # no proxy from the environment
    except httpx.HTTPError:
        return None


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def summary(view: dict[str, Any]) -> str:
    """The readable report of a drill's view."""
    source = "offsite backups" if view["from_backups"] else "replicas"
    head = f"DR drill {view['name']}: stack {view['stack']}, zone {view['from_zone']} -> {view['to_zone']}"
    lines = [f"{head} from {source}: {view['state']}"]
    for leg in view["legs"]:
        lines.append(f"  {leg['leg']} to {leg['to_zone']}:")
        for s in leg["steps"]:
            note = "" if s.get("in_rto", True) else " (not in the RTO)"
            lines.append(f"    {s['step']:<15} {_s(s['took_s']):>8}  {s['detail']}{note}")
        for d in leg["disks"]:
            lines.append(
                f"    data: {d['instance']} {d['disk']}: RPO {_s(d['rpo_s'])} (copy {d['age_at_t0_s']:.1f} s old at t0)"
            )
        lines.append(f"    RTO {_s(leg['rto_s'])}, RPO {_s(leg['rpo_s'])}")
    if view["message"]:
        lines.append(f"  {view['message']}")
    lines.append(f"verdict: {view['verdict'] or view['state']}")
    return "\n".join(lines) + "\n"


class Drills:
    """Drills running in cloudletd's background (each takes seconds to minutes: never on the API's threads)."""

    def __init__(self, total: int = TOTAL) -> None:
        self.total = total
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._threads = ThreadPoolExecutor(max_workers=total, thread_name_prefix="dr-drill")

    def full(self) -> bool:
        with self._lock:
            return len(self._running) >= self.total

    def start(self, cloud: Cloud, rid: str) -> None:
        with self._lock:
            self._running.add(rid)
        self._threads.submit(self._run, cloud, rid)

    def _run(self, cloud: Cloud, rid: str) -> None:
        try:
            _Run(cloud, rid).run()
        except Exception:  # the stack went away under it: the record goes with it
            log.exception("drill %s", rid)
        finally:
            with self._lock:
                self._running.discard(rid)


DRILLS = Drills()  # one per process: a cloudletd serves one cloud


class DrillReaper:
    """cloudletd: a drill its predecessor left running cannot be carried on (its threads and timings are gone):
    at the start it is marked failed, saying what to do."""

    kind = "DrillReap"  # a queue kind only: nothing is enqueued

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.watches: Watches = {}
        for res in cloud.store.list(DRILL):
            if res.phase != RUNNING:
                continue
            st = DrillStatus.of(res)
            st.message = (
                "cloudletd restarted during the drill; the stack may be partly moved and its data-bearing "
                "instances stopped: drill again (to either zone) to finish the move"
            )
            st.verdict, st.finished_at = "failed", time.time()
            cloud.store.update_status(res.id, status=st.dump(), phase=FAILED)
            cloud.store.add_event(res, "DrillFailed", st.message, "Warning")

    def reconcile(self, key: str) -> Result:
        return Result()


EVERY_LABEL = "cloudlet.io/dr-every"  # on a stack: seconds between scheduled drills (`cloudlet dr schedule`)
TO_ZONE_LABEL = "cloudlet.io/dr-to-zone"  # ... the zone they go to (and fail back from)
SINCE_LABEL = "cloudlet.io/dr-since"  # ... when the schedule was set (epoch seconds): the first is due a period later


def next_drill(every: float, since: float, last_started: float | None) -> float:
    """When a scheduled drill is due: a period after the last drill of the stack, or after the schedule was set."""
    return max(since, last_started or 0.0) + every


class DrillScheduler:
    """cloudletd: starts a stack's scheduled drill (to its labelled zone, with --failback, so it comes back) when
    it is due; one key per stack. A drill that cannot start is a Warning event on the stack, tried a period later."""

    kind = "DrillSchedule"  # a queue kind only, keyed by stack id

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.watches: Watches = {STACK: lambda r: [r.id] if EVERY_LABEL in r.labels else []}
        for stack in cloud.store.list(STACK):
            if EVERY_LABEL in stack.labels:
                cloud.manager.enqueue(self.kind, stack.id)

    def reconcile(self, sid: str) -> Result:
        stack = self.cloud.store.get_by_id(sid)
        if stack is None or stack.deleting or EVERY_LABEL not in stack.labels:
            return Result()
        try:
            every, since = float(stack.labels[EVERY_LABEL]), float(stack.labels.get(SINCE_LABEL) or 0)
        except ValueError:
            return Result()  # a label edited by hand into something else: no schedule
        mine = [d for d in self.cloud.store.list(DRILL, tenant=stack.tenant) if d.spec.get("stack") == stack.name]
        due = next_drill(every, since, max((d.created_at for d in mine), default=None))
        now = time.time()
        if now < due:
            return Result(requeue_after=min(due - now, 3600.0))
        try:
            req = DrillRequest(to_zone=stack.labels.get(TO_ZONE_LABEL, ""), from_backups=False, failback=True)
            start_drill(self.cloud, Caller(stack.tenant, "member"), stack.name, req)
        except ValidationError:
            self.cloud.store.add_event(stack, "DrillSkipped", f"label {TO_ZONE_LABEL} names no zone", "Warning")
            return Result()
        except CloudletError as exc:
            message = f"scheduled drill to zone {req.to_zone} not started: {exc.message}; next in {every:g} s"
            self.cloud.store.add_event(stack, "DrillSkipped", message, "Warning")
            self.cloud.store.edit_labels(stack.id, {SINCE_LABEL: str(int(now))})  # counts a period from now
        return Result(requeue_after=min(every, 3600.0))
