"""Pool registry: "btrfs" where the kernel has it, else "dir"; "memory" for simulations."""

from __future__ import annotations

__all__ = ["get_pool", "btrfs_available"]

import shutil
from pathlib import Path

from cloudlet.core.errors import InvalidSpec
from cloudlet.storage.pools.base import StoragePool


def btrfs_available() -> bool:
    try:
        has_fs = "btrfs" in Path("/proc/filesystems").read_text()
    except OSError:
        return False
    return has_fs and shutil.which("mkfs.btrfs") is not None


def get_pool(kind: str, home: Path) -> StoragePool:
    if kind == "auto":
        kind = "btrfs" if btrfs_available() else "dir"
    if kind == "btrfs":
        from cloudlet.storage.pools.btrfs import BtrfsPool

        return BtrfsPool(home)
    if kind == "dir":
        from cloudlet.storage.pools.dir import DirPool

        return DirPool(home)
    if kind == "memory":
        from cloudlet.storage.pools.memory import MemoryPool

        return MemoryPool()
    raise InvalidSpec(f"unknown storage pool {kind!r}; choose btrfs, dir or memory")
