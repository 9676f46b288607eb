"""Mounting into, and out of, a running container's mount namespace (runs as its own short-lived process,
because setns into a mount namespace is refused to multi-threaded processes such as cloudletd).

    python -m cloudlet.compute.drivers.mountns attach PID SOURCE TARGET
    python -m cloudlet.compute.drivers.mountns detach PID TARGET

attach clones the host mount at SOURCE with open_tree(2), enters the namespace of PID and puts the clone at
TARGET with move_mount(2): nothing is mounted on the host, and the container sees it at once.
"""

from __future__ import annotations

import ctypes
import os
import sys

SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # x86_64 and aarch64 share these numbers
OPEN_TREE_CLONE, AT_RECURSIVE, AT_FDCWD = 1, 0x8000, -100
MOVE_MOUNT_F_EMPTY_PATH = 4
CLONE_NEWNS = 0x00020000
MNT_DETACH = 2

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _enter(pid: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    _check(libc.setns(fd, CLONE_NEWNS), "setns")
    os.chdir("/")


def attach(pid: int, source: str, target: str) -> None:
    tree = _check(
        libc.syscall(SYS_OPEN_TREE, AT_FDCWD, source.encode(), OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC),
        "open_tree",
    )
    _enter(pid)
    os.makedirs(target, exist_ok=True)
    _check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH), "move_mount")


def detach(pid: int, target: str) -> None:
    _enter(pid)
    ret = libc.umount2(target.encode(), MNT_DETACH)
    if ret != 0 and ctypes.get_errno() != 22:  # EINVAL: not mounted there, already detached
        _check(ret, "umount")


def main() -> None:
    verb, pid, *paths = sys.argv[1:]
    try:
        attach(int(pid), *paths) if verb == "attach" else detach(int(pid), *paths)
    except OSError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
