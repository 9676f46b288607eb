"""btrfs pool: a sparse image file under $CLOUDLET_HOME, loop-mounted at $CLOUDLET_HOME/pool. Every volume is a
subvolume; snapshot and clone are subvolume snapshots (O(1)); size limits are qgroup limits on referenced bytes.
Replication is `btrfs send [-p parent]` into `btrfs receive`: the receiver finds the parent by its received uuid, so
a received volume is renamed into place, never snapshotted (a snapshot would have no received uuid)."""

from __future__ import annotations

__all__ = ["BtrfsPool"]

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cloudlet.core.errors import DriverError, translate_errors
from cloudlet.storage.pools.base import PoolCapabilities, SendStream, StoragePool, Usage, mounted, run


class BtrfsPool(StoragePool):
    name = "btrfs"
    capabilities = PoolCapabilities(cow=True, quotas=True, replication=True)

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

    def send(self, name: str, parent: str | None = None) -> SendStream:
        for volume in (name, parent):
            if volume is not None and not self.exists(volume):
                raise DriverError(f"cannot send {name}: {volume} does not exist")
        argv = ["btrfs", "send", "-q", *(["-p", str(self.path(parent))] if parent else []), str(self.path(name))]
        return SendStream(argv, f"sending {name}")

    def receive(self, stream: Iterable[bytes], into_prefix: str) -> str:
        """The stream's volume must be named `<final>.partial`: a received volume cannot move to another
        directory (its '..' is read-only), so it arrives beside its final name and is renamed there."""
        prefix = into_prefix.strip("/")
        where = self.path(prefix)
        where.mkdir(parents=True, exist_ok=True)
        for stale in where.glob("*.partial"):  # a receive killed half way (one receive per prefix at a time)
            self.delete(f"{prefix}/{stale.name}")
        before = {p.name for p in where.iterdir()}
        try:
            self._receive_into(stream, where, f"receiving into {prefix}")
        finally:
            new = sorted(p.name for p in where.iterdir() if p.name not in before)
            if len(new) != 1 or not new[0].endswith(".partial") or not self._readonly(where / new[0]):
                for name in new:
                    self.delete(f"{prefix}/{name}")
        if len(new) != 1 or not new[0].endswith(".partial"):
            raise DriverError(f"receiving into {prefix}: expected one volume named <name>.partial, got {new}")
        final = f"{prefix}/{new[0].removesuffix('.partial')}"
        self.seal(f"{prefix}/{new[0]}", final)
        return final

    def seal(self, partial: str, final: str) -> Path:
        """A read-only partial (a snapshot sent or received) is renamed: it keeps its uuid, which the receiver
        matches an incremental stream's parent against; a writable one is snapshotted read-only."""
        src, dst = self.path(partial), self.path(final)
        if src.parent == dst.parent and self._readonly(src):
            with translate_errors(f"sealing {final}"):
                if dst.exists():
                    self.delete(partial)
                else:
                    os.rename(src, dst)
            return dst
        return super().seal(partial, final)

    def promote(self, replica: str, disk: str) -> Path:
        if not self.exists(replica):
            raise DriverError(f"cannot promote {replica}: no such replica")
        return self.snapshot(replica, disk, readonly=False)

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

    @staticmethod
    def _receive_into(stream: Iterable[bytes], where: Path, what: str) -> None:
        with tempfile.TemporaryFile() as err:
            # -e: stop at the stream's end marker; a stream cut before it is an error, not a short volume
            proc = subprocess.Popen(
                ["btrfs", "receive", "-e", str(where)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err
            )
            assert proc.stdin is not None
            try:
                try:
                    for chunk in stream:
                        proc.stdin.write(chunk)
                finally:
                    proc.stdin.close()
            except BrokenPipeError:
                pass  # receive stopped early; its exit status says why
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if proc.wait() != 0:
                err.seek(0)
                raise DriverError(f"{what}: {err.read().decode(errors='replace').strip()}")

    @staticmethod
    def _readonly(p: Path) -> bool:
        try:
            return run("btrfs", "property", "get", "-ts", str(p), "ro").strip() == "ro=true"
        except subprocess.CalledProcessError:
            return False

    def _qgroup(self, p: Path) -> str | None:
        try:
            out = run("btrfs", "subvolume", "show", str(p))
        except subprocess.CalledProcessError:
            return None
        m = re.search(r"Subvolume ID:\s+(\d+)", out)
        return f"0/{m.group(1)}" if m else None
