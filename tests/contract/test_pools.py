"""StoragePool contract (storage/pools/base.py): one set of assertions, run against the memory, dir and btrfs pools.

The memory pool keeps names only (its paths are never opened), so the shared tests check what the interface promises
every pool; what a pool's files hold is checked in the real-pools-only test at the bottom.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.storage.pools import btrfs_available
from cloudlet.storage.pools.base import StoragePool, Usage
from cloudlet.storage.pools.btrfs import BtrfsPool
from cloudlet.storage.pools.dir import DirPool
from cloudlet.storage.pools.memory import MemoryPool

REAL = ["dir", pytest.param("btrfs", marks=pytest.mark.root)]


def _leftovers(home: Path) -> list[str]:
    """Mounts and loop devices of a pool under home; what teardown(purge=True) must not leave."""
    with open("/proc/mounts") as f:
        left = [f"mount {line.split()[1]}" for line in f if str(home) in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
    return left + [f"loop device {line.split(':')[0]}" for line in loops if str(home) in line]


@pytest.fixture(params=["memory", *REAL])
def pool(request: pytest.FixtureRequest) -> Iterator[StoragePool]:
    if request.param == "btrfs" and not (os.geteuid() == 0 and btrfs_available() and shutil.which("losetup")):
        pytest.skip("the btrfs pool needs root, the btrfs module and mkfs.btrfs")
    home = Path(tempfile.mkdtemp(prefix="cloudlet-contract-"))
    kinds = {"memory": MemoryPool, "dir": lambda: DirPool(home), "btrfs": lambda: BtrfsPool(home, 256 << 20)}
    p: StoragePool = kinds[request.param]()
    try:
        p.setup()
        p.setup()  # idempotent
        yield p
    finally:
        try:
            p.teardown(purge=True)
        finally:  # look for leftovers, then remove them whatever the pool did
            left = _leftovers(home)
            for line in left:
                if line.startswith("mount "):
                    subprocess.run(["umount", "-l", line.split()[1]], capture_output=True)
            if request.param != "memory" and p.root.exists():
                left.append(f"pool directory {p.root}")
            shutil.rmtree(home, ignore_errors=True)
        assert not left, f"teardown(purge=True) of the {request.param} pool left {left}"


def test_create_volume(pool: StoragePool) -> None:
    path = pool.create_volume("volumes/a")
    assert isinstance(path, Path) and path == pool.path("volumes/a")
    assert pool.exists("volumes/a") and not pool.exists("volumes/b")
    assert pool.create_volume("volumes/a") == path  # an existing one is returned as it is


def test_snapshot_and_clone(pool: StoragePool) -> None:
    pool.create_volume("volumes/a")
    snap = pool.snapshot("volumes/a", "snapshots/s", readonly=True)
    clone = pool.snapshot("volumes/a", "disks/c", readonly=False)
    assert (snap, clone) == (pool.path("snapshots/s"), pool.path("disks/c"))
    assert pool.exists("snapshots/s") and pool.exists("disks/c") and pool.exists("volumes/a")
    assert pool.snapshot("volumes/a", "snapshots/s") == snap  # an existing one is returned as it is


def test_delete_is_idempotent(pool: StoragePool) -> None:
    pool.create_volume("volumes/a")
    pool.delete("volumes/a")
    pool.delete("volumes/a")
    pool.delete("volumes/never-made")
    assert not pool.exists("volumes/a")
    assert pool.list("volumes/") == set()


def test_list_shows_finished_volumes_only(pool: StoragePool) -> None:
    pool.create_volume("volumes/a")
    pool.create_volume("volumes/b.partial")  # work in flight
    pool.snapshot("volumes/a", "snapshots/s")
    assert pool.list("volumes/") == {"volumes/a"}
    assert pool.list("snapshots/") == {"snapshots/s"}
    assert pool.list("disks/") == set()
    pool.seal("volumes/b.partial", "volumes/b")
    assert pool.list("volumes/") == {"volumes/a", "volumes/b"}
    assert not pool.exists("volumes/b.partial")


def test_usage(pool: StoragePool) -> None:
    pool.create_volume("volumes/a")
    usage = pool.usage("volumes/a")
    assert isinstance(usage, Usage)
    assert usage.logical_bytes >= 0 and usage.exclusive_bytes >= 0


@pytest.mark.parametrize("pool", REAL, indirect=True)
def test_real_pools_hold_files(pool: StoragePool) -> None:
    data = secrets.token_bytes(4096)
    src = pool.create_volume("volumes/a")
    assert src.is_dir()
    (src / "file").write_bytes(data)
    snap = pool.snapshot("volumes/a", "snapshots/s", readonly=True)
    (src / "file").write_bytes(b"later")
    (src / "new").write_bytes(b"later")
    assert (snap / "file").read_bytes() == data, "a snapshot is a point-in-time copy"
    assert not (snap / "new").exists()
    clone = pool.snapshot("snapshots/s", "disks/c", readonly=False)
    assert (clone / "file").read_bytes() == data
    (clone / "file").write_bytes(b"clone")
    assert (snap / "file").read_bytes() == data and (src / "file").read_bytes() == b"later"
    assert pool.usage("volumes/a").logical_bytes > 0
