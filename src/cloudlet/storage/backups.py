"""Backups shipped offsite: BackupTarget (any S3-compatible endpoint) and Backup kinds.

A backup is a snapshot streamed as `tar | zstd` to `<bucket>/cloudlet/<tenant>/<backup-id>/data.tar.zst`,
hashed (sha256) on the way, then `manifest.json` (source, sizes, checksum) is written last: a backup exists iff
its manifest does, so an upload cut short by a crash is simply started again (after aborting the multipart uploads
it left). Restore streams the object back through the same hash and refuses to mark the result ready unless the
checksum matches the manifest and the record. What it reads is bounded: the manifest's size, the object's size
(exactly what the backup wrote), what is unpacked (storage/untar.py: the restore's quota, no escapes from the
root). A missing or garbled manifest or object fails the restore, for good.

A tenant's target must be at an endpoint the admin allowed, and is reached only at public addresses unless the
admin allowed private ones (storage/endpoints.py).
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudlet.compute.resource import INSTANCE
from cloudlet.core.context import Caller, Cloud, HostContext
from cloudlet.core.errors import BadRequest, Conflict, DriverError, Forbidden, NotFound, TerminalError
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
from cloudlet.storage import endpoints
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
from cloudlet.storage.untar import UnpackLimits, unpack
from cloudlet.storage.volumes import SNAPSHOT, VOLUME, SnapshotCreate, create_snapshot, storage_quota

TARGET = BACKUP_TARGET
CHUNK = 1 << 20
MANIFEST_MAX = 1 << 20  # ours are a few hundred bytes
MAX_FILES = 10_000_000  # members a restore may unpack: beyond any volume's real use, short of exhausting inodes


class TargetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    name: Name
    endpoint: str = Field(max_length=300, pattern=endpoints.ORIGIN, description="http(s)://host[:port]")
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
    """A tenant's target must be at an endpoint the admin allowed (and public, unless allowed with `private`)."""
    check_name("backup target", req.name)
    allowed_by, private = endpoints.grant(cloud, caller, req.endpoint)
    endpoint = endpoints.origin(req.endpoint) if allowed_by else req.endpoint
    spec = TargetSpec.model_validate(
        {
            **req.model_dump(exclude={"name", "labels"}),
            "endpoint": endpoint,
            "allowed_by": allowed_by,
            "private": private,
        }
    ).dump()
    res = Resource(kind=TARGET, tenant=caller.tenant, name=req.name, spec=spec, phase="ready", labels=req.labels)
    return cloud.store.create(res, created=f"backup target {req.name} at {endpoint}/{req.bucket}")


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
        target = cloud.store.get(TARGET, tenant, name)
    else:
        targets = cloud.store.list(TARGET, tenant=tenant)
        if len(targets) != 1:
            raise NotFound(
                "name a backup target with --target (add one with 'cloudlet backup target add')"
                if targets
                else "no backup target; add one with 'cloudlet backup target add'"
            )
        target = targets[0]
    _check_usable(target)
    return target


def _check_usable(target: Resource) -> None:
    if (why := endpoints.unusable(target)) is not None:
        raise Forbidden(why)


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


def restore_backup(
    cloud: Cloud, caller: Caller, name: str, req: RestoreRequest, owner: str | None = None, labels: Labels | None = None
) -> Resource:
    """Creates a volume (or a bootable snapshot, for instance backups) whose reconciler fills it from the backup.
    owner, labels: a policy's verification restores into scratch records it owns (storage/verify.py)."""
    backup = cloud.store.get(BACKUP, caller.tenant, name)
    if backup.phase != "ready":
        raise Conflict(f"backup {name} is {backup.phase}; only a finished backup can be restored")
    check_name("volume", req.name)
    bspec, size = BackupSpec.of(backup), BackupStatus.of(backup).size_gib or 1
    target = cloud.store.get_by_id(bspec.target_id)
    if target is None:
        raise Conflict(f"backup target {bspec.target} of backup {name} no longer exists")
    _check_usable(target)
    is_instance = bspec.source_kind == INSTANCE
    guard = storage_quota(
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
        owner=owner,
        labels=labels or {},
    )
    return cloud.store.create(res, created=f"{kind.lower()} {req.name} restored from backup {name}", guard=guard)


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


