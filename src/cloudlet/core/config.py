"""Where cloudlet keeps its state and how it is reached; everything comes from the environment."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Config", "load_config"]

TENANT_SPACE = "10.240.0.0/12"


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
    # image imports: the uploaded tarball, counted while it streams, and what it may unpack to on each host
    max_upload_bytes: int = 4 << 30
    max_image_bytes: int = 16 << 30
    max_image_files: int = 1_000_000

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
        max_upload_bytes=int(os.environ.get("CLOUDLET_MAX_UPLOAD_BYTES") or 4 << 30),
        max_image_bytes=int(os.environ.get("CLOUDLET_MAX_IMAGE_BYTES") or 16 << 30),
        max_image_files=int(os.environ.get("CLOUDLET_MAX_IMAGE_FILES") or 1_000_000),
    )
