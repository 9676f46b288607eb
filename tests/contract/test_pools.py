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

from cloudlet.core.errors import DriverError, NotSupported
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


@pytest.fixture
def pool_pair() -> Iterator[tuple[BtrfsPool, BtrfsPool]]:
    """Two separate btrfs pools (two loop files), as on two hosts: a sender and a receiver."""
    if not (os.geteuid() == 0 and btrfs_available() and shutil.which("losetup")):
        pytest.skip("replication needs root, the btrfs module and mkfs.btrfs")
    home = Path(tempfile.mkdtemp(prefix="cloudlet-contract-"))
    pools = (BtrfsPool(home / "a", 256 << 20), BtrfsPool(home / "b", 256 << 20))
    try:
        for p in pools:
            p.setup()
        yield pools
    finally:
        for p in pools:
            p.teardown(purge=True)
        left = _leftovers(home) + [f"pool directory {p.root}" for p in pools if p.root.exists()]
        for line in left:
            if line.startswith("mount "):
                subprocess.run(["umount", "-l", line.split()[1]], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
        assert not left, f"teardown(purge=True) of the btrfs pools left {left}"


def _take(pool: BtrfsPool, seq: int) -> str:
    """The sender's side of one cycle: a read-only snapshot named `.partial` until it has been shipped."""
    return str(pool.snapshot("disks/a", f"replicas/a/{seq}.partial").relative_to(pool.root))


@pytest.mark.root
def test_replication_full_then_incremental(pool_pair: tuple[BtrfsPool, BtrfsPool]) -> None:
    src, dst = pool_pair
    disk = src.create_volume("disks/a")
    (disk / "kept").write_bytes(b"one")
    (disk / "doomed").write_bytes(b"two")
    (disk / "unchanged").write_bytes(secrets.token_bytes(2 << 20))
    stream = src.send(_take(src, 1))
    assert dst.receive(stream, "replicas/a/") == "replicas/a/1"
    assert stream.sent > 0
    src.seal("replicas/a/1.partial", "replicas/a/1")
    got = dst.path("replicas/a/1")
    assert (got / "kept").read_bytes() == b"one" and (got / "doomed").read_bytes() == b"two"
    with pytest.raises(OSError):  # a received replica is read-only
        (got / "kept").write_bytes(b"changed")

    big = secrets.token_bytes(1 << 20)
    (disk / "new").write_bytes(big)
    (disk / "doomed").unlink()
    (disk / "kept").write_bytes(b"one, changed")
    full = sum(len(c) for c in src.send(_take(src, 2)))
    delta = src.send("replicas/a/2.partial", parent="replicas/a/1")
    assert dst.receive(delta, "replicas/a/") == "replicas/a/2"
    src.seal("replicas/a/2.partial", "replicas/a/2")
    assert delta.sent < full / 2, "an incremental stream holds only what changed"
    got = dst.path("replicas/a/2")
    assert (got / "new").read_bytes() == big and (got / "kept").read_bytes() == b"one, changed"
    assert not (got / "doomed").exists(), "a file deleted between the snapshots is gone from the replica"
    assert (dst.path("replicas/a/1") / "doomed").exists(), "the older replica is untouched"
    assert dst.list("replicas/a/") == {"replicas/a/1", "replicas/a/2"}
    assert src.list("replicas/a/") == {"replicas/a/1", "replicas/a/2"}

    # the parent may go once the next one is in: the next send is incremental against 2
    src.delete("replicas/a/1")
    dst.delete("replicas/a/1")
    (disk / "third").write_bytes(b"3")
    assert dst.receive(src.send(_take(src, 3), parent="replicas/a/2"), "replicas/a/") == "replicas/a/3"

    booted = dst.promote("replicas/a/3", "disks/b")
    assert booted == dst.path("disks/b")
    (booted / "written-after-recovery").write_bytes(b"ok")  # a writable clone, to boot from
    assert (booted / "third").read_bytes() == b"3" and (booted / "new").read_bytes() == big
    assert not (dst.path("replicas/a/3") / "written-after-recovery").exists()


@pytest.mark.root
def test_replication_cut_stream_leaves_nothing(pool_pair: tuple[BtrfsPool, BtrfsPool]) -> None:
    src, dst = pool_pair
    disk = src.create_volume("disks/a")
    (disk / "data").write_bytes(secrets.token_bytes(2 << 20))
    whole = b"".join(src.send(_take(src, 1)))

    for cut in (len(whole) // 2, len(whole) - 10):
        with pytest.raises(DriverError):
            dst.receive([whole[:cut]], "replicas/a/")
        assert dst.list("replicas/a/") == set() and list(dst.path("replicas/a").iterdir()) == []

    def broken() -> Iterator[bytes]:  # the sender's connection drops mid-stream
        yield whole[: len(whole) // 3]
        raise ConnectionError("peer went away")

    with pytest.raises(ConnectionError):
        dst.receive(broken(), "replicas/a/")
    assert list(dst.path("replicas/a").iterdir()) == []

    assert dst.receive([whole], "replicas/a/") == "replicas/a/1"  # a whole one then lands
    src.seal("replicas/a/1.partial", "replicas/a/1")
    (disk / "more").write_bytes(b"x")
    _take(src, 2)
    with pytest.raises(DriverError):  # a parent the receiver lacks is refused, not half applied
        dst.receive(src.send(_take(src, 3), parent="replicas/a/2.partial"), "replicas/a/")
    assert [p.name for p in dst.path("replicas/a").iterdir()] == ["1"]


@pytest.mark.parametrize("pool", ["memory", "dir"], indirect=True)
def test_replication_needs_btrfs(pool: StoragePool) -> None:
    assert not pool.capabilities.replication
    pool.create_volume("disks/a")
    for call in (
        lambda: pool.send("disks/a"),
        lambda: pool.receive([b""], "replicas/a/"),
        lambda: pool.promote("x", "y"),
    ):
        with pytest.raises(NotSupported, match="needs the btrfs pool"):
            call()