class _Remote:
    """A target's bucket, reached as its owner may: a tenant's only while the admin allows its endpoint and,
    unless allowed with `private`, only at public addresses, checked on every connection (endpoints.Pin).
    Forbidden when refused; botocore errors otherwise."""

    def __init__(self, target: Resource) -> None:
        import boto3
        from botocore.config import Config

        _check_usable(target)
        spec = TargetSpec.of(target)
        self.name, self.bucket = target.name, spec.bucket
        self.pin = endpoints.pin_for(target)
        self.s3: Any = boto3.client(
            "s3",
            endpoint_url=spec.endpoint,
            aws_access_key_id=spec.access_key,
            aws_secret_access_key=spec.secret_key,
            region_name=spec.region,
            config=Config(
                retries={"max_attempts": 3},
                connect_timeout=5,
                read_timeout=60,
                proxies={} if self.pin else None,  # a proxy would dial the host for us, unchecked
            ),
        )
        if self.pin is not None:
            endpoints.pin_client(self.s3, self.pin)
            with self.talking():
                self.pin.check()

    @contextmanager
    def talking(self) -> Iterator[None]:
        """A refused connection surfaces as Forbidden, whatever botocore wrapped it in."""
        try:
            yield
        except Forbidden:
            raise
        except Exception as exc:
            if self.pin is not None and self.pin.refused is not None:
                raise Forbidden(self.pin.refused) from exc
            raise

    def get(self, key: str, what: str) -> dict[str, Any]:
        """get_object; DriverError (for good) if the object is missing or may not be read."""
        from botocore.exceptions import ClientError

        try:
            with self.talking():
                found: dict[str, Any] = self.s3.get_object(Bucket=self.bucket, Key=key)
                return found
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound", "AccessDenied", "403"):
                raise DriverError(f"{what} is missing from backup target {self.name} ({code})") from exc
            raise

    def abort_uploads(self, prefix: str) -> int:
        """Aborts the multipart uploads under prefix an upload cut short left (their parts take space, unseen)."""
        aborted = 0
        with self.talking():
            for page in self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
        return aborted


def _prefix(res: Resource) -> str:
    return f"cloudlet/{res.tenant}/{res.id}/"


class Manifest(BaseModel):
    """What restore reads of manifest.json (written by upload)."""

    format: Literal["tar+zstd"]
    backup_id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    compressed_bytes: int = Field(ge=0)
    bytes: int = Field(ge=0)


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


def _read_at_most(body: Any, limit: int, what: str) -> Iterator[bytes]:
    """The chunks of body; DriverError as soon as it has more than limit bytes."""
    total = 0
    try:
        while chunk := body.read(min(CHUNK, limit + 1 - total)):
            total += len(chunk)
            if total > limit:
                raise DriverError(f"{what} is larger than the {limit} bytes it should have")
            yield chunk
    finally:
        body.close()


def _tail(stream: IO[bytes] | None) -> str:
    """The last lines a tool printed, on one line."""
    text = stream.read().decode(errors="replace") if stream else ""
    return " | ".join(line for line in text.strip().splitlines()[-3:] if line)


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def _tree_bytes(root: Path) -> int:
    out = subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0


