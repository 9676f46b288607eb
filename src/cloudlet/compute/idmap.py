"""Each tenant's user-namespace id range: container root of every instance of a tenant is one unprivileged host
uid, the same for all its instances and different from every other tenant's (and from any host account).

Slot 0 is the admin's; a tenant gets the next free slot when it is created, kept in its tenant record so the
range never changes under a disk that was shifted into it.
"""

from __future__ import annotations

__all__ = ["UID_START", "lock", "next_slot", "uid_base"]

import threading

from cloudlet.compute.drivers.base import USERNS_IDS
from cloudlet.core.context import ADMIN_TENANT, Cloud
from cloudlet.core.errors import Conflict, NotFound
from cloudlet.core.kinds import TENANT
from cloudlet.storage.resource import TenantSpec

UID_START = 1 << 20  # above the ranges Debian hands to users in /etc/subuid (100000 + 65536 per user)
MAX_SLOT = ((1 << 32) - 1 - UID_START) // USERNS_IDS - 1  # uid_t is 32 bits; (uid_t)-1 is "no uid"
lock = threading.Lock()  # slots are handed out one at a time (one control plane allocates)


def next_slot(cloud: Cloud) -> int:
    """The slot for a tenant being created; the caller holds `lock` until its record is stored."""
    taken = [TenantSpec.of(r).uid_slot or 0 for r in cloud.store.list(TENANT)]
    slot = max(taken, default=0) + 1
    if slot > MAX_SLOT:
        raise Conflict("every user-namespace id range is in use; no more tenants can be created")
    return slot


def uid_base(cloud: Cloud, tenant: str) -> int:
    if tenant == ADMIN_TENANT:
        return UID_START
    with lock:
        for res in cloud.store.list(TENANT, tenant=tenant):
            spec = TenantSpec.of(res)
            if spec.uid_slot is None:  # a tenant made before slots existed
                spec.uid_slot = next_slot(cloud)
                cloud.store.update_spec(res.id, spec.dump())
            return UID_START + spec.uid_slot * USERNS_IDS
    raise NotFound(f"tenant {tenant!r} does not exist")
