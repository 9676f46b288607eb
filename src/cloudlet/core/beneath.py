"""Walking a directory tree someone else controls (a tenant's root disk, an archive being unpacked) without ever
following a symlink: each component is opened relative to its parent's fd with O_NOFOLLOW | O_DIRECTORY, so a
symlink (ELOOP) or a file (ENOTDIR) on the way is an error, never a way out. `..` is not a component here."""

from __future__ import annotations

__all__ = ["DIR_FLAGS", "open_dir", "parts_of"]

import os
from collections.abc import Sequence

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def parts_of(path: str) -> list[str]:
    """The components of a path inside a root ('/srv//./data' -> ['srv', 'data']); ValueError on '..'."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{path}: '..' is not allowed")
    return parts


def open_dir(root_fd: int, parts: Sequence[str], create: bool = False) -> int:
    """An fd of the directory at parts below root_fd. OSError as the kernel says it: ELOOP for a symlink and
    ENOTDIR for a file on the way, FileNotFoundError for a missing one unless create makes it (mode 0755)."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)  # relative to the parent's fd: nothing on the way is followed
                nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd
