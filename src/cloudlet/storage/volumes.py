"""Volume and Snapshot kinds: spec, service functions, reconcilers, and the copy-on-write dependency graph.

The graph (image → root disk → snapshot → clone) is derived from the records themselves, so a reference count
can never drift from what exists: a volume's dependents are its snapshots; a snapshot's dependents are the
volumes cloned from it and the instances launched from it; an image's are the instances that boot from it.
Deleting something with live dependents is refused with their names, or done depth-first with cascade.
"""

from __future__ import annotations

__all__ = [
    "VOLUME",
    "SNAPSHOT",
    "VolumeCreate",
    "SnapshotCreate",
    "create_volume",
    "clone_volume",
    "create_snapshot",
    "delete_volume",
    "delete_snapshot",
    "delete_resource",
    "dependents",
    "volume_view",
    "snapshot_view",
    "VolumeReconciler",
    "SnapshotReconciler",
    "storage_quota",
    "AttachRequest",
    "attach_volume",
    "detach_volume",
    "attached_to",
    "release_attachments",
    "follow",
    "pinned_host",
]

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloudlet.compute.resource import INSTANCE, InstanceSpec
from cloudlet.core import quota
from cloudlet.core.conditions import set_condition
from cloudlet.core.context import Caller, Cloud, HostContext
from cloudlet.core.errors import Conflict, DriverError, InvalidSpec, NotFound, NotSupported, TerminalError
from cloudlet.core.labels import Labels
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import (
    FINALIZER,
    NO_NUL,
    Int,
    Name,
    NameRef,
    Number,
    Resource,
    check_name,
    derived_name,
    record_view,
)
from cloudlet.core.store import Guard
from cloudlet.storage.names import disk_of, snapshot_name, volume_name
from cloudlet.storage.resource import (
    BACKUP,
    SNAPSHOT,
    VOLUME,
    Attachment,
    BackupSpec,
    SnapshotPart,
    SnapshotSpec,
    SnapshotStatus,
    VolumeSpec,
    VolumeStatus,
)

GIB = 1 << 30
# the storage quotas (core/quota.py): what is being deleted no longer counts
quota.register_meter(quota.Meter("volumes", VOLUME, lambda r: 0 if r.deleting else 1, 100))
quota.register_meter(quota.Meter("volume_gib", VOLUME, lambda r: 0 if r.deleting else VolumeSpec.of(r).size_gib, 1000))
quota.register_meter(quota.Meter("snapshots", SNAPSHOT, lambda r: 0 if r.deleting else 1, 500))
# What AttachRequest's validator accepts, stated for the schema: absolute, not /, no '..', not under /proc, /sys,
# /dev or /etc.
ATTACH_PATH = r"^/(?!/*$)(?!/*(?:proc|sys|dev|etc)(?:/|$))(?!(?:[^\x00]*/)?\.\.(?:/|$))[^\x00]+$"


class VolumeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    name: Name
    size_gib: Int = Field(ge=1, le=16384)
    replicas: Int = Field(default=0, ge=0, le=1, description="1: ship it to a host in another zone")
    replica_interval_s: Number = Field(
        default=5.0, ge=0.5, le=3600, description="how often its replica is brought up to date"
    )


class AttachRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instance: NameRef
    # pattern: no NUL, checked here; the schema states all of ATTACH_PATH, which _path() checks
    path: str = Field("/data", max_length=255, pattern=NO_NUL, json_schema_extra={"pattern": ATTACH_PATH})

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        parts = [p for p in v.split("/") if p not in ("", ".")]  # "//srv/./data/" is /srv/data
        if not v.startswith("/") or not parts or ".." in parts or parts[0] in ("proc", "sys", "dev", "etc"):
            raise ValueError("path must be absolute, not /, without '..', and not under /proc, /sys, /dev or /etc")
        return "/" + "/".join(parts)


class SnapshotCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    source: NameRef = Field(description="volume or instance name")
    name: Name | None = None


def storage_quota(tenant: str, volumes: int = 0, gib: int = 0, snapshots: int = 0) -> Guard | None:
    """The quota check of a storage create, for the store to run in the create's transaction (core/quota.py)."""
    return quota.guard(tenant, {"volumes": volumes, "volume_gib": gib, "snapshots": snapshots})


