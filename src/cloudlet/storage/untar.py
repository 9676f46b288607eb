"""Unpacks a tenant's tarball as root without ever following a symlink on the host.

Python's own extraction, even with its "tar" and "data" filters, resolves paths on the host while it writes; on
this Python (3.11.7) long symlink chains defeat the filters (CVE-2025-4517) and hard links reach host files. So
tarfile only parses here: members are read as a stream (`r|*`, nothing seekable needed) and each is written with
`*at()` calls relative to directory fds opened `O_NOFOLLOW | O_DIRECTORY`, one component at a time from the root.
A symlink an earlier member made is an entry like any other: never followed, and a later member that would have
to go through it is refused. Used for image import and backup restore.
"""

from __future__ import annotations

__all__ = ["UnpackLimits", "UnpackStats", "unpack", "lookup"]

import errno
import lzma
import os
import posixpath
import stat
import tarfile
import typing
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from cloudlet.core.beneath import DIR_FLAGS, open_dir
from cloudlet.core.errors import BadRequest

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_MAX_HEADER = 1 << 20  # pax and GNU long-name headers tarfile reads into memory whole
_MAX_LINK = 4095
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown
_META_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
Parts = tuple[str, ...]


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int  # file contents in total, hard-link copies included
    max_files: int  # members of every type


@dataclass(frozen=True)
class UnpackStats:
    files: int
    bytes: int


