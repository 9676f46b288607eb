"""The safe unpacker (storage/untar.py) against crafted archives, with no cloud: each attack must be refused and
leave nothing outside the root."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudlet.core.errors import BadRequest
from cloudlet.storage.untar import UnpackLimits, UnpackStats, lookup, unpack
from tests.security.tarballs import Member, archive, entry, symlink_chain_escape

LIMITS = UnpackLimits(max_bytes=1 << 20, max_files=100)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(root to unpack into, a directory outside it that attacks aim at)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def run(data: bytes, root: Path, limits: UnpackLimits = LIMITS) -> UnpackStats:
    return unpack(io.BytesIO(data), root, limits)


def refused(data: bytes, root: Path, match: str, limits: UnpackLimits = LIMITS) -> None:
    with pytest.raises(BadRequest, match=match):
        run(data, root, limits)


def test_a_root_filesystem_unpacks_with_modes_owners_times_and_links(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    owned, _ = entry("etc/shadow", data=b"root:*:1::::::\n", mode=0o640)
    owned.uid, owned.gid = 0, 42
    setuid, data = entry("usr/bin/su", data=b"\x7fELF", mode=0o4755)
    setuid.uid = 0
    stats = run(
        archive(
            entry("./", tarfile.DIRTYPE, mode=0o755),
            entry("usr/bin", tarfile.DIRTYPE, mode=0o755),
            entry("usr/bin/busybox", data=b"#!binary", mode=0o755),
            entry("bin", tarfile.SYMTYPE, link="usr/bin"),
            entry("usr/bin/sh", tarfile.SYMTYPE, link="/usr/bin/busybox"),
            entry("usr/bin/ash", tarfile.LNKTYPE, link="./usr/bin/busybox", mode=0o755),
            (owned, b"root:*:1::::::\n"),
            (setuid, data),
            entry("tmp", tarfile.DIRTYPE, mode=0o1777),
        ),
        root,
    )
    assert stats == UnpackStats(files=9, bytes=8 + 8 + 15 + 4)
    assert (root / "usr/bin/busybox").read_bytes() == b"#!binary"
    # a hard link becomes a copy: same bytes, its own inode
    assert (root / "usr/bin/ash").read_bytes() == b"#!binary"
    assert os.stat(root / "usr/bin/ash").st_ino != os.stat(root / "usr/bin/busybox").st_ino
    assert os.readlink(root / "bin") == "usr/bin" and os.readlink(root / "usr/bin/sh") == "/usr/bin/busybox"
    st = os.stat(root / "etc/shadow")
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (0, 42)
    assert stat.S_IMODE(os.stat(root / "usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    assert os.stat(root / "usr/bin").st_mtime == 1_600_000_000  # directory times are set after their children
    # the container's view: bin -> usr/bin, sh -> /usr/bin/busybox, resolved inside the root
    found = lookup(root, "/bin/sh")
    assert found is not None and stat.S_ISREG(found.st_mode)


def test_gzip_archives_unpack(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    run(gzip.compress(archive(entry("a/b", data=b"x"))), root)
    assert (root / "a/b").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("members", "match"),
    [
        (lambda out: [entry(f"{out}/pwned", data=b"x")], "absolute path"),
        (lambda out: [entry("../outside/pwned", data=b"x")], r"'\.\.' component"),
        (lambda out: [entry("a/../../outside/pwned", data=b"x")], r"'\.\.' component"),
        (lambda out: [entry("esc", tarfile.SYMTYPE, link="../outside")], "points outside the root"),
        (lambda out: [entry("a/b/esc", tarfile.SYMTYPE, link="../../../outside")], "points outside the root"),
        # a symlink to a directory outside, then a file through it
        (
            lambda out: [entry("esc", tarfile.SYMTYPE, link=str(out)), entry("esc/pwned", data=b"x")],
            "symlink or file made earlier",
        ),
        (lambda out: [entry("dev/sda", tarfile.BLKTYPE)], "device node"),
        (lambda out: [entry("dev/mem", tarfile.CHRTYPE)], "device node"),
        (lambda out: [entry("fifo", tarfile.FIFOTYPE)], "FIFO"),
    ],
)
def test_escapes_and_special_files_are_refused(
    dirs: tuple[Path, Path], members: Callable[[Path], list[Member]], match: str
) -> None:
    root, outside = dirs
    refused(archive(*members(outside)), root, match)
    assert list(outside.iterdir()) == []


def test_long_symlink_chains_cannot_escape(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    victim = outside / "shadow"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    with pytest.raises(BadRequest, match="nothing is written through it"):
        run(archive(*symlink_chain_escape(root, outside, "shadow")), root)
    assert [p.name for p in outside.iterdir()] == ["shadow"]
    assert victim.read_text() == "secret\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_hard_links_never_reach_host_files(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    shadow = outside / "shadow"
    shadow.write_text("secret\n")
    os.chmod(shadow, 0o600)
    for members, match in (
        ([entry("etc/shadow", tarfile.LNKTYPE, link=str(shadow), mode=0o644)], "absolute path"),
        ([entry("x", tarfile.LNKTYPE, link="../outside/shadow", mode=0o644)], r"'\.\.' component"),
        # through a symlink the archive made: names no regular file of the archive
        (
            [
                entry("etc", tarfile.SYMTYPE, link=str(outside)),
                entry("copy", tarfile.LNKTYPE, link="etc/shadow", mode=0o644),
            ],
            "no regular file earlier",
        ),
        # a regular file, replaced by a symlink to the host file, then linked to
        (
            [
                entry("f", data=b"mine"),
                entry("f", tarfile.SYMTYPE, link=str(shadow)),
                entry("g", tarfile.LNKTYPE, link="f", mode=0o644),
            ],
            "no regular file earlier",
        ),
    ):
        refused(archive(*members), root, match)
        assert stat.S_IMODE(shadow.stat().st_mode) == 0o600 and shadow.stat().st_nlink == 1
        for path in root.rglob("*"):
            assert path.is_symlink() or path.read_bytes() != b"secret\n"


def test_later_members_replace_without_following(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    target = outside / "target"
    target.write_text("host\n")
    run(
        archive(
            entry("a", data=b"first"),
            entry("a", tarfile.SYMTYPE, link=str(target)),
            entry("a", data=b"second"),  # replaces the symlink; must not write through it
            entry("d", tarfile.DIRTYPE),
            entry("d", tarfile.SYMTYPE, link=str(outside)),  # an empty directory may be replaced
        ),
        root,
    )
    assert target.read_text() == "host\n" and (root / "a").read_bytes() == b"second"
    assert not (root / "a").is_symlink() and os.readlink(root / "d") == str(outside)
    refused(archive(entry("d", tarfile.SYMTYPE, link=str(outside)), entry("d/x", data=b"x")), root, "symlink or file")
    refused(archive(entry("d", tarfile.SYMTYPE, link=str(outside)), entry("d/x", tarfile.DIRTYPE)), root, "symlink")
    refused(archive(entry("f", data=b"x"), entry("f/x", data=b"x")), root, "symlink or file")
    assert sorted(p.name for p in outside.iterdir()) == ["target"]


def test_limits(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    small = UnpackLimits(max_bytes=1000, max_files=5)
    refused(archive(entry("big", data=b"x" * 1001)), root, "more than 1000 bytes", small)
    refused(archive(*(entry(f"f{i}") for i in range(6))), root, "more than 5 members", small)
    # copies made for hard links count too
    refused(archive(entry("a", data=b"x" * 600), entry("b", tarfile.LNKTYPE, link="a")), root, "more than", small)
    # a huge file compressed to almost nothing is refused from its header, before its data is read
    bomb = tarfile.TarInfo("zeros")
    bomb.size = 1 << 40
    header = gzip.compress(bomb.tobuf(format=tarfile.GNU_FORMAT) + bytes(1 << 16))
    refused(header, root, "more than 1000 bytes", small)


def test_oversized_metadata_headers_are_refused(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    info, data = entry("x", data=b"")
    info.pax_headers = {"comment": "c" * (2 << 20)}
    refused(archive((info, data)), root, "metadata header")


def test_garbage_is_refused(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    refused(b"not a tarball", root, "could not unpack")
    refused(b"", root, "could not unpack")
    refused(archive(entry("a", data=b"x" * 5000))[:2048], root, "could not unpack")


def test_lookup_stays_inside_the_root(dirs: tuple[Path, Path]) -> None:
    root, outside = dirs
    (outside / "sh").write_text("host")
    run(
        archive(
            entry("bin", tarfile.SYMTYPE, link=str(outside)),
            entry("loop", tarfile.SYMTYPE, link="loop"),
            entry("up", tarfile.SYMTYPE, link="/../../bin"),
        ),
        root,
    )
    # the host path exists, but inside the root /bin points at a directory the image does not have
    assert lookup(root, "bin/sh") is None and lookup(root, "loop") is None and lookup(root, "up/sh") is None
