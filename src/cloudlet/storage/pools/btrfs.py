"""btrfs pool: a sparse image file under $CLOUDLET_HOME, loop-mounted at $CLOUDLET_HOME/pool. Every volume is a
subvolume; snapshot and clone are subvolume snapshots (O(1)); size limits are qgroup limits on referenced bytes."""

from __future__ import annotations

__all__ = ["BtrfsPool"]

import os
import re
import shutil
import subprocess
from pathlib import Path

from cloudlet.core.errors import DriverError, translate_errors
from cloudlet.storage.pools.base import PoolCapabilities, StoragePool, Usage, mounted, run


class BtrfsPool(StoragePool):
    name = "btrfs"
    capabilities = PoolCapabilities(cow=True, quotas=True)

    def __init__(self, home: Path, size_bytes: int = 20 << 30) -> None:
        self.image = home / "pool.img"
        self.root = home / "pool"
        self.size_bytes = size_bytes

    def setup(self) -> None:
        with translate_errors("setting up the btrfs pool"):
            if mounted(self.root):
                return
            self.root.mkdir(parents=True, exist_ok=True)
            if not self.image.exists():
                tmp = self.image.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    f.truncate(self.size_bytes)
                run("mkfs.btrfs", "-q", str(tmp))
                os.replace(tmp, self.image)
            run("mount", "-o", "loop,nosuid,nodev", str(self.image), str(self.root))  # tenants write here
            run("btrfs", "quota", "enable", str(self.root))

    def teardown(self, purge: bool) -> None:
        with translate_errors("unmounting the btrfs pool"):
            if mounted(self.root):
                run("umount", str(self.root))  # the loop device goes with it (autoclear)
        if purge:
            self.image.unlink(missing_ok=True)
            shutil.rmtree(self.root, ignore_errors=True)

    def create_volume(self, name: str, size_bytes: int | None = None) -> Path:
        p = self.path(name)
        with translate_errors(f"creating volume {name}"):
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                run("btrfs", "subvolume", "create", str(p))
            if size_bytes:
                self.set_limit(name, size_bytes)
        return p

    def snapshot(self, src: str, dst: str, readonly: bool = True) -> Path:
        p = self.path(dst)
        with translate_errors(f"snapshotting {src} to {dst}"):
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                run("btrfs", "subvolume", "snapshot", *(["-r"] if readonly else []), str(self.path(src)), str(p))
        return p

    def delete(self, name: str) -> None:
        p = self.path(name)
        if not p.exists():
            return
        with translate_errors(f"deleting volume {name}"):
            qgroup = self._qgroup(p)
            run("btrfs", "subvolume", "delete", str(p))
            if qgroup:
                subprocess.run(["btrfs", "qgroup", "destroy", qgroup, str(self.root)], capture_output=True)

    def usage(self, name: str) -> Usage:
        qgroup = self._qgroup(self.path(name))
        for line in run("btrfs", "qgroup", "show", "--raw", "--sync", str(self.root)).splitlines():
            parts = line.split()
            if parts and parts[0] == qgroup:
                return Usage(int(parts[1]), int(parts[2]))
        raise DriverError(f"no qgroup for volume {name}")

    def set_limit(self, name: str, size_bytes: int) -> None:
        with translate_errors(f"limiting volume {name}"):
            run("btrfs", "qgroup", "limit", str(size_bytes), str(self.path(name)))

    def total(self) -> Usage:
        out = run("btrfs", "filesystem", "usage", "-b", str(self.root))
        used = int(re.search(r"Used:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
        logical = 0
        for line in run("btrfs", "qgroup", "show", "--raw", str(self.root)).splitlines()[2:]:
            parts = line.split()
            if parts and parts[0].startswith("0/") and parts[0] != "0/5":
                logical += int(parts[1])
        return Usage(logical, used)

    def _qgroup(self, p: Path) -> str | None:
        try:
            out = run("btrfs", "subvolume", "show", str(p))
        except subprocess.CalledProcessError:
            return None
        m = re.search(r"Subvolume ID:\s+(\d+)", out)
        return f"0/{m.group(1)}" if m else None
