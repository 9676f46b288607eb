"""The compute kinds (Instance, Image, Host): their registration and their Spec and Status models."""

from __future__ import annotations

__all__ = [
    "INSTANCE",
    "IMAGE",
    "HOST",
    "HealthCheck",
    "HealthState",
    "InstanceSpec",
    "InstanceStatus",
    "ImageSpec",
    "ImageStatus",
    "HostSpec",
    "HostStatus",
]

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudlet.core.kinds import KindInfo, register_kind
from cloudlet.core.models import Spec, Status
from cloudlet.core.records import Int, JsonNumber, Number

INSTANCE = register_kind(KindInfo("Instance", "instances", host_bound=True)).name
IMAGE = register_kind(KindInfo("Image", "images", tenant_scoped=False)).name
HOST = register_kind(KindInfo("Host", "hosts", tenant_scoped=False)).name


class HealthCheck(BaseModel):
    """What the agent probes from inside the instance (resilience/health.py): after `fall` failures in a row it is
    unhealthy, after `rise` successes healthy. Strict: a body or stack with a field of another type is refused."""

    # the rules per type, stated in the schema too (timeout_s below interval_s is the one it cannot state)
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {
                    "required": ["type", "port"],
                    "properties": {
                        "type": {"const": "tcp"},
                        "port": {"type": "integer"},
                        "process": {"type": "null"},
                        "path": {"const": "/"},
                        "expect_status": {"const": 200},
                    },
                },
                {
                    "required": ["type", "port"],
                    "properties": {"type": {"const": "http"}, "port": {"type": "integer"}, "process": {"type": "null"}},
                },
                {
                    "required": ["type", "process"],
                    "properties": {
                        "type": {"const": "process"},
                        "process": {"type": "string"},
                        "port": {"type": "null"},
                        "path": {"const": "/"},
                        "expect_status": {"const": 200},
                    },
                },
            ]
        },
    )
    type: Literal["process", "tcp", "http"]
    port: Annotated[int, Field(ge=1, le=65535), JsonNumber] | None = Field(None, description="tcp and http: the port")
    path: str = Field("/", max_length=256, pattern=r"^/[!-~]*$", description="http: the path (printable ASCII)")
    expect_status: Int = Field(200, ge=100, le=599, description="http: the status that counts as healthy")
    process: str | None = Field(
        None, min_length=1, max_length=15, pattern=r"^[!-~][ -~]*$", description="process: a process name (comm)"
    )
    interval_s: Number = Field(2.0, ge=0.5, le=300, description="seconds between probes")
    timeout_s: Number = Field(1.0, gt=0, le=60, description="each probe's limit, less than interval_s")
    fall: Int = Field(3, ge=1, le=20, description="failures in a row that make it unhealthy")
    rise: Int = Field(2, ge=1, le=20, description="successes in a row that make it healthy")

    @model_validator(mode="after")
    def _fits_type(self) -> Self:
        if self.type in ("tcp", "http") and self.port is None:
            raise ValueError(f"a {self.type} check needs a port (1-65535)")
        if self.type == "process" and self.process is None:
            raise ValueError("a process check needs the process name to look for")
        if self.type != "process" and self.process is not None:
            raise ValueError(f"process is only for a process check, not {self.type}")
        if self.type == "process" and self.port is not None:
            raise ValueError("port is only for tcp and http checks")
        if self.type != "http" and (self.path != "/" or self.expect_status != 200):
            raise ValueError("path and expect_status are only for an http check")
        if self.timeout_s >= self.interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s:g}) must be less than interval_s ({self.interval_s:g})")
        return self

    def describe(self) -> str:
        """tcp:8080, http:80/healthz, process:httpd (the CLI's own notation)."""
        what = {"tcp": f"{self.port}", "http": f"{self.port}{self.path}", "process": self.process or ""}[self.type]
        return f"{self.type}:{what}"


class HealthState(BaseModel):
    """The agent's last word on an instance's check: written on a change of state and every ~10 s, not per probe."""

    state: Literal["unknown", "healthy", "unhealthy"] = "unknown"
    failures: int = 0  # in a row
    successes: int = 0  # in a row
    last_error: str = ""
    checked_at: float | None = None  # wall clock of the last probe
    since: float | None = None  # wall clock of the last change of state


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
    # a rebuild (recovery, `instance replace`) bumps it with run_nonce: the next start clones a fresh root disk
    disk_epoch: int = 0
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
    health: HealthCheck | None = None  # probed by its agent (resilience/health.py); recovery acts on unhealthy


class InstanceStatus(Status):
    state: str = "pending"
    ip: str | None = None
    pid: int | None = None
    run_nonce: int | None = None
    disk_epoch: int = 0  # the spec's disk_epoch the root disk was cloned for
    restarts: int = 0
    crash_loop: int = 0  # exits in a row that came soon after a start (compute/runtime.py backs off on them)
    retry_at: float | None = None  # when a backed-off restart is due (the agent's monotonic clock)
    dns_name: str | None = None
    message: str = ""
    started_at: float | None = None
    placement: dict[str, Any] | None = None
    conditions: list[dict[str, Any]] = Field(default_factory=list)
    health: HealthState | None = None  # None while it has no check


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
    # `host drain` (resilience/drain.py): state, moved, total, failed [{instance, reason}], started_at, took_s
    drain: dict[str, Any] | None = None
    images: list[str] = Field(default_factory=list)  # digests of the images this host's pool holds (its beats)
