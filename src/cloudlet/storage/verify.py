"""Verified restores (issue 11, DR drills): a backup policy with `verify` proves after each run that what it
shipped offsite comes back. For each backup the run made, once it is offsite (ready):

1. restore it into a scratch record through the ordinary restore path (backups.restore_backup): the agent
   streams the object back from the target and refuses it unless every byte hashes to the sha256 that the
   manifest and the backup's record hold, so a corrupted, truncated or missing object fails here;
2. boot a scratch instance: an instance backup boots from the restored disk (with its source's command,
   user data, size and health check while the source exists); a volume backup is attached at /verify to a
   small instance of the built-in image;
3. check it: the source's health check passes (probed by its agent, resilience/health.py); without one, every
   restored file is read back inside the instance, which fails on a tree that does not read;
4. delete the scratch records.

One backup is under trial at a time. The outcome goes on the policy's status (`last_verify`, and
`last_verified_at` when it passed) and is an event: `Verified` (Normal) or `VerifyFailed` (Warning).

Scratch records are the tenant's own: they show in its lists and count in its quota (a verification that does
not fit fails, saying so). Each is named `verify-<trial id>`, labelled with the policy and the trial and owned by
the policy: deleting the policy deletes them, and every reconcile deletes those of any trial but the current one,
so what a crash left midway goes after a restart. No policy backs up a scratch record.

A verify-enabled policy whose last verified restore is older than `verify_overdue_s` (7 days; or that was created
that long ago and never verified) gets one `VerifyOverdue` Warning per overdue period.
"""

from __future__ import annotations

__all__ = ["VERIFY_LABEL", "TRIAL_LABEL", "Verifier", "is_scratch", "overdue_since", "verification_of"]

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from cloudlet.compute.images import BUILT_IN
from cloudlet.compute.instances import InstanceCreate, launch
from cloudlet.compute.resource import INSTANCE, InstanceSpec, InstanceStatus
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.errors import CloudletError, Conflict
from cloudlet.core.records import Resource, new_id
from cloudlet.storage.backups import RestoreRequest, restore_backup
from cloudlet.storage.resource import (
    SNAPSHOT,
    VOLUME,
    Attachment,
    BackupSpec,
    BackupStatus,
    PolicySpec,
    PolicyStatus,
    SnapshotStatus,
    Verification,
    VerifyResult,
    VolumeSpec,
    VolumeStatus,
)
from cloudlet.storage.volumes import delete_resource

log = logging.getLogger("cloudlet.verify")
VERIFY_LABEL = "cloudlet.io/verify-of"  # on scratch records: the policy's name
TRIAL_LABEL = "cloudlet.io/verify-trial"  # ... and the trial's id
MOUNT = "/verify"
RESTORE_TIMEOUT = 3600.0  # from the scratch restore's creation: the agent retries what may pass (an unreachable target)
BOOT_TIMEOUT = 300.0  # from the scratch instance's creation to its check passing
READ_TIMEOUT = 120.0
READ_SLOTS = 2  # read-backs at a time, of different tenants
POLL = 1.0
MESSAGE_CHARS, MAX_FAILURES = 300, 20  # what a verification keeps of each failure, and how many
SCRATCH_KINDS = (INSTANCE, VOLUME, SNAPSHOT)  # instances first: what they use goes after them


def is_scratch(res: Resource) -> bool:
    return VERIFY_LABEL in res.labels


def overdue_since(
    verify: bool, last_verified_at: float | None, created_at: float, now: float, limit: float
) -> float | None:
    """The start of the overdue period (the last verified restore, or the creation of a policy never verified)
    when it began more than limit seconds before now; None when verification is off or not overdue."""
    if not verify:
        return None
    since = last_verified_at or created_at
    return since if now - since > limit else None


def verification_of(backups: list[Resource], now: float) -> Verification | None:
    """A verification of these backups (None: nothing to verify)."""
    return Verification(queue=[b.id for b in backups], started_at=now, total=len(backups)) if backups else None


def _read_back(path: str) -> list[str]:
    """Reads every file under path on its file system, failing on the first that does not read."""
    return ["sh", "-c", f"find {path} -xdev -type f -exec cat {{}} + > /dev/null"]


def _ago(seconds: float) -> str:
    return f"{seconds / 86400:.1f} days ago" if seconds >= 86400 else f"{seconds / 3600:.1f} hours ago"


def _late(waited: float, limit: float, what: str, inst: Resource | None = None) -> str | None:
    """None while waited is within limit, else why the trial failed (with the scratch instance's last word)."""
    if waited <= limit:
        return None
    st = InstanceStatus.of(inst) if inst is not None else None
    said = st.health.last_error if st is not None and st.health is not None else st.message if st else ""
    return f"not {what} within {limit:g} s" + (f" ({st.state}: {said})" if st is not None else "")


