"""Accounting of the pool: logical vs physical bytes per volume and per tenant, and garbage (pool volumes that
no record owns, and half-made `.partial` ones) for `storage gc`."""

from __future__ import annotations

__all__ = ["usage_report", "garbage", "collect"]

import os
from typing import Any

from cloudlet.compute.images import volume_of
from cloudlet.compute.resource import IMAGE, INSTANCE
from cloudlet.core.context import HostContext
from cloudlet.storage.names import PREFIXES, shifted_name, shifted_parts
from cloudlet.storage.resource import SNAPSHOT, VOLUME, SnapshotStatus


def _owners(cloud: HostContext) -> dict[str, tuple[str, str, str, bool]]:
    """Pool volume name -> (kind, tenant, name, settled) of the record that owns it; not settled means work
    on it may be in flight (a build, a copy), so its `.partial` is not garbage yet."""
    out: dict[str, tuple[str, str, str, bool]] = {}
    images = {volume_of(img): img for img in cloud.store.list(IMAGE)}
    for vol, img in images.items():
        out[vol] = (IMAGE, img.tenant, img.name, img.phase in ("ready", "failed"))
    shifted = cloud.pool.path("shifted/")
    for entry in os.listdir(shifted) if shifted.is_dir() else []:
        volume, base = shifted_parts(entry)
        if (source := images.get(volume)) is not None:  # a launch may be shifting it now: never settled
            out[shifted_name(volume, base)] = (IMAGE, source.tenant, f"{source.name}@{base}", False)
    for kind, prefix in ((INSTANCE, "disks/"), (VOLUME, "volumes/"), (SNAPSHOT, "snapshots/")):
        for res in cloud.store.list(kind, host=cloud.host):  # other hosts' instances are in the cache too
            out[prefix + res.id] = (kind, res.tenant, res.name, res.phase not in ("pending", "scheduled"))
            for part in SnapshotStatus.of(res).volumes if kind == SNAPSHOT else []:
                out[part.pool] = (kind, res.tenant, f"{res.name}:{part.volume}", True)
    return out


def usage_report(cloud: HostContext) -> dict[str, Any]:
    owners = _owners(cloud)
    rows: list[dict[str, Any]] = []
    tenants: dict[str, dict[str, Any]] = {}
    for prefix in PREFIXES:
        for vol in sorted(cloud.pool.list(prefix)):
            kind, tenant, name, _ = owners.get(vol, ("-", "-", "-", True))
            u = cloud.pool.usage(vol)
            rows.append(
                {
                    "volume": vol,
                    "kind": kind,
                    "tenant": tenant,
                    "name": name,
                    "logical_bytes": u.logical_bytes,
                    "exclusive_bytes": u.exclusive_bytes,
                }
            )
            t = tenants.setdefault(tenant, {"tenant": tenant, "logical_bytes": 0, "exclusive_bytes": 0})
            t["logical_bytes"] += u.logical_bytes
            t["exclusive_bytes"] += u.exclusive_bytes
    total = cloud.pool.total()
    return {
        "pool": cloud.pool.name,
        "logical_bytes": total.logical_bytes,
        "physical_bytes": total.exclusive_bytes,
        "volumes": rows,
        "tenants": sorted(tenants.values(), key=lambda t: str(t["tenant"])),
    }


def garbage(cloud: HostContext) -> list[dict[str, Any]]:
    """Pool volumes held by nothing; each with the bytes deleting it would free."""
    owners = _owners(cloud)
    found = []
    for prefix in PREFIXES:
        base = cloud.pool.path(prefix)
        names = set(cloud.pool.list(prefix))
        if base.is_dir():
            names |= {prefix + p.name for p in base.iterdir() if p.name.endswith(".partial")}
        for vol in sorted(names):
            partial = vol.endswith(".partial")
            owner = owners.get(vol.removesuffix(".partial"))
            if owner is None or (partial and owner[3]):
                found.append(
                    {
                        "volume": vol,
                        "bytes": cloud.pool.usage(vol).exclusive_bytes,
                        "reason": "half-made" if partial else "no record owns it",
                    }
                )
    return found


def collect(cloud: HostContext) -> list[dict[str, Any]]:
    found = garbage(cloud)
    for item in found:
        cloud.pool.delete(item["volume"])
    return found
