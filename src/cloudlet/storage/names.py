"""Pool volume names, derived from resource ids, so repair and gc can tell what owns each volume."""

from __future__ import annotations

__all__ = ["disk_of", "volume_name", "snapshot_name", "shifted_name", "shifted_parts", "PREFIXES"]

PREFIXES = ("images/", "shifted/", "disks/", "volumes/", "snapshots/")


def disk_of(instance_id: str) -> str:
    """An instance's root disk: a writable clone of its image (or of the snapshot it was launched from)."""
    return f"disks/{instance_id}"


def volume_name(volume_id: str) -> str:
    return f"volumes/{volume_id}"


def snapshot_name(snapshot_id: str) -> str:
    return f"snapshots/{snapshot_id}"


def shifted_name(volume: str, uid_base: int) -> str:
    """A copy of an image's volume owned by one tenant's user-namespace range (storage/shift.py)."""
    return f"shifted/{volume.removeprefix('images/')}@{uid_base}"


def shifted_parts(name: str) -> tuple[str, int]:
    """(image volume, uid base) of a shifted copy's name (a `.partial` suffix is ignored)."""
    volume, _, base = name.removeprefix("shifted/").removesuffix(".partial").partition("@")
    return f"images/{volume}", int(base)