def _new(
    cloud: Cloud,
    kind: str,
    caller: Caller,
    name: str,
    spec: dict[str, Any],
    what: str,
    labels: dict[str, str],
    guard: Guard | None,
    owner: str | None = None,
    on: Resource | None = None,
) -> Resource:
    """on: the record whose host's pool holds it (an instance snapshot is taken where its disk is)."""
    res = Resource(
        owner=owner,
        kind=kind,
        tenant=caller.tenant,
        name=name,
        spec=spec,
        finalizers=[FINALIZER],
        labels=labels,
        zone=on.zone if on is not None and on.host else cloud.config.zone,
        host=on.host if on is not None and on.host else cloud.config.host,
    )
    return cloud.store.create(res, created=what, guard=guard)


def create_volume(cloud: Cloud, caller: Caller, req: VolumeCreate, owner: str | None = None) -> Resource:
    check_name("volume", req.name)
    return _new(
        cloud,
        VOLUME,
        caller,
        req.name,
        VolumeSpec(size_gib=req.size_gib, replicas=req.replicas, replica_interval_s=req.replica_interval_s).dump(),
        f"volume {req.name} of {req.size_gib} GiB",
        req.labels,
        storage_quota(caller.tenant, volumes=1, gib=req.size_gib),
        owner,
    )


def clone_volume(
    cloud: Cloud, caller: Caller, snapshot: str, name: str, labels: dict[str, str] | None = None
) -> Resource:
    check_name("volume", name)
    snap = cloud.store.get(SNAPSHOT, caller.tenant, snapshot)
    if snap.deleting:
        raise Conflict(f"snapshot {snapshot} is being deleted")
    size = SnapshotSpec.of(snap).size_gib or 1
    return _new(
        cloud,
        VOLUME,
        caller,
        name,
        VolumeSpec(size_gib=size, source_snapshot_id=snap.id).dump(),
        f"volume {name} cloned from snapshot {snapshot}",
        labels or {},
        storage_quota(caller.tenant, volumes=1, gib=size),
        on=snap,  # a clone shares the snapshot's extents: it is made in the pool that holds them
    )


def attach_volume(cloud: Cloud, caller: Caller, name: str, req: AttachRequest) -> Resource:
    vol = cloud.store.get(VOLUME, caller.tenant, name)
    try:
        inst = cloud.store.get(INSTANCE, caller.tenant, req.instance)
    except NotFound:  # 409: the volume exists, what it should go to does not
        raise Conflict(f"instance {req.instance!r} not found; launch it before attaching volumes to it") from None
    if vol.deleting or inst.deleting:
        raise Conflict("the volume or the instance is being deleted")
    if vol.phase != "ready":
        raise Conflict(f"volume {name} is {vol.phase}; attach it once it is ready")
    spec = VolumeSpec.of(vol)
    if spec.attachment and spec.attachment.instance_id != inst.id:
        raise Conflict(f"volume {name} is attached to instance {spec.attachment.instance}; detach it first")
    for other in attached_to(cloud, inst):
        theirs = VolumeSpec.of(other).attachment
        if other.id != vol.id and theirs is not None and theirs.path == req.path:
            raise Conflict(f"instance {inst.name} already has volume {other.name} at {req.path}")
    if inst.host is not None and vol.host != inst.host:
        if VolumeStatus.of(vol).bound:
            raise Conflict(
                f"volume {name} holds data on host {vol.host} and instance {inst.name} runs on host {inst.host}; "
                f"attach it to an instance on {vol.host} (a drain or a recovery moves a volume with its instance)"
            )
        vol = follow(cloud, vol, inst.host, inst.zone)
    spec.attachment = Attachment(instance_id=inst.id, instance=inst.name, path=req.path)
    vol = cloud.store.update_spec(vol.id, spec.dump())
    cloud.store.add_event(vol, "AttachRequested", f"attach to {inst.name} at {req.path}")
    return vol


def detach_volume(cloud: Cloud, caller: Caller, name: str) -> Resource:
    vol = cloud.store.get(VOLUME, caller.tenant, name)
    spec = VolumeSpec.of(vol)
    if spec.attachment:
        spec.attachment = None
        vol = cloud.store.update_spec(vol.id, spec.dump())
        cloud.store.add_event(vol, "DetachRequested", "detach requested")
    return vol


