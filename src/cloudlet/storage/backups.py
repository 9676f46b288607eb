"""Backups shipped offsite: BackupTarget (any S3-compatible endpoint) and Backup kinds.

A backup is a snapshot streamed as `tar | zstd` to `<bucket>/cloudlet/<tenant>/<backup-id>/data.tar.zst`,
hashed (sha256) on the way, then `manifest.json` (source, sizes, checksum) is written last: a backup exists iff
its manifest does, so an upload cut short by a crash is simply started again. Restore streams the object back
through the same hash and refuses to mark the result ready unless the checksum matches the manifest.
"""

from __future__ import annotations

__all__ = [
    "TARGET",
    "BACKUP",
    "TargetCreate",
    "BackupCreate",
    "RestoreRequest",
    "add_target",
    "create_backup",
    "delete_backup",
    "restore_backup",
    "target_view",
    "backup_view",
    "BackupReconciler",
    "restore_into",
]

import hashlib
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.resource import INSTANCE
from cloudlet.core.context import Caller, Cloud, HostContext
from cloudlet.core.errors import Conflict, DriverError, NotFound
from cloudlet.core.labels import Labels
from cloudlet.core.models import Spec
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import (
    FINALIZER,
    Name,
    NameRef,
    Resource,
    Text,
    check_name,
    derived_name,
    new_id,
    record_view,
)
from cloudlet.storage.names import snapshot_name
from cloudlet.storage.resource import (
    BACKUP,
    BACKUP_TARGET,
    BackupSpec,
    BackupStatus,
    SnapshotSpec,
    TargetSpec,
    VolumeSpec,
)
from cloudlet.storage.volumes import SNAPSHOT, VOLUME, SnapshotCreate, check_quota, create_snapshot

TARGET = BACKUP_TARGET
CHUNK = 1 << 20


class TargetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    name: Name
    endpoint: str = Field(pattern=r"^https?://[^\x00]*$")
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+$")
    access_key: Text = Field(min_length=1)
    secret_key: Text = Field(min_length=1)
    region: Text = "us-east-1"


class BackupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    source: NameRef = Field(description="snapshot, volume or instance name")
    target: NameRef | None = None
    name: Name | None = None


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name = Field(description="name of the volume (or, for an instance backup, bootable snapshot) to create")


def add_target(cloud: Cloud, caller: Caller, req: TargetCreate) -> Resource:
    check_name("backup target", req.name)
    spec = TargetSpec.model_validate(req.model_dump(exclude={"name", "labels"})).dump()
    res = Resource(kind=TARGET, tenant=caller.tenant, name=req.name, spec=spec, phase="ready", labels=req.labels)
    return cloud.store.create(res, created=f"backup target {req.name} at {req.endpoint}/{req.bucket}")


def target_view(res: Resource) -> dict[str, Any]:
    spec = TargetSpec.of(res)  # the secret is never shown
    return {
        "name": res.name,
        "endpoint": spec.endpoint,
        "bucket": spec.bucket,
        "access_key": spec.access_key,
        "region": spec.region,
        "labels": res.labels,
    }


def _pick_target(cloud: Cloud, tenant: str, name: str | None) -> Resource:
    if name:
        return cloud.store.get(TARGET, tenant, name)
    targets = cloud.store.list(TARGET, tenant=tenant)
    if len(targets) != 1:
        raise NotFound(
            "name a backup target with --target (add one with 'cloudlet backup target add')"
            if targets
            else "no backup target; add one with 'cloudlet backup target add'"
        )
    return targets[0]


def create_backup(cloud: Cloud, caller: Caller, req: BackupCreate, policy_id: str | None = None) -> Resource:
    """Backs up a snapshot; a volume or instance is snapshotted first, so the backup is of one moment, and that
    snapshot is owned by the backup (it goes when the backup goes). A policy's backups drop the snapshot they took
    once the data is offsite."""
    target = _pick_target(cloud, caller.tenant, req.target)
    backup_id = new_id()
    try:
        snap = cloud.store.get(SNAPSHOT, caller.tenant, req.source)
        name = req.name or derived_name(snap.name, str(int(time.time())))
        check_name("backup", name)
    except NotFound:
        snap_name = derived_name(f"{req.source}-backup", time.strftime("%Y%m%d-%H%M%S"))
        name = req.name or derived_name(snap_name, str(int(time.time())))
        check_name("backup", name)
        snap = create_snapshot(cloud, caller, SnapshotCreate(source=req.source, name=snap_name), owner=backup_id)
    snap_spec = SnapshotSpec.of(snap)
    spec = BackupSpec(
        snapshot_id=snap.id,
        snapshot=snap.name,
        target_id=target.id,
        target=target.name,
        source_kind=snap_spec.source_kind,
        source=snap_spec.source_name,
        image_id=snap_spec.image_id,
        policy_id=policy_id,
        drop_snapshot=policy_id is not None,
    )
    res = Resource(
        id=backup_id,
        kind=BACKUP,
        tenant=caller.tenant,
        name=name,
        spec=spec.dump(),
        finalizers=[FINALIZER],
        labels=req.labels,
        host=snap.host,
        zone=snap.zone,
    )
    return cloud.store.create(res, created=f"backup {name} of snapshot {snap.name} to {target.name}")


