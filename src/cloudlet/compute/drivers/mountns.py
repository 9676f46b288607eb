"""Mounting into, and out of, a running container's mount namespace (runs as its own short-lived process,
because setns into a mount namespace is refused to multi-threaded processes such as the agent).

    python -m cloudlet.compute.drivers.mountns attach PID SOURCE TARGET
    python -m cloudlet.compute.drivers.mountns detach PID SOURCE

Everything under the container's root is the tenant's to change, symlinks included, and this runs as host root.
So no path inside the container is ever followed: TARGET is resolved one component at a time, each opened
relative to its parent's fd with O_NOFOLLOW | O_DIRECTORY (core/beneath.py, as image unpacking does), missing
directories made the same way, and the clone of SOURCE (open_tree(2)) is moved onto the resolved fd itself
(move_mount(2)).
detach finds the mounts whose root is SOURCE's directory (device and inode), checks the fd it resolved is that
very mount (mount id), and unmounts through the fd: it never unmounts whatever sits at a path now.
"""

from __future__ import annotations

import ctypes
import os
import re
import stat
import sys

from cloudlet.core.beneath import DIR_FLAGS, open_dir, parts_of

SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # x86_64 and aarch64 share these numbers
OPEN_TREE_CLONE, AT_RECURSIVE, AT_FDCWD, AT_SYMLINK_NOFOLLOW = 1, 0x8000, -100, 0x100
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 4, 0x40
CLONE_NEWNS = 0x00020000
MNT_DETACH = 2

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


PROC = -1  # the host's /proc, opened before entering: the container's /proc does not show this process


def _enter(pid: int) -> int:
    """Enters the mount namespace of pid; returns an fd of the container's root."""
    global PROC
    PROC = os.open("/proc", DIR_FLAGS)
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    _check(libc.setns(fd, CLONE_NEWNS), "setns")
    os.close(fd)
    os.chdir("/")
    return os.open("/", DIR_FLAGS)


def _resolve(root: int, target: str, create: bool) -> int:
    """An fd of the directory target inside root (core/beneath.py), made where missing when create is set."""
    try:
        parts = parts_of(target)
    except ValueError as exc:
        raise OSError(22, str(exc)) from None
    return open_dir(root, parts, create)


def _mnt_id(fd: int) -> int:
    with open(os.open(f"self/fdinfo/{fd}", os.O_RDONLY, dir_fd=PROC)) as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(2, "no mount id")


def _mounts() -> list[tuple[int, str]]:
    """(mount id, mount point) of every mount in this namespace, innermost last."""
    out = []
    with open(os.open("self/mountinfo", os.O_RDONLY, dir_fd=PROC)) as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((int(fields[0]), point))
    return out


def _ours(root: int, ident: tuple[int, int]) -> list[tuple[int, int]]:
    """(fd, mount id) of each mount whose root is the volume's directory, each fd checked to be that mount."""
    found = []
    for mid, point in reversed(_mounts()):
        try:
            fd = _resolve(root, point, create=False)
        except OSError:
            continue  # a path the tenant has bent: not how we reach our mount
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == ident and _mnt_id(fd) == mid:
            found.append((fd, mid))
        else:
            os.close(fd)
    return found


def _ident(source: str) -> tuple[int, int]:
    st = os.stat(source)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(20, f"{source} is not a directory")
    return st.st_dev, st.st_ino


def attach(pid: int, source: str, target: str) -> None:
    ident = _ident(source)
    tree = _check(
        libc.syscall(
            SYS_OPEN_TREE,
            AT_FDCWD,
            source.encode(),
            OPEN_TREE_CLONE | AT_RECURSIVE | AT_SYMLINK_NOFOLLOW | os.O_CLOEXEC,
        ),
        "open_tree",
    )
    root = _enter(pid)
    if _ours(root, ident):
        return  # attached already (a retry after a crash)
    fd = _resolve(root, target, create=True)
    flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
    _check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", fd, b"", flags), "move_mount")


def detach(pid: int, source: str) -> None:
    ident = _ident(source)
    root = _enter(pid)
    os.fchdir(PROC)
    for fd, mid in _ours(root, ident):
        # the magic link names exactly the mount the fd is on, whatever the path now leads to
        if libc.umount2(f"self/fd/{fd}".encode(), MNT_DETACH) != 0:
            _check(-1, f"unmounting mount {mid}")
    left = _ours(root, ident)
    if left:
        raise OSError(16, f"the volume is still mounted ({len(left)} mounts)")


def main() -> None:
    verb, pid, *paths = sys.argv[1:]
    try:
        attach(int(pid), *paths) if verb == "attach" else detach(int(pid), *paths)
    except OSError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