def attached_to(cloud: Cloud | HostContext, instance: Resource) -> list[Resource]:
    return [
        v for v in cloud.store.list(VOLUME, tenant=instance.tenant) if _attached_id(v) == instance.id and not v.deleting
    ]


def _attached_id(vol: Resource) -> str | None:
    attachment = VolumeSpec.of(vol).attachment
    return attachment.instance_id if attachment else None


def volumes_of_snapshot(
    cloud: Cloud, caller: Caller, snapshot: Resource, instance_id: str, instance: str
) -> list[Resource]:
    """Volume records (not yet stored) that clone the volumes attached when an instance snapshot was taken, for a
    new instance launched from it: attached at the same paths, named INSTANCE-VOLUME. Checked for names; their
    quota is checked with the instance's, in the transaction that stores them all."""
    out = []
    for part in SnapshotStatus.of(snapshot).volumes:
        name = f"{instance}-{part.volume}"[:63].rstrip("-")
        check_name("volume", name)
        if cloud.store.list(VOLUME, tenant=caller.tenant, name=name):
            raise Conflict(f"volume {name} exists; the clone of {part.volume} needs that name")
        spec = VolumeSpec(
            size_gib=part.size_gib or 1,
            source_snapshot_id=snapshot.id,
            source_part=part.pool,
            attachment=Attachment(instance_id=instance_id, instance=instance, path=part.path),
        )
        out.append(
            Resource(
                kind=VOLUME,
                tenant=caller.tenant,
                name=name,
                finalizers=[FINALIZER],
                zone=snapshot.zone or cloud.config.zone,
                host=snapshot.host or cloud.config.host,
                spec=spec.dump(),
            )
        )
    return out


def follow(cloud: Cloud, vol: Resource, host: str, zone: str | None) -> Resource:
    """Moves an unbound volume (no data yet) to its instance's host: made again there, empty; its old host's
    agent lets go of the empty one."""
    status = VolumeStatus.of(vol).model_copy(update={"attached": None, "path": None, "message": ""})
    vol = cloud.store.place(vol.id, host, zone, phase="pending", status=status.dump())
    cloud.store.add_event(vol, "Moved", f"made on host {host}, where its instance is")
    return vol


def pinned_host(cloud: Cloud, instance: Resource) -> tuple[str | None, str]:
    """(host, why) an instance must run on because its attached volumes hold data there; (None, "") when none
    does. Raises when they are on different hosts: no host can run it."""
    bound = [v for v in attached_to(cloud, instance) if VolumeStatus.of(v).bound]
    hosts = sorted({str(v.host) for v in bound})
    if len(hosts) > 1:
        where = ", ".join(f"{v.name} on {v.host}" for v in sorted(bound, key=lambda v: v.name))
        raise Conflict(
            f"the volumes of instance {instance.name} hold data on different hosts ({where}): "
            "detach those of all hosts but one"
        )
    if not hosts:
        return None, ""
    names = ", ".join(sorted(v.name for v in bound))
    verb = "volumes {} hold" if len(bound) > 1 else "volume {} holds"
    return hosts[0], f"{verb.format(names)} its data on host {hosts[0]}"


def release_attachments(cloud: Cloud, instance: Resource) -> None:
    """Volumes outlive the instance they were attached to, detached."""
    for vol in attached_to(cloud, instance):
        spec = VolumeSpec.of(vol)
        spec.attachment = None
        cloud.store.update_spec(vol.id, spec.dump())


