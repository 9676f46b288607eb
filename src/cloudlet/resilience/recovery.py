"""Auto-recovery (control plane): an instance whose health check failed `fall` times, or an HA instance whose host
was fenced or lost its lease, is brought back, each step an event on the instance.

1. fence: a failing instance is stopped for sure (its spec says stopped; its host's agent stops it and reports);
   an instance of a fenced or lease-expired host is down already (resilience/monitor.py `may_start_elsewhere`).
2. forensic snapshot: of a failing instance's disk, on its host, kept and labelled `cloudlet.io/forensic-of`
   (skipped when the host is gone: nothing can be read there).
3. replace: from its replica on a live host (storage/replication.py `recover_from_replica`), else its newest
   snapshot on its host, else its image, booted on a healthy host: a rebuild (spec.disk_epoch) where it is, or a
   fresh placement when its host is gone. The record is the same one: its name, address, EIP, DNS names and LB
   membership stay with it (the zone-qualified DNS name follows its zone).

The phase in progress is the instance's label `cloudlet.io/recovery` (fencing, snapshot, replacing), so a restarted
cloudletd carries on. `cloudlet recover NAME` starts the same by hand.
"""

from __future__ import annotations

__all__ = [
    "RecoveryController",
    "ReplaceRequest",
    "request_recovery",
    "replace_from_snapshot",
    "RECOVERY",
    "PHASE_LABEL",
]

import time

from pydantic import BaseModel, ConfigDict

from cloudlet.compute.resource import HOST, INSTANCE, InstanceSpec, InstanceStatus
from cloudlet.core.context import SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.errors import CloudletError, Conflict, NotFound
from cloudlet.core.reconcile import Result
from cloudlet.core.records import NameRef, Resource
from cloudlet.resilience.monitor import may_start_elsewhere
from cloudlet.storage import replication
from cloudlet.storage.resource import SNAPSHOT, SnapshotSpec
from cloudlet.storage.volumes import SnapshotCreate, create_snapshot

RECOVERY = "Recovery"  # the work queue's kind (keys: instance ids)
PHASE_LABEL = "cloudlet.io/recovery"
FORENSIC_LABEL = "cloudlet.io/forensic-of"
FENCE_WAIT = 15.0  # seconds a failing instance's host gets to report it stopped before recovery goes on regardless
SNAPSHOT_WAIT = 15.0
POLL = 0.2
# an instance that fails again after every replacement (a check that can never pass) is left alone after
# MAX_RECOVERIES in RECOVERY_WINDOW seconds: each would keep another forensic snapshot and rebuild it once more
MAX_RECOVERIES, RECOVERY_WINDOW = 3, 600.0


class ReplaceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_snapshot: NameRef


def _health(res: Resource) -> str | None:
    health = res.status.get("health")
    return health.get("state") if isinstance(health, dict) else None


def _host_gone(cloud: Cloud, res: Resource) -> bool:
    return res.host is not None and may_start_elsewhere(cloud.store, res.host, cloud.clock.now())


def _phase(phase: str | None = None) -> dict[str, str | None]:
    """The label change that sets the recovery phase (None: no recovery under way)."""
    return {PHASE_LABEL: phase}


def _set_phase(cloud: Cloud, res: Resource, phase: str | None) -> Resource:
    return cloud.store.edit_labels(res.id, _phase(phase))


def request_recovery(cloud: Cloud, res: Resource, reason: str) -> Resource:
    """Starts a recovery of res (idempotent while one is under way)."""
    if res.deleting:
        raise Conflict(f"instance {res.name} is being deleted")
    if res.labels.get(PHASE_LABEL):
        return res
    if res.host is None:
        raise Conflict(f"instance {res.name} is not placed yet; there is nothing to recover")
    cloud.store.add_event(res, "RecoveryStarted", reason, "Warning")
    if _host_gone(cloud, res):
        return _set_phase(cloud, res, "replacing")
    spec = InstanceSpec.of(res)
    spec.state = "stopped"  # the fence: its agent stops it and reports
    res = cloud.store.update_spec(res.id, spec.dump(), labels=_phase("fencing"))
    cloud.manager.enqueue(RECOVERY, res.id)
    return res