class Verifier:
    """The verify half of the BackupPolicy reconciler (storage/policies.py), on the control plane. A read-back may
    take READ_TIMEOUT: it runs on a thread of its own (READ_SLOTS at a time, one per tenant), never on a reconcile
    worker, which polls it."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self._running: dict[str, tuple[str, float, Future[dict[str, Any]]]] = {}  # instance -> (tenant, since, read)
        self._lock = threading.Lock()

    def step(self, policy: Resource, st: PolicyStatus, now: float) -> tuple[PolicyStatus, float | None]:
        """Takes the verification in progress as far as it can go now and deletes the scratch records of
        finished trials; the new status, and when to look again (None: nothing to wait for)."""
        v = st.verifying
        if v is not None and v.trial is None and v.queue:
            v = v.model_copy(update={"trial": new_id()})
        if v is not None and v.trial is not None:
            outcome = self._trial(policy, v.queue[0], v.trial, now)
            if outcome is not None:
                # bounded: an outcome quotes the tenant's own stderr, and a queue may be long
                said = [f"{self._backup_name(v.queue[0])}: {outcome[:MESSAGE_CHARS]}"] if outcome else []
                failures = (v.failures + said)[:MAX_FAILURES]
                v = v.model_copy(update={"queue": v.queue[1:], "trial": None, "failures": failures})
        st = st.model_copy(update={"verifying": v})
        if v is not None and not v.queue:
            st = self._finish(policy, st, v, now)
        left = self._sweep(policy, st.verifying.trial if st.verifying else None)
        return st, POLL if st.verifying is not None or left else None

    def warn_overdue(self, policy: Resource, st: PolicyStatus, now: float) -> tuple[PolicyStatus, float | None]:
        """One VerifyOverdue Warning per overdue period; the new status, and when it may next become overdue."""
        verify, limit = PolicySpec.of(policy).verify, self.cloud.config.verify_overdue_s
        since = overdue_since(verify, st.last_verified_at, policy.created_at, now, limit)
        if since is None:
            base = st.last_verified_at or policy.created_at
            return st, (base + limit - now + 1.0) if verify else None
        if st.overdue_warned != since:
            what = "no verified restore since" if st.last_verified_at else "never verified since its creation"
            self.cloud.store.add_event(
                policy, "VerifyOverdue", f"backup policy {policy.name}: {what} {_ago(now - since)}", "Warning"
            )
            st = st.model_copy(update={"overdue_warned": since})
        return st, None

    def _backup_name(self, backup_id: str) -> str:
        backup = self.cloud.store.get_by_id(backup_id)
        return backup.name if backup is not None else backup_id

    def _finish(self, policy: Resource, st: PolicyStatus, v: Verification, now: float) -> PolicyStatus:
        ok, seconds = not v.failures, round(now - v.started_at, 1)
        message = "restored, booted and checked" if ok else "; ".join(v.failures)
        result = VerifyResult(ok=ok, message=message, seconds=seconds, at=now, backups=v.total)
        if ok:
            self.cloud.store.add_event(policy, "Verified", f"backups of {policy.name} {message} in {seconds} s")
        else:
            self.cloud.store.add_event(policy, "VerifyFailed", f"verifying {policy.name} failed: {message}", "Warning")
        update = {"verifying": None, "last_verify": result}
        return st.model_copy(update={**update, "last_verified_at": now} if ok else update)

    def _scratch(self, policy: Resource, trial: str | None = None) -> list[Resource]:
        """The policy's scratch records (of one trial), instances first."""
        return [
            r
            for kind in SCRATCH_KINDS
            for r in self.cloud.store.list(kind, tenant=policy.tenant, owner=policy.id)
            if is_scratch(r) and (trial is None or r.labels.get(TRIAL_LABEL) == trial)
        ]

    def _sweep(self, policy: Resource, keep: str | None) -> bool:
        """Deletes the scratch records of every trial but keep; whether any are still there."""
        left = [r for r in self._scratch(policy) if r.labels.get(TRIAL_LABEL) != keep]
        for res in [r for r in left if not r.deleting]:
            try:
                delete_resource(self.cloud, self._let_go(res) if res.kind == VOLUME else res, cascade=False)
            except Conflict:
                pass  # a volume still attached, a snapshot still booted from: they go once their instance has
        return bool(left)

    def _let_go(self, vol: Resource) -> Resource:
        """A scratch volume attached to an instance never made (a crash came between) is detached."""
        spec = VolumeSpec.of(vol)
        if spec.attachment is None or self.cloud.store.get_by_id(str(spec.attachment.instance_id)) is not None:
            return vol
        return self.cloud.store.update_spec(vol.id, spec.model_copy(update={"attachment": None}).dump())

    def _trial(self, policy: Resource, backup_id: str, trial: str, now: float) -> str | None:
        """One step of the trial of a backup: None while it goes on, "" once it passed, else why it failed."""
        backup = self.cloud.store.get_by_id(backup_id)
        if backup is None or backup.deleting:
            return "the backup was deleted before it was verified"
        if backup.phase == "failed":
            return f"the backup failed: {BackupStatus.of(backup).message}"
        if backup.phase != "ready":
            return None
        mine = {r.kind: r for r in self._scratch(policy, trial) if not r.deleting}
        kind = SNAPSHOT if BackupSpec.of(backup).source_kind == INSTANCE else VOLUME
        name, labels = f"verify-{trial}", {VERIFY_LABEL: policy.name, TRIAL_LABEL: trial}
        caller = Caller(policy.tenant)
        try:
            restored = mine.get(kind)
            if restored is None:
                restore_backup(self.cloud, caller, backup.name, RestoreRequest(name=name), policy.id, labels)
                return None
            if restored.phase != "ready":
                status = VolumeStatus.of(restored) if kind == VOLUME else SnapshotStatus.of(restored)
                if restored.phase in ("failed", "lost"):
                    return f"restore {restored.phase}: {status.message}"
                return _late(now - restored.created_at, RESTORE_TIMEOUT, "restored")
            inst = mine.get(INSTANCE)
            if inst is None:
                self._boot(caller, policy, backup, restored, labels)
                return None
        except CloudletError as exc:
            return exc.message
        outcome = self._check(inst, restored)
        return _late(now - inst.created_at, BOOT_TIMEOUT, "booted and checked", inst) if outcome is None else outcome

    def _boot(
        self, caller: Caller, policy: Resource, backup: Resource, restored: Resource, labels: dict[str, str]
    ) -> None:
        """The scratch instance: an instance backup's restored disk with its source's command, user data, size
        and health check (while the source exists); a small instance of the built-in image with a restored
        volume."""
        body: dict[str, Any] = {"name": restored.name, "labels": labels, "cpus": 0.25, "memory_mib": 64}
        if restored.kind == SNAPSHOT:
            named = BackupSpec.of(backup).source
            sources = [i for i in self.cloud.store.list(INSTANCE, tenant=policy.tenant, name=named) if not i.deleting]
            if sources:
                spec = InstanceSpec.of(sources[0])
                body |= {"cpus": spec.cpus, "memory_mib": spec.memory_mib, "command": spec.command}
                body |= {"user_data": spec.user_data}
                body |= {"health": spec.health.model_dump() if spec.health else None}
            launch(
                self.cloud, caller, InstanceCreate.model_validate({**body, "from_snapshot": restored.name}), policy.id
            )
            return
        # attached before the instance exists, so the scheduler places it where the volume's data is
        iid, vspec = new_id(), VolumeSpec.of(restored)
        vspec.attachment = Attachment(instance_id=iid, instance=restored.name, path=MOUNT)
        self.cloud.store.update_spec(restored.id, vspec.dump())
        launch(self.cloud, caller, InstanceCreate.model_validate({**body, "image": BUILT_IN}), policy.id, iid)

    def _check(self, inst: Resource, restored: Resource) -> str | None:
        """The scratch instance's check: its health check healthy, or every restored file read back."""
        st = InstanceStatus.of(inst)
        if st.state == "failed":  # for good; an error, an exit or no room yet may pass (retried): BOOT_TIMEOUT
            return f"the scratch instance failed: {st.message}"
        if st.state != "running" or inst.host is None:
            return None
        if InstanceSpec.of(inst).health is not None:
            return "" if st.health is not None and st.health.state == "healthy" else None
        if restored.kind == VOLUME and VolumeStatus.of(restored).attached is None:
            return None
        path = MOUNT if restored.kind == VOLUME else "/"
        try:
            read = self._read(inst, path)
            if read is None:
                return None
            out = read.result()
        except CloudletError as exc:  # the agent out of reach, the instance between restarts: tried again
            log.info("reading back %s in scratch instance %s: %s", path, inst.name, exc.message)
            return None
        if out["exit_code"] != 0:
            tail = " | ".join(str(out.get("stderr", "")).strip().splitlines()[-3:])
            return f"reading back {path} failed (exit {out['exit_code']}): {tail}"
        return ""

    def _read(self, inst: Resource, path: str) -> Future[dict[str, Any]] | None:
        """inst's read-back once it is done (taken: the next call starts another); None while it runs, or waits
        for a slot. One whose trial went away is dropped 2 × READ_TIMEOUT after it began."""
        now = time.monotonic()
        with self._lock:
            for iid, (_, since, other) in list(self._running.items()):
                if other.done() and iid != inst.id and now - since > 2 * READ_TIMEOUT:
                    del self._running[iid]
            held = self._running.get(inst.id)
            if held is not None:
                if not held[2].done():
                    return None
                del self._running[inst.id]
                return held[2]
            busy = [tenant for tenant, _, other in self._running.values() if not other.done()]
            if len(busy) >= READ_SLOTS or inst.tenant in busy:
                return None
            agent = self.cloud.hosts.agent(str(inst.host))
            read: Future[dict[str, Any]] = Future()

            def run() -> None:
                try:
                    read.set_result(agent.exec_instance(inst.id, _read_back(path), READ_TIMEOUT))
                except BaseException as exc:  # handed to the worker that takes the result
                    read.set_exception(exc)

            # a daemon: cloudletd's exit does not wait for a read-back
            threading.Thread(target=run, name=f"verify-read-{inst.name}", daemon=True).start()
            self._running[inst.id] = (inst.tenant, now, read)
            return None