def create_snapshot(cloud: Cloud, caller: Caller, req: SnapshotCreate, owner: str | None = None) -> Resource:
    src: Resource | None = None
    for kind in (VOLUME, INSTANCE):
        try:
            src = cloud.store.get(kind, caller.tenant, req.source)
            break
        except NotFound:
            continue
    if src is None:
        raise NotFound(f"no volume or instance named {req.source!r}")
    if src.deleting:
        raise Conflict(f"{src.kind.lower()} {req.source} is being deleted")
    name = req.name or derived_name(req.source, time.strftime("%Y%m%d-%H%M%S"))
    check_name("snapshot", name)
    if src.kind == VOLUME:
        spec = SnapshotSpec(
            source_kind="Volume", source_id=src.id, source_name=src.name, size_gib=VolumeSpec.of(src).size_gib
        )
    else:
        spec = SnapshotSpec(
            source_kind="Instance", source_id=src.id, source_name=src.name, image_id=InstanceSpec.of(src).image_id
        )
    what = f"snapshot {name} of {src.kind.lower()} {src.name}"
    guard = storage_quota(caller.tenant, snapshots=1)
    return _new(cloud, SNAPSHOT, caller, name, spec.dump(), what, req.labels, guard, owner, on=src)


def dependents(cloud: Cloud, res: Resource) -> list[Resource]:
    """Live records that need res to stay: the edges of the copy-on-write graph (images are never deleted yet)."""
    store = cloud.store
    if res.kind == VOLUME:
        out = [s for s in store.list(SNAPSHOT, tenant=res.tenant) if SnapshotSpec.of(s).source_id == res.id]
    elif res.kind == SNAPSHOT:
        out = [v for v in store.list(VOLUME, tenant=res.tenant) if VolumeSpec.of(v).source_snapshot_id == res.id]
        out += [i for i in store.list(INSTANCE, tenant=res.tenant) if InstanceSpec.of(i).from_snapshot_id == res.id]
        out += [
            b
            for b in store.list(BACKUP, tenant=res.tenant)  # a backup in flight still reads it
            if BackupSpec.of(b).snapshot_id == res.id and b.phase not in ("ready", "failed")
        ]
    elif res.kind == INSTANCE:
        out = [s for s in store.list(SNAPSHOT, tenant=res.tenant) if SnapshotSpec.of(s).source_id == res.id]
    else:
        out = []
    return [d for d in out if not d.deleting]


def delete_resource(cloud: Cloud, res: Resource, cascade: bool, _seen: set[str] | None = None) -> list[Resource]:
    """Marks res for deletion unless something depends on it; with cascade, its dependents first. The graph has
    cycles (an instance replaced from its own snapshot depends on it): each record is visited once."""
    attachment = VolumeSpec.of(res).attachment if res.kind == VOLUME else None
    if attachment:  # never cascaded: that would delete the instance using it
        raise Conflict(f"volume {res.name} is attached to instance {attachment.instance}; detach it first")
    seen = _seen if _seen is not None else set()
    seen.add(res.id)
    deps = [d for d in dependents(cloud, res) if d.id not in seen]
    if deps and not cascade:
        names = ", ".join(f"{d.kind.lower()} {d.name}" for d in deps)
        raise Conflict(f"{res.kind.lower()} {res.name} is still used by {names}; delete those first or use --cascade")
    deleted: list[Resource] = []
    for dep in deps:
        if dep.id not in seen:  # an earlier dependent's cascade may have reached it
            deleted += delete_resource(cloud, dep, cascade, seen)
    if not res.deleting:
        res = cloud.store.mark_deleted(res.id)
        cloud.store.add_event(res, "Deleting", f"{res.kind.lower()} {res.name} marked for deletion")
    return deleted + [res]


def delete_volume(cloud: Cloud, caller: Caller, name: str, cascade: bool = False) -> list[Resource]:
    return delete_resource(cloud, cloud.store.get(VOLUME, caller.tenant, name), cascade)


def delete_snapshot(cloud: Cloud, caller: Caller, name: str, cascade: bool = False) -> list[Resource]:
    return delete_resource(cloud, cloud.store.get(SNAPSHOT, caller.tenant, name), cascade)


def volume_view(res: Resource) -> dict[str, Any]:
    spec, st = VolumeSpec.of(res), VolumeStatus.of(res)
    return record_view(
        res,
        size_gib=spec.size_gib,
        state="deleting" if res.deleting else res.phase,
        source_snapshot_id=spec.source_snapshot_id,
        attached_to=spec.attachment.instance if spec.attachment else None,
        path=spec.attachment.path if spec.attachment else None,
        attached=st.attached is not None,
        host=res.host,  # where its data is
        bound=st.bound,
        message=st.message,
    )


