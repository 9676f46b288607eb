"""Pool registry: "btrfs" where the kernel has it, else "dir"; "memory" for simulations."""

from __future__ import annotations

__all__ = ["get_pool", "btrfs_available"]

import shutil
from pathlib import Path

from cloudlet.core.drivers import load_driver
from cloudlet.storage.pools.base import StoragePool


def btrfs_available() -> bool:
    try:
        has_fs = "btrfs" in Path("/proc/filesystems").read_text()
    except OSError:
        return False
    return has_fs and shutil.which("mkfs.btrfs") is not None


POOLS = {
    "btrfs": "cloudlet.storage.pools.btrfs:BtrfsPool",
    "dir": "cloudlet.storage.pools.dir:DirPool",
    "memory": "cloudlet.storage.pools.memory:MemoryPool",
}


def get_pool(kind: str, home: Path) -> StoragePool:
    if kind == "auto":
        kind = "btrfs" if btrfs_available() else "dir"
    pool: StoragePool = load_driver(POOLS, kind, "storage pool", **({} if kind == "memory" else {"home": home}))
    return pool
