"""Image copies whose file ownership is shifted into one tenant's user-namespace range.

runc 1.1 has no idmapped mounts, so a container whose root maps to host uid B needs a root filesystem owned by
B+uid. Shifting once per (image, uid range) and cloning root disks from the shifted copy keeps each launch O(1):
on btrfs the shift rewrites inodes only, the file data stays shared with the image.
"""

from __future__ import annotations

__all__ = ["shifted", "shift_tree", "drop_shifted"]

import os
import stat
import threading
from pathlib import Path

from cloudlet.compute.drivers.base import USERNS_IDS
from cloudlet.storage.names import shifted_name, shifted_parts
from cloudlet.storage.pools.base import StoragePool

_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def shift_tree(root: Path, base: int) -> None:
    """Adds base to the owner and group of every entry under root, never following a symlink. chown clears
    set-id bits (and file capabilities, which a user namespace could not honour as stored anyway), so the mode
    is put back."""
    _shift(str(root), base)
    for dirpath, dirnames, filenames in os.walk(root):  # symlinks to directories are listed, not entered
        for name in (*dirnames, *filenames):
            _shift(os.path.join(dirpath, name), base)


def _shift(path: str, base: int) -> None:
    st = os.lstat(path)
    os.lchown(path, base + st.st_uid % USERNS_IDS, base + st.st_gid % USERNS_IDS)
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(st.st_mode))


def shifted(pool: StoragePool, volume: str, base: int) -> str:
    """The pool volume of `volume` shifted to base, made on first use (a writable `.partial`, shifted, then
    sealed read-only, so a crash mid-way never leaves something that looks finished)."""
    final = shifted_name(volume, base)
    with _guard:
        lock = _locks.setdefault(final, threading.Lock())
    with lock:
        if pool.exists(final):
            return final
        partial = final + ".partial"
        pool.delete(partial)
        shift_tree(pool.snapshot(volume, partial, readonly=False), base)
        pool.seal(partial, final)
    return final


def drop_shifted(pool: StoragePool, volume: str) -> None:
    """Removes every tenant's shifted copy of an image volume (the image is being deleted)."""
    for name in pool.list("shifted/"):
        if shifted_parts(name)[0] == volume:
            pool.delete(name)
