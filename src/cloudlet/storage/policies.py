"""BackupPolicy kind: every `interval` back up the named volumes and instances, then keep only what the
retention rules keep (last N, newest per day for D days, newest per week for W weeks) and delete the rest,
from the target too. Snapshots the policy takes for its backups are dropped once the backup is offsite."""

from __future__ import annotations

__all__ = ["POLICY", "PolicyCreate", "create_policy", "policy_view", "retained", "BackupPolicyReconciler"]

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.core.context import Caller, Cloud
from cloudlet.core.errors import CloudletError, InvalidSpec
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import FINALIZER, Resource, check_name
from cloudlet.storage.backups import BACKUP, BackupCreate, create_backup, delete_backup
from cloudlet.storage.volumes import delete_resource, dependents

POLICY = "BackupPolicy"
DAY, WEEK = 86400, 7 * 86400


class PolicyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    interval_seconds: int = Field(ge=1, le=365 * DAY)
    keep_last: int = Field(1, ge=1, le=1000)
    keep_daily: int = Field(0, ge=0, le=3650)
    keep_weekly: int = Field(0, ge=0, le=520)
    volumes: list[str] = Field(default_factory=list, max_length=1000)
    instances: list[str] = Field(default_factory=list, max_length=1000)
    target: str | None = None


def create_policy(cloud: Cloud, caller: Caller, req: PolicyCreate) -> Resource:
    check_name("backup policy", req.name)
    if not req.volumes and not req.instances:
        raise InvalidSpec("a backup policy needs at least one --volume or --instance")
    res = Resource(kind=POLICY, tenant=caller.tenant, name=req.name, spec=req.model_dump(exclude={"name"}),
                   finalizers=[FINALIZER], phase="active")
    return cloud.store.create(res, created=f"backup policy {req.name} every {req.interval_seconds} s")


def policy_view(res: Resource) -> dict[str, Any]:
    return {"name": res.name, **res.spec, "state": "deleting" if res.deleting else res.phase,
            "last_run": res.status.get("last_run"), "message": res.status.get("message", "")}


def retained(backups: list[Resource], keep_last: int, keep_daily: int, keep_weekly: int) -> set[str]:
    """Ids of the backups the rules keep; backups are of one source, any order."""
    newest_first = sorted(backups, key=lambda b: b.created_at, reverse=True)
    keep = {b.id for b in newest_first[:keep_last]}
    for period, count in ((DAY, keep_daily), (WEEK, keep_weekly)):
        seen: set[int] = set()
        for b in newest_first:
            bucket = int(b.created_at // period)
            if len(seen) < count and bucket not in seen:
                seen.add(bucket)
                keep.add(b.id)
    return keep


class BackupPolicyReconciler(KindReconciler):
    """Control plane. Deleting a policy keeps the backups it made: they are the point of having had one."""

    kind = POLICY

    def __init__(self, cloud: Cloud) -> None:
        super().__init__(cloud.store)
        self.cloud = cloud
        self.watches = {BACKUP: lambda b: [b.spec["policy_id"]] if b.spec.get("policy_id") else []}

    def converge(self, res: Resource) -> Result:
        store, rid = self.cloud.store, res.id
        mine = [b for b in store.list(BACKUP, tenant=res.tenant) if b.spec.get("policy_id") == rid]
        self._drop_shipped_snapshots(mine)
        spec, now = res.spec, time.time()
        due_in = float(res.status.get("last_run") or 0) + spec["interval_seconds"] - now
        if due_in > 0:
            return Result(requeue_after=due_in)
        caller, errors = Caller(res.tenant), []
        for source in [*spec["volumes"], *spec["instances"]]:
            name = f"{res.name}-{source}-{time.strftime('%Y%m%d%H%M%S')}"
            try:
                create_backup(self.cloud, caller, BackupCreate(source=source, target=spec["target"], name=name),
                              policy_id=rid)
            except CloudletError as exc:
                errors.append(f"{source}: {exc.message}")
        expired = 0
        for source in {b.spec["source"] for b in mine}:
            done = [b for b in mine if b.spec["source"] == source and b.phase == "ready" and not b.deleting]
            keep = retained(done, spec["keep_last"], spec["keep_daily"], spec["keep_weekly"])
            for b in done:
                if b.id not in keep:
                    delete_backup(self.cloud, caller, b.name)
                    expired += 1
        message = "; ".join(errors)
        store.update_status(rid, status={"last_run": now, "message": message, "expired": expired})
        if errors:
            store.add_event(res, "BackupFailed", message, "Warning")
        return Result(requeue_after=spec["interval_seconds"])

    def _drop_shipped_snapshots(self, backups: list[Resource]) -> None:
        """The snapshots the policy took are not needed once their data is offsite."""
        for b in backups:
            if b.phase != "ready" or not b.spec.get("drop_snapshot"):
                continue
            snap = self.cloud.store.get_by_id(b.spec["snapshot_id"])
            if snap is not None and not snap.deleting and not dependents(self.cloud, snap):
                delete_resource(self.cloud, snap, cascade=False)
