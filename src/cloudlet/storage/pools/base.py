"""The storage pool interface (DESIGN.md section 6): volumes addressed by a relative name such as
`images/<digest>`, `disks/<instance>`, `volumes/<id>`, `snapshots/<id>`; snapshot and clone are O(1) where the
pool can (btrfs), copies where it cannot (dir)."""

from __future__ import annotations

__all__ = ["Usage", "PoolCapabilities", "StoragePool", "mounted", "run"]

import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from cloudlet.core.errors import NotSupported


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Usage:
    logical_bytes: int  # what the volume's files add up to
    exclusive_bytes: int  # what deleting it would free (shared extents not counted)


@dataclass(frozen=True)
class PoolCapabilities:
    cow: bool  # snapshot and clone share blocks and take O(1) time
    quotas: bool  # per-volume size limits are enforced


class StoragePool(ABC):
    name = "base"
    capabilities = PoolCapabilities(cow=False, quotas=False)
    root: Path  # where the pool's volumes are, for the pools that keep them in a directory tree

    @abstractmethod
    def setup(self) -> None:
        """Makes the pool usable (idempotent): mounts it if it lives in an image file."""

    @abstractmethod
    def teardown(self, purge: bool) -> None:
        """Unmounts the pool; with purge, destroys it."""

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return self.path(name).is_dir()

    @abstractmethod
    def create_volume(self, name: str, size_bytes: int | None = None) -> Path:
        """An empty writable volume; an existing one is returned as it is."""

    @abstractmethod
    def snapshot(self, src: str, dst: str, readonly: bool = True) -> Path:
        """A point-in-time copy of src; with readonly False it is a writable clone."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Removes the volume; succeeds if it is already gone."""

    def list(self, prefix: str) -> set[str]:
        """Names of the finished volumes under prefix (e.g. "disks/"); `.partial` ones are work in flight."""
        base = self.path(prefix)
        if not base.is_dir():
            return set()
        return {prefix + p.name for p in base.iterdir() if p.is_dir() and not p.name.endswith(".partial")}

    @abstractmethod
    def usage(self, name: str) -> Usage: ...

    def seal(self, partial: str, final: str) -> Path:
        """Turns a filled-in volume into a read-only one under its final name, atomically."""
        path = self.snapshot(partial, final, readonly=True)
        self.delete(partial)
        return path

    def set_limit(self, name: str, size_bytes: int) -> None:
        raise NotSupported(f"size limits are not implemented for the {self.name} pool")

    def total(self) -> Usage:
        """Logical bytes of all volumes and physical bytes the pool uses."""
        return Usage(0, 0)
