"""dir pool: plain directories under $CLOUDLET_HOME/pool; snapshot and clone are copies (reflinks where the
filesystem has them), sizes are not enforced. The fallback where the kernel has no btrfs."""

from __future__ import annotations

__all__ = ["DirPool"]

import os
import shutil
import subprocess
from pathlib import Path

from cloudlet.core.errors import translate_errors
from cloudlet.storage.pools.base import PoolCapabilities, StoragePool, Usage, mounted, run


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


class DirPool(StoragePool):
    name = "dir"
    capabilities = PoolCapabilities(cow=False, quotas=False)

    def __init__(self, home: Path) -> None:
        self.root = home / "pool"

    def setup(self) -> None:
        """The directory is bound onto itself nosuid,nodev: a set-id file or device node a tenant made in its disk
        means nothing on the host."""
        self.root.mkdir(parents=True, exist_ok=True)
        with translate_errors("setting up the dir pool"):
            if not mounted(self.root):
                run("mount", "--bind", str(self.root), str(self.root))
                run("mount", "-o", "remount,bind,nosuid,nodev", str(self.root))

    def teardown(self, purge: bool) -> None:
        with translate_errors("unmounting the dir pool"):
            if mounted(self.root):
                run("umount", str(self.root))
        if purge:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_volume(self, name: str, size_bytes: int | None = None) -> Path:
        p = self.path(name)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def snapshot(self, src: str, dst: str, readonly: bool = True) -> Path:
        p = self.path(dst)
        if p.exists():
            return p
        tmp = p.with_name(p.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with translate_errors(f"copying {src} to {dst}"):
            subprocess.run(
                ["cp", "-a", "--reflink=auto", str(self.path(src)), str(tmp)], check=True, capture_output=True
            )
        os.replace(tmp, p)
        return p

    def seal(self, partial: str, final: str) -> Path:
        if not self.exists(final):
            os.replace(self.path(partial), self.path(final))
        return self.path(final)

    def delete(self, name: str) -> None:
        shutil.rmtree(self.path(name), ignore_errors=True)

    def usage(self, name: str) -> Usage:
        size = _du(self.path(name))
        return Usage(size, size)

    def total(self) -> Usage:
        size = _du(self.root)
        return Usage(size, size)