def snapshot_view(res: Resource) -> dict[str, Any]:
    spec, st = SnapshotSpec.of(res), SnapshotStatus.of(res)
    return record_view(
        res,
        source_kind=spec.source_kind,
        source=spec.source_name,
        state="deleting" if res.deleting else res.phase,
        frozen=st.frozen,
        took_ms=st.took_ms,
        volumes=[p.volume for p in st.volumes],
        message=st.message,
    )


Restorer = Callable[[HostContext, str, Path], None]


class _PoolReconciler(KindReconciler):
    """Agent, shared shape: ensure the pool volume and mark it ready; cleanup removes it.
    `restore` (injected: backups.restore_into) fills a volume or snapshot whose spec says restore_from."""

    status_model: type[VolumeStatus | SnapshotStatus] = VolumeStatus

    def __init__(self, ctx: HostContext, restore: Restorer | None = None) -> None:
        super().__init__(ctx.store)
        self.cloud = ctx
        self.restore = restore

    def _fail(self, res: Resource, phase: str, message: str) -> None:
        status = self.status_model.of(res).model_copy(update={"message": message})
        self.cloud.store.update_status(res.id, phase=phase, status=status.dump())

    def serves(self, res: Resource) -> bool:
        return res.host == self.cloud.host

    def restored(self, res: Resource, final: str, readonly: bool) -> bool:
        """Fills final from the backup named in the spec, through a `.partial` volume, so that a crash or a
        checksum mismatch never leaves a half-restored volume under the final name. False: not a restore."""
        backup_id = (VolumeSpec if res.kind == VOLUME else SnapshotSpec).of(res).restore_from
        if not backup_id:
            return False
        if self.restore is None:
            raise NotSupported("restoring from backups is not configured")
        pool = self.cloud.pool
        if not pool.exists(final):
            partial = final + ".partial"
            pool.delete(partial)
            try:
                self.restore(self.cloud, backup_id, pool.create_volume(partial))
            except DriverError as exc:
                pool.delete(partial)
                self._fail(res, "failed", exc.message)
                self.cloud.store.add_event(res, "RestoreFailed", exc.message, "Warning")
                raise TerminalError(exc.message) from exc
            pool.snapshot(partial, final, readonly=readonly)
            pool.delete(partial)
        return True

    def pool_name(self, res: Resource) -> str:
        raise NotImplementedError

    def make(self, res: Resource) -> dict[str, Any]:
        """Makes the pool volume; returns the status fields it learnt."""
        raise NotImplementedError

    def cleanup(self, res: Resource) -> None:
        self.cloud.pool.delete(self.pool_name(res))

    def converge(self, res: Resource) -> Result:
        store, rid = self.cloud.store, res.id
        if res.phase == "ready":
            if not self.cloud.pool.exists(self.pool_name(res)):
                # never silently remade: a new snapshot or an empty volume would pass for the lost data
                self._fail(res, "lost", "pool volume vanished")
                store.add_event(res, "Lost", f"the data of {res.kind.lower()} {res.name} is gone", "Warning")
                return Result()
            return self.converge_ready(res)
        if res.phase in ("lost", "failed"):
            return Result()
        old = self.status_model.of(res)
        status = old.model_validate(
            {
                **old.dump(),
                **self.make(res),
                "conditions": set_condition(old.conditions, "Ready", True, "Created", "", res.generation),
            }
        )
        store.update_status(rid, phase="ready", observed_generation=res.generation, status=status.dump())
        store.add_event(res, "Ready", f"{res.kind.lower()} {res.name} is ready")
        return Result()

    def converge_ready(self, res: Resource) -> Result:
        """What a ready resource still has to converge on; nothing by default."""
        return Result()


