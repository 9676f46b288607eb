"""The storage kinds (Volume, Snapshot, BackupTarget, BackupEndpoint, Backup, BackupPolicy, Replica): their
registration and their Spec and Status models; and the Tenant's spec (its quota, core/quota.py, and more)."""

from __future__ import annotations

__all__ = [
    "VOLUME",
    "SNAPSHOT",
    "BACKUP_TARGET",
    "BACKUP_ENDPOINT",
    "BACKUP",
    "BACKUP_POLICY",
    "REPLICA",
    "Attachment",
    "VolumeSpec",
    "VolumeStatus",
    "SnapshotPart",
    "SnapshotSpec",
    "SnapshotStatus",
    "TargetSpec",
    "EndpointSpec",
    "BackupSpec",
    "BackupStatus",
    "PolicySpec",
    "PolicyStatus",
    "Verification",
    "VerifyResult",
    "ReplicaSpec",
    "ReplicaStatus",
    "TenantSpec",
]

from typing import Any, Literal

from pydantic import BaseModel, Field

from cloudlet.core.kinds import KindInfo, register_kind
from cloudlet.core.models import Spec, Status
from cloudlet.core.quota import TenantQuota

VOLUME = register_kind(KindInfo("Volume", "volumes", host_bound=True)).name
SNAPSHOT = register_kind(KindInfo("Snapshot", "snapshots", host_bound=True)).name
BACKUP_TARGET = register_kind(KindInfo("BackupTarget", "backup-targets")).name
# the admin's allow list of S3 endpoints tenants' targets may use (shared records, no labels)
BACKUP_ENDPOINT = register_kind(
    KindInfo("BackupEndpoint", "backup-endpoints", tenant_scoped=False, labelled=False)
).name
BACKUP = register_kind(KindInfo("Backup", "backups", host_bound=True)).name
BACKUP_POLICY = register_kind(KindInfo("BackupPolicy", "backup-policies")).name
# how one disk (an instance's root or a volume) is shipped to its replica host: a system record on the source's
# host, so only that agent sees the token (storage/replication.py); owned by the source
REPLICA = register_kind(KindInfo("Replica", "replicas", tenant_scoped=False, host_bound=True, labelled=False)).name


class Attachment(BaseModel):
    instance_id: str | None
    instance: str
    path: str

    def where(self) -> tuple[str | None, str]:
        return self.instance_id, self.path


class VolumeSpec(Spec):
    size_gib: int
    source_snapshot_id: str | None = None
    source_part: str | None = None  # the pool volume of an instance snapshot's part it is cloned from
    attachment: Attachment | None = None
    restore_from: str | None = None  # a backup id
    replicas: int = Field(default=0, ge=0, le=1)  # 1: a copy on another host, shipped every replica_interval_s
    replica_interval_s: float = Field(default=5.0, ge=0.5, le=3600)


class VolumeStatus(Status):
    attached: Attachment | None = None
    # it holds data on its host (it was attached, or made from a snapshot or a backup): only a drain or a
    # recovery moves it, with that data; an unbound volume follows the first instance it is attached to
    bound: bool = False
    path: str | None = None
    message: str = ""
    conditions: list[dict[str, Any]] = Field(default_factory=list)


class SnapshotPart(BaseModel):
    """A volume that was attached to the instance when its snapshot was taken."""

    volume: str
    volume_id: str
    path: str
    pool: str
    size_gib: int | None = None


class SnapshotSpec(Spec):
    source_kind: Literal["Volume", "Instance"]
    source_id: str | None
    source_name: str
    size_gib: int | None = None
    image_id: str | None = None
    restore_from: str | None = None


class SnapshotStatus(Status):
    frozen: bool | None = None
    took_ms: float | None = None
    volumes: list[SnapshotPart] = Field(default_factory=list)
    restored: bool = False
    message: str = ""
    conditions: list[dict[str, Any]] = Field(default_factory=list)


class TargetSpec(Spec):
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    # a tenant's target: the BackupEndpoint entry that lets it be used (cleared when the admin removes the entry),
    # and whether that entry lets it reach loopback, private and link-local addresses; the admin's need neither
    allowed_by: str | None = None
    private: bool = False


class EndpointSpec(Spec):
    url: str  # an origin: scheme://host:port
    private: bool = False


class BackupSpec(Spec):
    snapshot_id: str
    snapshot: str
    target_id: str
    target: str
    source_kind: Literal["Volume", "Instance"]
    source: str
    image_id: str | None = None
    policy_id: str | None = None
    drop_snapshot: bool = False


class BackupStatus(Status):
    sha256: str | None = None
    compressed_bytes: int | None = None
    bytes: int | None = None
    size_gib: int | None = None
    seconds: float | None = None
    message: str = ""


class PolicySpec(Spec):
    interval_seconds: int | None = None
    schedule: str | None = None
    keep_last: int = 1
    keep_daily: int = 0
    keep_weekly: int = 0
    volumes: list[str] = Field(default_factory=list)
    instances: list[str] = Field(default_factory=list)
    selector: str | None = None
    target: str | None = None
    verify: bool = False  # restore each run's backups into scratch instances and check them (storage/verify.py)
    verify_nonce: int = 0  # `backup policy verify` bumps it: verify the newest backups now


class Verification(BaseModel):
    """A policy's verification in progress: the backups of one run, restored and booted one at a time."""

    queue: list[str]  # ids of the backups still to verify; the first is the one under trial
    trial: str | None = None  # names and labels the scratch records of the backup under trial
    started_at: float
    total: int
    failures: list[str] = Field(default_factory=list)


class VerifyResult(BaseModel):
    ok: bool
    message: str
    seconds: float
    at: float
    backups: int


class PolicyStatus(Status):
    last_run: float | None = None
    message: str = ""
    expired: int = 0
    verifying: Verification | None = None
    last_verified_at: float | None = None  # the last verification that passed
    last_verify: VerifyResult | None = None  # the last one that finished, passed or not
    overdue_warned: float | None = None  # the last verified time (or creation) a VerifyOverdue event was sent for
    verify_nonce: int = 0  # the spec's verify_nonce whose verification was started


class ReplicaSpec(Spec):
    """Written by the control plane (storage/replication.py ReplicaPlanner)."""

    source_kind: Literal["Volume", "Instance"]
    source_id: str
    source_name: str
    tenant: str
    volume: str  # the pool volume shipped: disks/<instance id> or volumes/<volume id>
    interval_s: float = 5.0
    target_host: str | None = None  # None: no host can hold it (note says why)
    target_zone: str | None = None
    endpoint: str | None = None  # the target agent's API, from its heartbeat
    token: str | None = None  # lets the holder ship this volume's replicas to the target, and nothing else
    note: str = ""


class ReplicaStatus(Status):
    """Written by the source host's agent after each cycle."""

    host: str | None = None  # where the newest replica is
    seq: int | None = None
    taken_at: float | None = None  # when the newest replica's snapshot was taken: the data it holds is this old
    shipped_at: float | None = None
    ship_s: float | None = None  # snapshot, send and receive of the last cycle
    bytes: int | None = None
    stale: bool = False  # a ReplicaStale event was sent and the replica has not caught up since
    message: str = ""


class TenantSpec(TenantQuota):
    """What the admin sets for a tenant: its quota (core/quota.py), and more."""

    uid_slot: int | None = None  # which user-namespace id range its instances run in (compute/idmap.py)