def delete_backup(cloud: Cloud, caller: Caller, name: str) -> Resource:
    res = cloud.store.get(BACKUP, caller.tenant, name)
    if not res.deleting:
        res = cloud.store.mark_deleted(res.id)
        cloud.store.add_event(res, "Deleting", f"backup {name} marked for deletion")
    return res


def restore_backup(cloud: Cloud, caller: Caller, name: str, req: RestoreRequest) -> Resource:
    """Creates a volume (or a bootable snapshot, for instance backups) whose reconciler fills it from the backup."""
    backup = cloud.store.get(BACKUP, caller.tenant, name)
    if backup.phase != "ready":
        raise Conflict(f"backup {name} is {backup.phase}; only a finished backup can be restored")
    check_name("volume", req.name)
    bspec, size = BackupSpec.of(backup), BackupStatus.of(backup).size_gib or 1
    is_instance = bspec.source_kind == INSTANCE
    check_quota(
        cloud,
        caller.tenant,
        snapshots=1 if is_instance else 0,
        volumes=0 if is_instance else 1,
        gib=0 if is_instance else size,
    )
    spec: Spec
    if is_instance:
        spec = SnapshotSpec(
            source_kind="Instance",
            source_id=None,
            source_name=bspec.source,
            image_id=bspec.image_id,
            restore_from=backup.id,
        )
        kind = SNAPSHOT
    else:
        spec = VolumeSpec(size_gib=size, restore_from=backup.id)
        kind = VOLUME
    res = Resource(
        kind=kind,
        tenant=caller.tenant,
        name=req.name,
        spec=spec.dump(),
        finalizers=[FINALIZER],
        zone=backup.zone,
        host=backup.host,
    )
    return cloud.store.create(res, created=f"{kind.lower()} {req.name} restored from backup {name}")


def backup_view(res: Resource) -> dict[str, Any]:
    spec, st = BackupSpec.of(res), BackupStatus.of(res)
    return record_view(
        res,
        source_kind=spec.source_kind,
        source=spec.source,
        snapshot=spec.snapshot,
        target=spec.target,
        state="deleting" if res.deleting else res.phase,
        bytes=st.bytes,
        compressed_bytes=st.compressed_bytes,
        sha256=st.sha256,
        seconds=st.seconds,
        message=st.message,
    )


def _s3(target: Resource) -> Any:
    import boto3
    from botocore.config import Config

    spec = TargetSpec.of(target)
    return boto3.client(
        "s3",
        endpoint_url=spec.endpoint,
        aws_access_key_id=spec.access_key,
        aws_secret_access_key=spec.secret_key,
        region_name=spec.region,
        config=Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=60),
    )


def _prefix(res: Resource) -> str:
    return f"cloudlet/{res.tenant}/{res.id}/"