def replace_from_snapshot(cloud: Cloud, res: Resource, snapshot: Resource) -> Resource:
    """Swaps the instance's root disk for a clone of snapshot and restarts it: same record, names, address, EIP and
    LB membership (`cloudlet instance replace NAME --from-snapshot S`)."""
    snap = SnapshotSpec.of(snapshot)
    if snap.source_kind != INSTANCE or snapshot.phase != "ready" or snapshot.deleting:
        raise Conflict(f"snapshot {snapshot.name} is not a ready instance snapshot")
    if snapshot.host != res.host:
        raise Conflict(
            f"snapshot {snapshot.name} is on host {snapshot.host}, instance {res.name} on {res.host}; "
            "an instance is replaced from a snapshot on its own host"
        )
    return _rebuild(cloud, res, snapshot.id, f"replaced from snapshot {snapshot.name}")


def _rebuild(cloud: Cloud, res: Resource, snapshot_id: str | None, message: str) -> Resource:
    spec = InstanceSpec.of(res)
    spec.from_snapshot_id = snapshot_id
    spec.disk_epoch += 1
    spec.run_nonce += 1
    spec.state = "running"
    res = cloud.store.update_spec(res.id, spec.dump(), labels=_phase())
    cloud.store.add_event(res, "Replaced", message)
    return res