class VolumeReconciler(_PoolReconciler):
    kind = VOLUME

    def pool_name(self, res: Resource) -> str:
        return volume_name(res.id)

    def make(self, res: Resource) -> dict[str, Any]:
        spec, pool = VolumeSpec.of(res), self.cloud.pool
        if self.restored(res, volume_name(res.id), readonly=False):
            pass
        elif spec.source_part:  # a volume that was attached when an instance snapshot was taken
            pool.snapshot(spec.source_part, volume_name(res.id), readonly=False)
        elif spec.source_snapshot_id:
            pool.snapshot(snapshot_name(spec.source_snapshot_id), volume_name(res.id), readonly=False)
        else:
            pool.create_volume(volume_name(res.id))
        if pool.capabilities.quotas:
            pool.set_limit(volume_name(res.id), spec.size_gib * GIB)
        made_from = spec.restore_from or spec.source_part or spec.source_snapshot_id
        return {"path": str(pool.path(volume_name(res.id))), "bound": bool(made_from)}

    def forget(self, rid: str) -> None:
        """Its record left this host: purged while this agent was not looking, or moved to another host (with
        its data, which is there now, or empty): what is left of it here goes."""
        self.cloud.pool.delete(volume_name(rid))

    def converge_ready(self, res: Resource) -> Result:
        """Live attach/detach: status.attached follows spec.attachment."""
        status = VolumeStatus.of(res)
        want, have = VolumeSpec.of(res).attachment, status.attached
        if (want and want.where()) == (have and have.where()):
            if status.message:  # a failed attach the user took back
                self.cloud.store.update_status(res.id, status=status.model_copy(update={"message": ""}).dump())
            return Result()
        compute, source = self.cloud.compute, self.cloud.pool.path(volume_name(res.id))
        try:
            if have and have.instance_id:
                compute.detach_volume(have.instance_id, source, have.path)
                status.attached = None
                self.cloud.store.add_event(res, "Detached", f"detached from {have.instance}")
            if want and want.instance_id:
                compute.attach_volume(want.instance_id, source, want.path)
                self.cloud.store.add_event(res, "Attached", f"attached to {want.instance} at {want.path}")
        except DriverError as exc:  # said once, for the CLI's --wait and the events; retried with backoff
            if status.message != exc.message:
                self.cloud.store.add_event(res, "AttachFailed", exc.message, "Warning")
                self.cloud.store.update_status(res.id, status=status.model_copy(update={"message": exc.message}).dump())
            raise
        status.message = ""
        status.attached = want
        status.bound = status.bound or want is not None  # from now on its instance may write to it
        self.cloud.store.update_status(res.id, status=status.dump(), observed_generation=res.generation)
        return Result()


class SnapshotReconciler(_PoolReconciler):
    kind = SNAPSHOT
    status_model = SnapshotStatus

    def pool_name(self, res: Resource) -> str:
        return snapshot_name(res.id)

    def cleanup(self, res: Resource) -> None:
        super().cleanup(res)
        for part in SnapshotStatus.of(res).volumes:
            self.cloud.pool.delete(part.pool)

    def make(self, res: Resource) -> dict[str, Any]:
        if self.restored(res, snapshot_name(res.id), readonly=True):
            return {"frozen": False, "restored": True}
        spec = SnapshotSpec.of(res)
        src_kind, src_id = spec.source_kind, str(spec.source_id)
        source = volume_name(src_id) if src_kind == VOLUME else disk_of(src_id)
        if not self.cloud.pool.exists(source):
            raise InvalidSpec(f"the {src_kind.lower()} {spec.source_name} has no disk to snapshot yet")
        parts = []
        if src_kind == INSTANCE:
            inst = self.cloud.store.get_by_id(src_id)
            for vol in attached_to(self.cloud, inst) if inst else []:
                vspec = VolumeSpec.of(vol)
                assert vspec.attachment is not None  # attached_to() chose it for its attachment
                parts.append(
                    SnapshotPart(
                        volume=vol.name,
                        volume_id=vol.id,
                        path=vspec.attachment.path,
                        pool=f"{snapshot_name(res.id)}.vol-{vol.id}",
                        size_gib=vspec.size_gib,
                    )
                )
        frozen = src_kind == INSTANCE and self.cloud.compute.pause_instance(src_id)
        t = time.perf_counter()
        try:  # one frozen moment for the root disk and every attached volume
            self.cloud.pool.snapshot(source, snapshot_name(res.id), readonly=True)
            for part in parts:
                self.cloud.pool.snapshot(volume_name(part.volume_id), part.pool, readonly=True)
        finally:
            if frozen:
                self.cloud.compute.resume_instance(src_id)
        return {
            "frozen": frozen,
            "took_ms": round((time.perf_counter() - t) * 1000, 2),
            "volumes": [p.model_dump() for p in parts],
        }
