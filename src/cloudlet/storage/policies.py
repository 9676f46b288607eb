"""BackupPolicy kind: every `interval` back up the named volumes and instances, then keep only what the
retention rules keep (last N, newest per day for D days, newest per week for W weeks) and delete the rest,
from the target too. Snapshots the policy takes for its backups are dropped once the backup is offsite."""

from __future__ import annotations

__all__ = [
    "POLICY",
    "PolicyCreate",
    "create_policy",
    "policy_view",
    "retained",
    "verify_now",
    "BackupPolicyReconciler",
]

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.resource import INSTANCE
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.errors import CloudletError, Conflict, InvalidSpec
from cloudlet.core.labels import SELECTOR_PATTERN, Labels, parse_selector
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import FINALIZER, Int, JsonNumber, Name, NameRef, Resource, check_name, derived_name
from cloudlet.storage.backups import BACKUP, BackupCreate, create_backup, delete_backup
from cloudlet.storage.resource import BACKUP_POLICY, SNAPSHOT, VOLUME, BackupSpec, PolicySpec, PolicyStatus
from cloudlet.storage.verify import Verifier, is_scratch, verification_of
from cloudlet.storage.volumes import delete_resource, dependents

POLICY = BACKUP_POLICY


def _cron_field(value: str) -> str:
    item = rf"(\*|{value}(-{value})?)(/(0?[1-9]|[1-9][0-9]))?"
    return rf"{item}(,{item})*"


# numeric cron (what croniter accepts, stated exactly enough that every match is a valid schedule)
CRON_PATTERN = (
    "^"
    + " ".join(
        _cron_field(v)
        for v in (
            r"(0?[0-9]|[1-5][0-9])",
            r"(0?[0-9]|1[0-9]|2[0-3])",
            r"(0?[1-9]|[12][0-9]|3[01])",
            r"(0?[1-9]|1[0-2])",
            r"0?[0-7]",
        )
    )
    + "$"
)
DAY, WEEK = 86400, 7 * 86400


class PolicyCreate(BaseModel):
    # the schema states the rules create_policy() checks: an interval or a cron schedule, and something to back up
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "allOf": [
                {
                    "oneOf": [
                        {
                            "required": ["interval_seconds"],
                            "properties": {"interval_seconds": {"type": "integer"}, "schedule": {"type": "null"}},
                        },
                        {
                            "required": ["schedule"],
                            "properties": {"schedule": {"type": "string"}, "interval_seconds": {"type": "null"}},
                        },
                    ]
                },
                {
                    "anyOf": [
                        {"required": ["volumes"], "properties": {"volumes": {"minItems": 1}}},
                        {"required": ["instances"], "properties": {"instances": {"minItems": 1}}},
                        {"required": ["selector"], "properties": {"selector": {"type": "string"}}},
                    ]
                },
            ]
        },
    )
    labels: Labels = {}
    name: Name
    interval_seconds: Annotated[int, Field(ge=1, le=365 * DAY), JsonNumber] | None = Field(
        None, description="run every N seconds, or:"
    )
    schedule: str | None = Field(
        None,
        max_length=200,
        pattern=CRON_PATTERN,
        description="cron expression (UTC): minute hour day month weekday, e.g. '0 3 * * *'",
    )
    keep_last: Int = Field(1, ge=1, le=1000)
    keep_daily: Int = Field(0, ge=0, le=3650)
    keep_weekly: Int = Field(0, ge=0, le=520)
    volumes: list[NameRef] = Field(default_factory=list, max_length=1000)
    instances: list[NameRef] = Field(default_factory=list, max_length=1000)
    selector: str | None = Field(
        None, max_length=1024, pattern=SELECTOR_PATTERN, description="also every volume and instance whose labels match"
    )
    target: NameRef | None = None
    verify: bool = Field(
        False,
        strict=True,
        description="after each run, restore its backups into scratch instances, boot and check them, delete them",
    )