class RecoveryController:
    """cloudletd: watches instances (health) and hosts (fenced, lease expired) and walks each recovery through its
    phases; one key per instance."""

    kind = RECOVERY

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.watches = {INSTANCE: self._of_instance, HOST: self._of_host}
        self._since: dict[str, float] = {}  # instance id -> when its current phase began (this process's clock)
        self._history: dict[str, list[float]] = {}  # instance id -> when its automatic recoveries began
        for res in cloud.store.list(INSTANCE):
            if res.labels.get(PHASE_LABEL):
                cloud.manager.enqueue(RECOVERY, res.id)  # carry on where the last cloudletd stopped

    def _of_instance(self, res: Resource) -> list[str]:
        wanted = res.labels.get(PHASE_LABEL) or _health(res) == "unhealthy"
        return [res.id] if wanted and not res.deleting else []

    def _of_host(self, host: Resource) -> list[str]:
        if not may_start_elsewhere(self.cloud.store, host.name, self.cloud.clock.now()):
            return []
        return [i.id for i in self.cloud.store.list(INSTANCE, host=host.name) if InstanceSpec.of(i).ha]

    def reconcile(self, rid: str) -> Result:
        res = self.cloud.store.get_by_id(rid)
        if res is None or res.deleting:
            self._since.pop(rid, None)
            return Result()
        phase = res.labels.get(PHASE_LABEL)
        if phase is None:
            reason = self._trigger(res)
            if reason is None:
                return Result()
            now = self.cloud.clock.now()
            recent = [t for t in self._history.get(rid, []) if now - t < RECOVERY_WINDOW]
            if len(recent) >= MAX_RECOVERIES:
                if len(recent) == MAX_RECOVERIES:
                    message = (
                        f"{reason}; not recovering again: {MAX_RECOVERIES} recoveries in {RECOVERY_WINDOW:g} s "
                        "did not help (fix it, then 'cloudlet recover' or restart it)"
                    )
                    self.cloud.store.add_event(res, "RecoveryGivenUp", message, "Warning")
                    self._history[rid] = [*recent, now]
                return Result()
            self._history[rid] = [*recent, now]
            res = request_recovery(self.cloud, res, reason)
            phase = res.labels.get(PHASE_LABEL)
        started = self._since.setdefault(rid, self.cloud.clock.now())
        waited = self.cloud.clock.now() - started
        if phase == "fencing":
            return self._fencing(res, waited)
        if phase == "snapshot":
            return self._snapshot(res, waited)
        return self._replace(res)

    def _trigger(self, res: Resource) -> str | None:
        if InstanceSpec.of(res).state != "running" or res.host is None:
            return None
        if _health(res) == "unhealthy":
            health = res.status.get("health") or {}
            return f"health check failed {health.get('failures', '?')} times: {health.get('last_error', '')}"
        if InstanceSpec.of(res).ha and _host_gone(self.cloud, res):
            host = self.cloud.store.cached(HOST).get(SYSTEM_TENANT, res.host)
            return f"host {res.host} is {host.phase if host else 'gone'}"
        return None

    def _next(self, res: Resource, phase: str) -> Result:
        self._since[res.id] = self.cloud.clock.now()
        _set_phase(self.cloud, res, phase)
        return Result(requeue_after=0.0)

    def _fencing(self, res: Resource, waited: float) -> Result:
        state = InstanceStatus.of(res).state
        if state in ("stopped", "failed", "exited", "error") or _host_gone(self.cloud, res):
            self.cloud.store.add_event(res, "Fenced", f"instance stopped after {waited:.1f} s")
            return self._next(res, "snapshot")
        if waited > FENCE_WAIT:
            message = f"host {res.host} did not report the instance stopped in {FENCE_WAIT:g} s; waiting on"
            if waited - FENCE_WAIT < POLL * 2:
                self.cloud.store.add_event(res, "FenceSlow", message, "Warning")
        return Result(requeue_after=POLL)

    def _snapshot(self, res: Resource, waited: float) -> Result:
        if _host_gone(self.cloud, res):
            self.cloud.store.add_event(res, "ForensicSkipped", f"host {res.host} is gone: its disk cannot be read")
            return self._next(res, "replacing")
        # this recovery's: taken since its phase began (records carry wall-clock times)
        began = time.time() - waited - 1.0
        fresh = [
            s
            for s in self.cloud.store.list(SNAPSHOT, tenant=res.tenant)
            if s.labels.get(FORENSIC_LABEL) == res.id and s.created_at >= began
        ]
        pending = [s for s in fresh if s.phase not in ("ready", "failed")]
        if not fresh:
            name = f"{res.name}-forensic-{time.strftime('%Y%m%d-%H%M%S')}"
            req = SnapshotCreate(source=res.name, name=name, labels={FORENSIC_LABEL: res.id})
            try:
                snap = create_snapshot(self.cloud, Caller(tenant=res.tenant), req)
            except CloudletError as exc:  # its tenant's snapshot quota, say: the replacement matters more
                self.cloud.store.add_event(res, "ForensicSkipped", exc.message, "Warning")
                return self._next(res, "replacing")
            self.cloud.store.add_event(res, "ForensicSnapshot", f"snapshot {snap.name} of the failed disk requested")
            return Result(requeue_after=POLL)
        if pending and waited < SNAPSHOT_WAIT:
            return Result(requeue_after=POLL)
        for snap in fresh:
            if snap.phase == "ready":
                self.cloud.store.add_event(res, "ForensicSnapshotTaken", f"snapshot {snap.name} kept")
        return self._next(res, "replacing")

    def _replace(self, res: Resource) -> Result:
        store, gone = self.cloud.store, _host_gone(self.cloud, res)
        rep = replication.replica_of(store, res.id)
        holder = rep.status.get("host") if rep is not None else None
        if holder and holder != res.host and not may_start_elsewhere(store, holder, self.cloud.clock.now()):
            try:
                res = replication.recover_from_replica(self.cloud, res)
                return self._done(res, f"from its replica on host {holder}")
            except (Conflict, NotFound) as exc:
                store.add_event(res, "ReplicaUnusable", exc.message, "Warning")
            except Exception as exc:  # unreachable replica host: fall back below
                store.add_event(res, "ReplicaUnusable", str(exc)[:500], "Warning")
        if not gone:
            snaps = [
                s
                for s in store.list(SNAPSHOT, tenant=res.tenant)
                if SnapshotSpec.of(s).source_id == res.id
                and s.phase == "ready"
                and not s.deleting
                and FORENSIC_LABEL not in s.labels
                and s.host == res.host
            ]
            newest = max(snaps, key=lambda s: s.created_at, default=None)
            if newest is not None:
                res = _rebuild(self.cloud, res, newest.id, f"rebuilt from its newest snapshot {newest.name}")
                return self._done(res, f"from snapshot {newest.name}")
            res = _rebuild(self.cloud, res, None, "rebuilt from its image")
            return self._done(res, "from its image")
        # its host is gone: place it again (placement skips hosts that are not up), booting from its image
        spec = InstanceSpec.of(res)
        spec.state, spec.from_snapshot_id = "running", None
        spec.run_nonce += 1
        res = store.update_spec(res.id, spec.dump(), labels=_phase())
        status = InstanceStatus.of(res).model_copy(
            update={"state": "pending", "pid": None, "run_nonce": None, "started_at": None, "placement": None}
        )
        res = store.place(res.id, None, phase="pending", status=status.dump())
        return self._done(res, "from its image on another host")

    def _done(self, res: Resource, how: str) -> Result:
        took = self.cloud.clock.now() - self._since.pop(res.id, self.cloud.clock.now())
        if res.labels.get(PHASE_LABEL):
            res = _set_phase(self.cloud, res, None)
        spec = InstanceSpec.of(res)
        if spec.state != "running":
            spec.state = "running"
            res = self.cloud.store.update_spec(res.id, spec.dump())
        self.cloud.store.add_event(res, "Recovered", f"replacement started {how} ({took:.1f} s in this phase)")
        return Result()
