"""The compute kinds (Instance, Image, Host): their registration and their Spec and Status models."""

from __future__ import annotations

__all__ = [
    "INSTANCE",
    "IMAGE",
    "HOST",
    "InstanceSpec",
    "InstanceStatus",
    "ImageSpec",
    "ImageStatus",
    "HostSpec",
    "HostStatus",
]

from typing import Any, Literal

from pydantic import Field

from cloudlet.core.kinds import KindInfo, register_kind
from cloudlet.core.models import Spec, Status

INSTANCE = register_kind(KindInfo("Instance", "instances", host_bound=True)).name
IMAGE = register_kind(KindInfo("Image", "images", tenant_scoped=False)).name
HOST = register_kind(KindInfo("Host", "hosts", tenant_scoped=False)).name


class InstanceSpec(Spec):
    image: str
    image_id: str
    network: str
    network_id: str
    cpus: float
    memory_mib: int
    restart: Literal["always", "never"] = "always"
    command: list[str] | None = None
    zone: str | None = None
    state: Literal["running", "stopped"] = "running"
    run_nonce: int = 1  # start and restart bump it; the agent records the one it acted on
    from_snapshot_id: str | None = None
    uid_base: int | None = None  # host uid its root maps to: its tenant's user-namespace range (compute/idmap.py)
    disk_gib: int = 2  # root disk size limit, where the pool enforces limits
    net_raw: bool = False  # CAP_NET_RAW, asked for at launch (ping needs none: ICMP datagram sockets)
    secgroups: list[str] = Field(default_factory=list)  # SecurityGroup ids (network/secgroups.py), ingress rules
    user_data: str | None = None  # run at boot (compute/seed.py), served as /latest/user-data (network/metadata.py)
    # placement (compute/placement.py): the tenant's instances of one group (a stack layer's STACK/LAYER) spread
    # over zones then hosts, a host holding one is avoided ("prefer") or refused ("hosts")
    group: str | None = None
    anti_affinity: Literal["prefer", "hosts"] = "prefer"
    ha: bool = False  # HA-managed: its agent stops it when it loses its lease (resilience/lease.py)
    # 1: its root disk is shipped to a host in another zone every replica_interval_s (storage/replication.py)
    replicas: int = Field(default=0, ge=0, le=1)
    replica_interval_s: float = Field(default=5.0, ge=0.5, le=3600)


class InstanceStatus(Status):
    state: str = "pending"
    ip: str | None = None
    pid: int | None = None
    run_nonce: int | None = None
    restarts: int = 0
    crash_loop: int = 0  # exits in a row that came soon after a start (compute/runtime.py backs off on them)
    retry_at: float | None = None  # when a backed-off restart is due (the agent's monotonic clock)
    dns_name: str | None = None
    message: str = ""
    started_at: float | None = None
    placement: dict[str, Any] | None = None
    conditions: list[dict[str, Any]] = Field(default_factory=list)


class ImageSpec(Spec):
    source: Literal["busybox", "debootstrap", "import"]
    digest: str
    command: list[str]
    suite: str | None = None
    packages: list[str] = Field(default_factory=list)
    mirror: str | None = None
    upload_bytes: int | None = None  # an import's tarball: what it counts in quota until a host measured it


class ImageStatus(Status):
    size_mib: int | None = None
    message: str = ""


class HostSpec(Spec):
    cpus: int
    memory_mib: int
    cordoned: bool = False  # placement puts nothing new here; what runs stays


class HostStatus(Status):
    version: str | None = None
    endpoint: str | None = None
    key: str | None = None  # what the control plane shows the agent's API; never in views
    dns_port: int | None = None
    last_heartbeat: float | None = None
    pressure: float = 0.0  # CPU PSI "some avg10" the agent last reported (placement's pressure weight)
    # failure detection (resilience/monitor.py): the agent process's boot id; the last renewal of its lease and
    # since when it has been up, renewing, with every reply reaching it (both on the control plane's clock); the
    # peers that renewal named (its agent asks them before it self-fences); when the phase last changed (wall)
    incarnation: str | None = None
    renewed_at: float | None = None
    lease_until: float | None = None  # renewed_at + T: the agent's lease ends before this
    up_since: float | None = None
    lease_peers: list[str] = Field(default_factory=list)
    phase_since: float | None = None