def upload(cloud: HostContext, backup: Resource, target: Resource) -> BackupStatus:
    spec = BackupSpec.of(backup)
    source = cloud.pool.path(snapshot_name(spec.snapshot_id))
    if not source.is_dir():
        raise DriverError(f"snapshot {spec.snapshot} has no data to back up")
    remote = _Remote(target)
    s3, bucket, prefix = remote.s3, remote.bucket, _prefix(backup)
    with remote.talking():
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception:
            s3.create_bucket(Bucket=bucket)
    remote.abort_uploads(prefix)  # this may be a retry of an upload cut short
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
    try:
        with remote.talking():
            s3.upload_fileobj(body, bucket, prefix + "data.tar.zst")
    except BaseException:
        _stop(zstd, tar)  # the upload gave up: do not leave the packers blocked on a full pipe
        raise
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
    with remote.talking():
        s3.put_object(Bucket=bucket, Key=prefix + "manifest.json", Body=json.dumps(manifest).encode())
    return BackupStatus(
        sha256=body.sha.hexdigest(),
        compressed_bytes=body.size,
        bytes=raw_bytes,
        size_gib=max(1, -(-raw_bytes // (1 << 30))),
        seconds=round(time.perf_counter() - t, 3),
    )


def _manifest(remote: _Remote, backup: Resource, recorded: BackupStatus) -> Manifest:
    """The backup's manifest, at most MANIFEST_MAX bytes, well-formed and agreeing with what the record says the
    upload wrote; DriverError otherwise."""
    what = f"the manifest of backup {backup.name}"
    obj = remote.get(_prefix(backup) + "manifest.json", what)
    raw = b"".join(_read_at_most(obj["Body"], MANIFEST_MAX, what))
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise DriverError(f"{what} on backup target {remote.name} is garbled ({where}: {first['msg']})") from None
    wrote = (backup.id, recorded.sha256, recorded.compressed_bytes, recorded.bytes)
    if (manifest.backup_id, manifest.sha256, manifest.compressed_bytes, manifest.bytes) != wrote:
        raise DriverError(f"{what} on backup target {remote.name} does not match the backup's record")
    return manifest


def restore_into(cloud: HostContext, backup_id: str, root: Path) -> None:
    """Fills root from the backup; raises unless the data's sha256 matches the manifest and the record.
    DriverError for whatever retrying cannot fix (missing, garbled, oversized, refused, a bad archive)."""
    backup = cloud.store.get_by_id(backup_id)
    if backup is None:
        raise DriverError("the backup to restore from no longer exists")
    spec, recorded = BackupSpec.of(backup), BackupStatus.of(backup)
    target = cloud.store.get_by_id(spec.target_id)
    if target is None:
        raise DriverError(f"backup target {spec.target} no longer exists")
    if recorded.sha256 is None or recorded.compressed_bytes is None or recorded.bytes is None:
        raise DriverError(f"backup {backup.name} never finished uploading")
    # what restore_backup charged the quota for: the unpacked files may not take more
    limits = UnpackLimits(max_bytes=max(recorded.bytes, (recorded.size_gib or 1) << 30), max_files=MAX_FILES)
    try:
        remote = _Remote(target)
        manifest = _manifest(remote, backup, recorded)
        what = f"the data of backup {backup.name}"
        obj = remote.get(_prefix(backup) + "data.tar.zst", what)
        if int(obj.get("ContentLength", -1)) != manifest.compressed_bytes:
            obj["Body"].close()
            raise DriverError(
                f"{what} on backup target {remote.name} is {obj.get('ContentLength')} bytes, "
                f"not the {manifest.compressed_bytes} the backup wrote"
            )
        with remote.talking():
            _unpack(backup, _read_at_most(obj["Body"], manifest.compressed_bytes, what), root, manifest, limits)
    except Forbidden as exc:
        raise DriverError(exc.message) from exc


def _unpack(backup: Resource, chunks: Iterator[bytes], root: Path, manifest: Manifest, limits: UnpackLimits) -> None:
    """zstd decompresses in a subprocess fed by a thread that hashes every byte of the object; untar.unpack
    writes what comes out, within limits, never following a link on the host."""
    zstd = subprocess.Popen(
        ["zstd", "-q", "-d", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    stdin, stdout = zstd.stdin, zstd.stdout
    assert stdin is not None and stdout is not None
    sha, fed, failed = hashlib.sha256(), [0], list[BaseException]()

    def feed() -> None:
        feeding = True
        try:
            for chunk in chunks:
                sha.update(chunk)  # the whole object is hashed even if the unpacker gave up on it
                fed[0] += len(chunk)
                if feeding:
                    try:
                        stdin.write(chunk)
                    except BrokenPipeError:
                        feeding = False
        except BaseException as exc:  # re-raised by the caller's thread
            failed.append(exc)
        finally:
            try:
                stdin.close()
            except BrokenPipeError:
                pass

    feeder = threading.Thread(target=feed, name=f"restore-{backup.id}", daemon=True)
    feeder.start()
    refused: BadRequest | None = None
    try:
        unpack(stdout, root, limits)
    except BadRequest as exc:
        refused = exc
    finally:
        stdout.close()  # what is left after the archive's end (or a refusal) is only hashed
        feeder.join()
        zstd.wait()
    if failed:
        raise failed[0]
    if fed[0] != manifest.compressed_bytes:
        raise DriverError(
            f"the data of backup {backup.name} is {fed[0]} bytes, not the {manifest.compressed_bytes} it should have"
        )
    if sha.hexdigest() != manifest.sha256:
        raise DriverError(
            f"backup {backup.name} is corrupt: sha256 {sha.hexdigest()[:16]}… does not match "
            f"the manifest's {manifest.sha256[:16]}…"
        )
    if refused is not None:
        raise DriverError(f"unpacking backup {backup.name} failed: {refused.message}")


class BackupReconciler(KindReconciler):
    """Agent: uploads the snapshot of each backup on this host; cleanup removes the objects (and any multipart
    upload left) from the target."""

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
        if target is None:
            return
        try:
            remote = _Remote(target)
            remote.abort_uploads(_prefix(res))
            with remote.talking():
                for key in ("manifest.json", "data.tar.zst"):  # manifest first: never a manifest without data
                    remote.s3.delete_object(Bucket=remote.bucket, Key=_prefix(res) + key)
        except Forbidden as exc:  # never worth a request to where tenant data may not go; the record still goes
            self.records.add_event(res, "ObjectsLeft", f"objects left on backup target {target.name}: {exc}", "Warning")

    def _fail(self, res: Resource, message: str) -> None:
        self.records.update_status(res.id, phase="failed", status=BackupStatus(message=message).dump())
        self.records.add_event(res, "Failed", message, "Warning")

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
        try:
            with self._uploads:
                done = upload(self.ctx, res, target)
        except Forbidden as exc:  # the endpoint was refused: retrying would not change the admin's mind
            self._fail(res, exc.message)
            raise TerminalError(exc.message) from exc
        records.update_status(rid, phase="ready", observed_generation=res.generation, status=done.dump())
        records.add_event(
            res, "Ready", f"{done.compressed_bytes} bytes in {done.seconds} s, sha256 {str(done.sha256)[:12]}…"
        )
        return Result()
