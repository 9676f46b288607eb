"""The registry of kinds: one entry per kind, declared by the domain module that owns it.

Code that works on any kind (labels, the API's generic routes, the agent's watch list, garbage collection of
owned records) asks the registry instead of spelling kind names out.
"""

from __future__ import annotations

__all__ = ["KindInfo", "register_kind", "kinds", "by_plural", "TENANT"]

from dataclasses import dataclass


@dataclass(frozen=True)
class KindInfo:
    name: str  # "Instance"
    plural: str  # the API path segment: "instances"
    tenant_scoped: bool = True  # False: shared records (images, hosts) only the admin may label
    host_bound: bool = False  # placed on one host, whose agent realises it
    labelled: bool = True


_KINDS: dict[str, KindInfo] = {}


def register_kind(info: KindInfo) -> KindInfo:
    _KINDS[info.name] = info
    return info


def kinds() -> list[KindInfo]:
    return list(_KINDS.values())


def by_plural(plural: str) -> KindInfo | None:
    return next((k for k in _KINDS.values() if k.plural == plural), None)


TENANT = register_kind(KindInfo("Tenant", "tenants", tenant_scoped=False, labelled=False)).name
