"""Where cloudlet keeps its state and how it is reached; everything comes from the environment."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Config", "load_config", "MACHINE_NETNS_FD", "SCOPED_VIEW"]

TENANT_SPACE = "10.240.0.0/12"
# the environment variable naming the fd an added host's agent holds on the machine's own network namespace
MACHINE_NETNS_FD = "CLOUDLET_MACHINE_NETNS_FD"
SCOPED_VIEW = "tenants"
VIEWS = ("all", SCOPED_VIEW)


def _default_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/cloudlet")
    return Path.home() / ".local/share/cloudlet"


@dataclass(frozen=True)
class Config:
    home: Path
    db_url: str
    compute_driver: str
    storage_pool: str
    api_host: str
    api_port: int
    dns_port: int
    explicit_ports: frozenset[str]  # CLOUDLET_API_PORT / CLOUDLET_DNS_PORT set by the user: never replaced
    host: str
    zone: str
    debian_mirror: str
    # bounds on what one request may cost (issue 8): the API's threads and memory, the agent's too
    exec_output_bytes: int = 1 << 20  # kept of each of an exec's stdout and stderr; the rest is read and dropped
    exec_max_timeout: float = 600.0  # the longest timeout an exec may ask for (at its timeout it is killed)
    exec_per_tenant: int = 4  # execs of one tenant at a time
    exec_total: int = 32  # execs of all tenants at a time: the threads cloudletd and each agent give them
    max_body_bytes: int = 1 << 20  # of a request body (image uploads, exempt, have their own cap)
    # image imports: the uploaded tarball, counted while it streams, and what it may unpack to on each host
    max_upload_bytes: int = 4 << 30
    max_image_bytes: int = 16 << 30
    max_image_files: int = 1_000_000
    # failure detection (resilience/): a host's lease lasts lease_s from its agent's heartbeat; silent for
    # suspect_s it is suspected; the control plane treats it as self-fenced only lease_s + lease_margin_s after
    # the last renewal it saw. fence: how a suspected host is fenced (netns, fake or none; empty: netns for runc
    # clouds, fake for fake ones)
    lease_s: float = 10.0
    suspect_s: float = 3.0
    lease_margin_s: float = 2.0
    fence: str = ""
    # what each agent holds of other hosts' shared records (compute/hosts.py SCOPED_KINDS): "all" of every tenant (its
    # loopback DNS answers every name), or SCOPED_VIEW: only of the tenants it runs something for (large clouds)
    agent_view: str = "all"
    # backup policies with verify: a Warning when the last verified restore is older than this (storage/verify.py)
    verify_overdue_s: float = 7 * 86400.0

    @property
    def pid_file(self) -> Path:
        return self.home / "cloudletd.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "cloudletd.log"

    @property
    def endpoint_file(self) -> Path:
        return self.home / "endpoint.json"

    @property
    def token_file(self) -> Path:
        return self.home / "admin.token"

    def host_token_file(self, host: str) -> Path:
        """The agent's credential for `host`, written by the control plane at its first start."""
        return self.home / "hosts" / f"{host}.token"

    def agent_dir(self, host: str) -> Path:
        """The agent's own state: disk cache, pid, log and endpoint (URL, key, DNS port)."""
        return self.home / "agents" / host

    def cloud_id(self) -> str:
        """Short random id of this cloud, part of every host-wide artefact name so two clouds never collide."""
        path = self.home / "cloud.id"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(2))
            os.replace(tmp, path)
        return path.read_text().strip()

    def endpoint(self, path: Path | None = None) -> dict[str, object]:
        """What a running process recorded about where it listens (cloudletd's, or an agent's with path)."""
        try:
            data: dict[str, object] = json.loads((path or self.endpoint_file).read_text())
            return data
        except (OSError, ValueError):
            return {}


def _apt_mirror() -> str:
    for src in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        try:
            text = src.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.lstrip().startswith("#"):
                continue
            for word in line.split():
                if word.startswith("http") and "security" not in word:
                    return word
    return "http://deb.debian.org/debian"


def load_config() -> Config:
    home = Path(os.environ.get("CLOUDLET_HOME") or _default_home())
    view = os.environ.get("CLOUDLET_AGENT_VIEW") or "all"
    if view not in VIEWS:
        raise SystemExit(f"CLOUDLET_AGENT_VIEW is {view!r}; set it to one of {', '.join(VIEWS)}")
    return Config(
        home=home,
        db_url=os.environ.get("CLOUDLET_DB_URL") or f"sqlite:///{home / 'state.db'}",
        compute_driver=os.environ.get("CLOUDLET_COMPUTE_DRIVER", "runc"),
        storage_pool=os.environ.get("CLOUDLET_STORAGE_POOL", "auto"),
        api_host="127.0.0.1",
        api_port=int(os.environ.get("CLOUDLET_API_PORT") or "8470"),
        dns_port=int(os.environ.get("CLOUDLET_DNS_PORT") or "8053"),
        explicit_ports=frozenset(k for k in ("CLOUDLET_API_PORT", "CLOUDLET_DNS_PORT") if os.environ.get(k)),
        host=os.environ.get("CLOUDLET_HOST", "local"),
        zone=os.environ.get("CLOUDLET_ZONE", "zone-a"),
        debian_mirror=os.environ.get("CLOUDLET_DEBIAN_MIRROR") or _apt_mirror(),
        exec_output_bytes=int(os.environ.get("CLOUDLET_EXEC_OUTPUT_BYTES") or 1 << 20),
        exec_max_timeout=float(os.environ.get("CLOUDLET_EXEC_MAX_TIMEOUT") or 600),
        exec_per_tenant=int(os.environ.get("CLOUDLET_EXEC_PER_TENANT") or 4),
        exec_total=int(os.environ.get("CLOUDLET_EXEC_TOTAL") or 32),
        max_body_bytes=int(os.environ.get("CLOUDLET_MAX_BODY_BYTES") or 1 << 20),
        max_upload_bytes=int(os.environ.get("CLOUDLET_MAX_UPLOAD_BYTES") or 4 << 30),
        max_image_bytes=int(os.environ.get("CLOUDLET_MAX_IMAGE_BYTES") or 16 << 30),
        max_image_files=int(os.environ.get("CLOUDLET_MAX_IMAGE_FILES") or 1_000_000),
        lease_s=float(os.environ.get("CLOUDLET_LEASE_S") or 10),
        suspect_s=float(os.environ.get("CLOUDLET_SUSPECT_S") or 3),
        lease_margin_s=float(os.environ.get("CLOUDLET_LEASE_MARGIN_S") or 2),
        fence=os.environ.get("CLOUDLET_FENCE", ""),
        verify_overdue_s=float(os.environ.get("CLOUDLET_VERIFY_OVERDUE_S") or 7 * 86400),
        agent_view=view,
    )