def create_policy(cloud: Cloud, caller: Caller, req: PolicyCreate) -> Resource:
    check_name("backup policy", req.name)
    if not req.volumes and not req.instances and not req.selector:
        raise InvalidSpec("a backup policy needs at least one --volume, --instance or --selector")
    if (req.interval_seconds is None) == (req.schedule is None):
        raise InvalidSpec("give a backup policy either an interval (--every) or a cron schedule (--cron)")
    if req.schedule is not None and not croniter.is_valid(req.schedule):
        raise InvalidSpec(
            f"{req.schedule!r} is not a cron expression such as '0 3 * * *' (minute hour day month weekday)"
        )
    spec = PolicySpec.model_validate(req.model_dump(exclude={"name", "labels"}))
    res = Resource(
        kind=POLICY,
        tenant=caller.tenant,
        name=req.name,
        spec=spec.dump(),
        labels=req.labels,
        finalizers=[FINALIZER],
        phase="active",
    )
    when = f"every {req.interval_seconds} s" if req.schedule is None else f"on cron {req.schedule!r}"
    return cloud.store.create(res, created=f"backup policy {req.name} {when}")


def policy_view(res: Resource) -> dict[str, Any]:
    st = PolicyStatus.of(res)
    return {
        "name": res.name,
        **PolicySpec.of(res).dump(),
        "state": "deleting" if res.deleting else res.phase,
        "last_run": st.last_run,
        "message": st.message,
        "verifying": _verifying(res),
        "last_verified_at": st.last_verified_at,
        "last_verify": st.last_verify.model_dump() if st.last_verify else None,
        "labels": res.labels,
    }


def next_run(spec: PolicySpec, last_run: float, created_at: float) -> float:
    """When the policy runs next: an interval after the last run (at once the first time), or the cron
    schedule's next time after the last run (after creation the first time)."""
    if spec.schedule:
        return float(croniter(spec.schedule, datetime.fromtimestamp(last_run or created_at, UTC)).get_next(float))
    return last_run + float(spec.interval_seconds or 0)


def sources(cloud: Cloud, res: Resource) -> list[str]:
    """Names the policy backs up: those listed, and the volumes and instances its selector matches now."""
    spec = PolicySpec.of(res)
    names = [*spec.volumes, *spec.instances]
    selector = parse_selector(spec.selector)
    if selector:
        for kind in (VOLUME, INSTANCE):
            names += [
                r.name
                for r in cloud.store.list(kind, tenant=res.tenant)
                if not r.deleting and not is_scratch(r) and selector.matches(r.labels) and r.name not in names
            ]
    return names


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


def _newest(backups: list[Resource]) -> list[Resource]:
    """The newest finished backup of each source."""
    newest: dict[str, Resource] = {}
    for b in sorted(backups, key=lambda b: b.created_at):
        if b.phase == "ready" and not b.deleting:
            newest[BackupSpec.of(b).source] = b
    return list(newest.values())


def verify_now(cloud: Cloud, caller: Caller, name: str) -> Resource:
    """Asks the policy's reconciler to verify the newest finished backup of each of its sources now."""
    res = cloud.store.get(POLICY, caller.tenant, name)
    if res.deleting:
        raise Conflict(f"backup policy {name} is being deleted")
    if _verifying(res):
        raise Conflict(f"backup policy {name} is verifying already; see it with 'cloudlet backup policy list'")
    if not _newest(_made_by(cloud, res)):
        raise Conflict(f"backup policy {name} has no finished backup to verify yet")
    spec = PolicySpec.of(res)
    res = cloud.store.update_spec(res.id, spec.model_copy(update={"verify_nonce": spec.verify_nonce + 1}).dump())
    cloud.store.add_event(res, "VerifyRequested", f"verify the newest backups of {name} now")
    return res


def _verifying(res: Resource) -> bool:
    """A verification is going on, or was asked for."""
    st = PolicyStatus.of(res)
    return st.verifying is not None or st.verify_nonce != PolicySpec.of(res).verify_nonce