class _Hashing:
    """A read-only file object that hashes and counts what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n and n > 0 else CHUNK)
        self.sha.update(data)
        self.size += len(data)
        return data


def _tail(stream: IO[bytes] | None) -> str:
    """The last lines a tool printed, on one line."""
    text = stream.read().decode(errors="replace") if stream else ""
    return " | ".join(line for line in text.strip().splitlines()[-3:] if line)


def _tree_bytes(root: Path) -> int:
    out = subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0


def upload(cloud: HostContext, backup: Resource, target: Resource) -> BackupStatus:
    spec = BackupSpec.of(backup)
    source = cloud.pool.path(snapshot_name(spec.snapshot_id))
    if not source.is_dir():
        raise DriverError(f"snapshot {spec.snapshot} has no data to back up")
    s3, bucket, prefix = _s3(target), TargetSpec.of(target).bucket, _prefix(backup)
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        s3.create_bucket(Bucket=bucket)
    t = time.perf_counter()
    tar = subprocess.Popen(
        ["tar", "-C", str(source), "--numeric-owner", "--xattrs", "-cf", "-", "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    zstd = subprocess.Popen(["zstd", "-q", "-3", "-T0", "-c"], stdin=tar.stdout, stdout=subprocess.PIPE)
    assert tar.stdout is not None and zstd.stdout is not None
    tar.stdout.close()
    body = _Hashing(zstd.stdout)
    s3.upload_fileobj(body, bucket, prefix + "data.tar.zst")
    if tar.wait() != 0 or zstd.wait() != 0:
        raise DriverError(f"packing snapshot {spec.snapshot} failed: {_tail(tar.stderr)}")
    raw_bytes = _tree_bytes(source)
    manifest = {
        "format": "tar+zstd",
        "backup_id": backup.id,
        "name": backup.name,
        "tenant": backup.tenant,
        "source_kind": spec.source_kind,
        "source": spec.source,
        "snapshot": spec.snapshot,
        "sha256": body.sha.hexdigest(),
        "compressed_bytes": body.size,
        "bytes": raw_bytes,
        "created_at": time.time(),
    }
    s3.put_object(Bucket=bucket, Key=prefix + "manifest.json", Body=json.dumps(manifest).encode())
    return BackupStatus(
        sha256=body.sha.hexdigest(),
        compressed_bytes=body.size,
        bytes=raw_bytes,
        size_gib=max(1, -(-raw_bytes // (1 << 30))),
        seconds=round(time.perf_counter() - t, 3),
    )


def restore_into(cloud: HostContext, backup_id: str, root: Path) -> None:
    """Fills root from the backup; raises unless the data's sha256 matches the manifest."""
    backup = cloud.store.get_by_id(backup_id)
    if backup is None:
        raise DriverError("the backup to restore from no longer exists")
    spec = BackupSpec.of(backup)
    target = cloud.store.get_by_id(spec.target_id)
    if target is None:
        raise DriverError(f"backup target {spec.target} no longer exists")
    s3, bucket, prefix = _s3(target), TargetSpec.of(target).bucket, _prefix(backup)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())
    stream = s3.get_object(Bucket=bucket, Key=prefix + "data.tar.zst")["Body"]
    zstd = subprocess.Popen(["zstd", "-q", "-d", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    tar = subprocess.Popen(
        ["tar", "-C", str(root), "--numeric-owner", "--xattrs", "-xf", "-"], stdin=zstd.stdout, stderr=subprocess.PIPE
    )
    assert zstd.stdin is not None and zstd.stdout is not None
    zstd.stdout.close()
    sha = hashlib.sha256()
    feeding = True
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        sha.update(chunk)  # the whole object is hashed even if the unpacker gave up on it
        if feeding:
            try:
                zstd.stdin.write(chunk)
            except BrokenPipeError:
                feeding = False
    try:
        zstd.stdin.close()
    except BrokenPipeError:
        pass
    unpacked = zstd.wait() == 0 and tar.wait() == 0
    if sha.hexdigest() != manifest["sha256"]:
        raise DriverError(
            f"backup {backup.name} is corrupt: sha256 {sha.hexdigest()[:16]}… does not match "
            f"the manifest's {manifest['sha256'][:16]}…"
        )
    if not unpacked:
        raise DriverError(f"unpacking backup {backup.name} failed: {_tail(tar.stderr)}")


class BackupReconciler(KindReconciler):
    """Agent: uploads the snapshot of each backup on this host; cleanup removes the objects from the target."""

    kind = BACKUP

    def __init__(self, ctx: HostContext) -> None:
        super().__init__(ctx.store)
        self.ctx = ctx
        self._uploads = threading.Semaphore(2)  # bounded: backups are bulk traffic
        self.watches = {SNAPSHOT: self._waiting_on}

    def _waiting_on(self, snap: Resource) -> list[str]:
        """A snapshot becoming ready wakes the backups of it."""
        return [b.id for b in self.records.list(BACKUP, tenant=snap.tenant) if BackupSpec.of(b).snapshot_id == snap.id]

    def serves(self, res: Resource) -> bool:
        return res.host == self.ctx.host

    def cleanup(self, res: Resource) -> None:
        target = self.records.get_by_id(BackupSpec.of(res).target_id)
        if target is not None:
            s3 = _s3(target)
            for key in ("manifest.json", "data.tar.zst"):  # manifest first: never a manifest without data
                s3.delete_object(Bucket=TargetSpec.of(target).bucket, Key=_prefix(res) + key)

    def converge(self, res: Resource) -> Result:
        records, rid = self.records, res.id
        if res.phase in ("ready", "failed"):
            return Result()
        spec = BackupSpec.of(res)
        target = records.get_by_id(spec.target_id)
        if target is None:
            records.update_status(rid, phase="failed", status=BackupStatus(message="backup target is gone").dump())
            return Result()
        snap = records.get_by_id(spec.snapshot_id)
        if snap is None or snap.phase != "ready":
            return Result()  # the snapshot is still being taken; its watch wakes us
        records.update_status(rid, phase="uploading", status=BackupStatus(message=f"uploading to {spec.target}").dump())
        with self._uploads:
            done = upload(self.ctx, res, target)
        records.update_status(rid, phase="ready", observed_generation=res.generation, status=done.dump())
        records.add_event(
            res, "Ready", f"{done.compressed_bytes} bytes in {done.seconds} s, sha256 {str(done.sha256)[:12]}…"
        )
        return Result()
