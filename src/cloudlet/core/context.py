"""The running cloud as one object handed to services and reconcilers: config, store, drivers, clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cloudlet.core.clock import Clock
from cloudlet.core.config import Config
from cloudlet.core.errors import Forbidden
from cloudlet.core.store import Store

if TYPE_CHECKING:
    from cloudlet.compute.drivers.base import ComputeDriver
    from cloudlet.core.reconcile import Manager
    from cloudlet.network.plumbing import NetworkDriver
    from cloudlet.storage.pools.base import StoragePool

__all__ = ["Cloud", "Caller", "ADMIN_TENANT", "PUBLIC_TENANT", "SYSTEM_TENANT"]

ADMIN_TENANT = "admin"
PUBLIC_TENANT = "public"  # images: readable by every tenant
SYSTEM_TENANT = "system"  # hosts and zones


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: str = "member"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_admin(self, what: str) -> None:
        if not self.is_admin:
            raise Forbidden(f"{what} needs the admin token")


@dataclass
class Cloud:
    config: Config
    store: Store
    compute: ComputeDriver
    net: NetworkDriver
    pool: StoragePool
    clock: Clock
    manager: Manager
    extras: dict[str, object] = field(default_factory=dict)