def _made_by(cloud: Cloud, res: Resource) -> list[Resource]:
    return [b for b in cloud.store.list(BACKUP, tenant=res.tenant) if BackupSpec.of(b).policy_id == res.id]


def _scratch_owner(res: Resource) -> list[str]:
    return [res.owner] if res.owner and is_scratch(res) else []


class BackupPolicyReconciler(KindReconciler):
    """Control plane. Deleting a policy keeps the backups it made: they are the point of having had one.
    With verify, each run's backups are restored, booted and checked (storage/verify.py)."""

    kind = POLICY

    def __init__(self, cloud: Cloud) -> None:
        super().__init__(cloud.store)
        self.cloud = cloud
        self.verifier = Verifier(cloud)
        self.watches = {
            BACKUP: lambda b: [p] if (p := BackupSpec.of(b).policy_id) else [],
            **{kind: _scratch_owner for kind in (INSTANCE, VOLUME, SNAPSHOT)},
        }

    def converge(self, res: Resource) -> Result:
        store, rid = self.cloud.store, res.id
        mine = _made_by(self.cloud, res)
        self._drop_shipped_snapshots(mine)
        spec, now, old = PolicySpec.of(res), time.time(), PolicyStatus.of(res)
        st = old
        if spec.verify_nonce != st.verify_nonce and st.verifying is None:  # asked for: `backup policy verify`
            st = st.model_copy(
                update={"verify_nonce": spec.verify_nonce, "verifying": verification_of(_newest(mine), now)}
            )
        st, verify_in = self.verifier.step(res, st, now)
        st, overdue_in = self.verifier.warn_overdue(res, st, now)
        if next_run(spec, st.last_run or 0, res.created_at) <= now:
            st = self._run(res, spec, mine, st, now)
        if st != old:
            store.update_status(rid, status=st.dump())
        waits = [max(1.0, next_run(spec, st.last_run or 0, res.created_at) - now), verify_in, overdue_in]
        return Result(requeue_after=min(w for w in waits if w is not None))

    def _run(self, res: Resource, spec: PolicySpec, mine: list[Resource], st: PolicyStatus, now: float) -> PolicyStatus:
        """Backs up every source, expires what the retention rules no longer keep; with verify, the new backups
        are verified next (unless a verification is still going on)."""
        caller, errors, made = Caller(res.tenant), [], []
        for source in sources(self.cloud, res):
            name = derived_name(f"{res.name}-{source}", time.strftime("%Y%m%d%H%M%S"))
            try:
                made.append(
                    create_backup(
                        self.cloud, caller, BackupCreate(source=source, target=spec.target, name=name), policy_id=res.id
                    )
                )
            except CloudletError as exc:
                errors.append(f"{source}: {exc.message}")
        expired, under_trial = 0, set(st.verifying.queue if st.verifying else [])  # kept until verified
        for source in {BackupSpec.of(b).source for b in mine}:
            done = [b for b in mine if BackupSpec.of(b).source == source and b.phase == "ready" and not b.deleting]
            keep = retained(done, spec.keep_last, spec.keep_daily, spec.keep_weekly) | under_trial
            for b in done:
                if b.id not in keep:
                    delete_backup(self.cloud, caller, b.name)
                    expired += 1
        message = "; ".join(errors)
        if errors:
            self.cloud.store.add_event(res, "BackupFailed", message, "Warning")
        verifying = st.verifying or (verification_of(made, now) if spec.verify else None)
        return st.model_copy(update={"last_run": now, "message": message, "expired": expired, "verifying": verifying})

    def _drop_shipped_snapshots(self, backups: list[Resource]) -> None:
        """The snapshots the policy took are not needed once their data is offsite."""
        for b in backups:
            bspec = BackupSpec.of(b)
            if b.phase != "ready" or not bspec.drop_snapshot:
                continue
            snap = self.cloud.store.get_by_id(bspec.snapshot_id)
            if snap is not None and not snap.deleting and not dependents(self.cloud, snap):
                delete_resource(self.cloud, snap, cascade=False)