class _Header(tarfile.TarInfo):
    """Refuses an oversized metadata header before tarfile reads it into memory."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > _MAX_HEADER:
            raise BadRequest(
                f"could not unpack the archive: a {self.size}-byte metadata header (at most {_MAX_HEADER})"
            )
        member: tarfile.TarInfo = super()._proc_member(tf)  # type: ignore[misc]
        return member


def _parts(name: str, what: str) -> Parts:
    """A member's path as components below the root; absolute paths and `..` are refused, not rewritten."""
    if "\0" in name:
        raise BadRequest(f"{what} {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise BadRequest(f"{what} {name!r} is an absolute path; archive members must be relative to the root")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise BadRequest(f"{what} {name!r} has a '..' component")
    return parts


def _check_symlink(parts: Parts, target: str) -> None:
    """Absolute targets are fine (the container resolves them inside its root); relative ones must not climb out."""
    if not target or "\0" in target or len(target) > _MAX_LINK:
        raise BadRequest(f"symlink {'/'.join(parts)!r} has an invalid target")
    if not target.startswith("/"):
        resolved = posixpath.normpath(posixpath.join("/".join(parts[:-1]), target))
        if resolved == ".." or resolved.startswith("../"):
            raise BadRequest(f"symlink {'/'.join(parts)!r} -> {target!r} points outside the root")


def _open_dir(root_fd: int, parts: Parts, create: bool) -> int:
    """open_dir, with a symlink or file on the way said as the archive's fault."""
    try:
        return open_dir(root_fd, parts, create)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise BadRequest(
            f"{'/'.join(parts)!r}: {exc.filename!r} is a symlink or file made earlier in the archive; "
            "nothing is written through it"
        ) from exc


def _clear(parent: int, name: str, keep_dir: bool) -> bool:
    """Removes what an earlier member left at name, never following it (tar's later-member-wins); True if a
    directory is there and stays."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return True
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            raise BadRequest(f"{name!r} would replace a directory that is not empty") from exc
        return False
    os.unlink(name, dir_fd=parent)
    return False


def _owner(member: tarfile.TarInfo) -> tuple[int, int] | None:
    """Numeric ids from the archive (names would be looked up on the host, not in the image); None unless root."""
    if not (0 <= member.uid <= _MAX_ID and 0 <= member.gid <= _MAX_ID):
        raise BadRequest(f"{member.name!r} has an invalid uid/gid {member.uid}/{member.gid}")
    return (member.uid, member.gid) if os.geteuid() == 0 else None


def _finish(fd: int, member: tarfile.TarInfo, mtime: bool = True) -> None:
    """Owner, then mode (chown clears set-id bits), then mtime, all through the fd."""
    owner = _owner(member)
    if owner:
        os.fchown(fd, *owner)
    os.fchmod(fd, member.mode & 0o7777)
    if mtime:
        os.utime(fd, (member.mtime, member.mtime))


class _Unpacker:
    def __init__(self, root_fd: int, limits: UnpackLimits) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self.files = 0
        self.bytes = 0
        self.regular: set[Parts] = set()  # files this archive wrote: the only targets a hard link may name
        self.dir_times: list[tuple[Parts, float]] = []  # set last: writing children would move them

    def add(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise BadRequest(f"the archive has more than {self.limits.max_files} members")
        parts = _parts(member.name, "member")
        if member.isdir():
            self._dir(parts, member)
            return
        if not parts:
            raise BadRequest(f"member {member.name!r} would replace the root")
        if member.issparse():
            raise BadRequest(f"{member.name!r} is a sparse file; archive it without --sparse")
        if member.isreg():
            self._reserve(member.name, member.size)
            source = tf.extractfile(member)
            assert source is not None  # a regular member always has data
            self._file(parts, member, source)
        elif member.islnk():
            self._hardlink(parts, member)
        elif member.issym():
            _check_symlink(parts, member.linkname)
            self._symlink(parts, member)
        elif member.ischr() or member.isblk() or member.isfifo():
            raise BadRequest(
                f"{member.name!r} is a device node or FIFO; leave them out of the archive (e.g. /dev: the runtime "
                "provides it)"
            )
        else:
            raise BadRequest(f"{member.name!r} has an unsupported member type {member.type!r}")

    def _reserve(self, name: str, size: int) -> None:
        self.bytes += size
        if self.bytes > self.limits.max_bytes:
            raise BadRequest(f"the archive unpacks to more than {self.limits.max_bytes} bytes (at {name!r})")

    def _dir(self, parts: Parts, member: tarfile.TarInfo) -> None:
        self.regular.discard(parts)
        if parts:
            parent = _open_dir(self.root_fd, parts[:-1], create=True)
            try:
                if not _clear(parent, parts[-1], keep_dir=True):
                    os.mkdir(parts[-1], 0o700, dir_fd=parent)
                fd = _open_dir(parent, parts[-1:], create=False)
            finally:
                os.close(parent)
        else:
            fd = os.dup(self.root_fd)  # "." itself: the archive says what the root looks like
        try:
            _finish(fd, member, mtime=False)
        finally:
            os.close(fd)
        self.dir_times.append((parts, member.mtime))

    def _create(self, parts: Parts, member: tarfile.TarInfo, source: typing.IO[bytes], limit: int) -> None:
        parent = _open_dir(self.root_fd, parts[:-1], create=True)
        try:
            _clear(parent, parts[-1], keep_dir=False)
            fd = os.open(parts[-1], _NEW_FILE, 0o600, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            written = 0
            while block := source.read(min(_CHUNK, limit - written + 1)):
                written += len(block)
                if written > limit:
                    raise BadRequest(f"{member.name!r} holds more data than its header says")
                os.write(fd, block)
            _finish(fd, member)
        finally:
            os.close(fd)
        self.regular.add(parts)

    def _file(self, parts: Parts, member: tarfile.TarInfo, source: typing.IO[bytes]) -> None:
        self.regular.discard(parts)
        self._create(parts, member, source, member.size)

    def _hardlink(self, parts: Parts, member: tarfile.TarInfo) -> None:
        """Materialised as a copy of the earlier regular file: a real link could join an inode outside the root,
        and a later write through one name would change the other."""
        target = _parts(member.linkname, "hard link target")
        if target not in self.regular:
            raise BadRequest(
                f"hard link {member.name!r} -> {member.linkname!r} names no regular file earlier in the archive"
            )
        parent = _open_dir(self.root_fd, target[:-1], create=False)
        try:
            src_fd = os.open(target[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
        with os.fdopen(src_fd, "rb") as src:
            st = os.fstat(src_fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadRequest(f"hard link {member.name!r}: {member.linkname!r} is not a regular file")
            self._reserve(member.name, st.st_size)
            self.regular.discard(parts)
            self._create(parts, member, src, st.st_size)

    def _symlink(self, parts: Parts, member: tarfile.TarInfo) -> None:
        self.regular.discard(parts)
        parent = _open_dir(self.root_fd, parts[:-1], create=True)
        try:
            _clear(parent, parts[-1], keep_dir=False)
            os.symlink(member.linkname, parts[-1], dir_fd=parent)
            owner = _owner(member)
            if owner:
                os.chown(parts[-1], *owner, dir_fd=parent, follow_symlinks=False)
            os.utime(parts[-1], (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    def set_dir_times(self) -> None:
        for parts, mtime in self.dir_times:
            try:
                fd = _open_dir(self.root_fd, parts, create=False)
            except (OSError, BadRequest):
                continue  # a later member replaced it
            try:
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)


def unpack(stream: typing.IO[bytes], root: Path, limits: UnpackLimits) -> UnpackStats:
    """Unpacks a tar stream (plain, gzip, bzip2 or xz) into the existing directory root, within limits.

    Refused (BadRequest, naming the member): absolute paths, `..`, relative symlinks that climb out of the root,
    anything written through a symlink or file, hard links to anything but a regular file earlier in the archive
    (those are copied), device nodes, FIFOs, sparse files, more than the limits. Ownership is the archive's
    numeric uid/gid when running as root. A refused archive may leave members already written under root: the
    caller discards the directory."""
    root_fd = os.open(root, DIR_FLAGS)
    try:
        job = _Unpacker(root_fd, limits)
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_Header) as tf:
            for member in tf:
                try:
                    job.add(tf, member)
                except OSError as exc:
                    raise BadRequest(f"could not unpack {member.name!r}: {exc.strerror or exc}") from exc
                except (ValueError, OverflowError) as exc:
                    raise BadRequest(f"could not unpack {member.name!r}: {exc}") from exc
        job.set_dir_times()
        return UnpackStats(files=job.files, bytes=job.bytes)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
        raise BadRequest(f"could not unpack the archive: {exc}; give a tar (optionally gzip, bzip2 or xz)") from exc
    finally:
        os.close(root_fd)


def lookup(root: Path, path: str, max_hops: int = 40) -> os.stat_result | None:
    """What path names inside root as the container sees it (RESOLVE_IN_ROOT): symlinks resolved inside root,
    absolute ones from root, `..` stopping at it; nothing on the host is followed. None if missing or looping."""
    fds = [os.open(root, DIR_FLAGS)]
    todo = deque(p for p in path.split("/") if p)
    try:
        while todo:
            name = todo.popleft()
            if name == ".":
                continue
            if name == "..":
                if len(fds) > 1:
                    os.close(fds.pop())
                continue
            try:
                st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if stat.S_ISLNK(st.st_mode):
                max_hops -= 1
                if max_hops < 0:
                    return None
                target = os.readlink(name, dir_fd=fds[-1])
                if target.startswith("/"):
                    while len(fds) > 1:
                        os.close(fds.pop())
                todo.extendleft(reversed([p for p in target.split("/") if p]))
            elif not todo:
                return st
            elif stat.S_ISDIR(st.st_mode):
                fds.append(os.open(name, DIR_FLAGS, dir_fd=fds[-1]))
            else:
                return None
        return os.fstat(fds[-1])
    finally:
        for fd in fds:
            os.close(fd)
