"""What services and reconcilers are handed: the control plane's `Cloud`, or a host agent's `HostContext`.

Both carry a `Records` view: the control plane reads and writes the store itself; an agent reads its cache of
the control plane's records and sends its writes back through the watch API's transport.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cloudlet.core.clock import Clock
from cloudlet.core.config import Config
from cloudlet.core.errors import Forbidden
from cloudlet.core.records import Resource
from cloudlet.core.store import Store

if TYPE_CHECKING:
    from cloudlet.compute.drivers.base import ComputeDriver
    from cloudlet.compute.hosts import AgentService
    from cloudlet.compute.placement import Placement
    from cloudlet.core.reconcile import Manager
    from cloudlet.network.drivers.base import NetworkDriver
    from cloudlet.storage.pools.base import StoragePool

__all__ = [
    "Cloud",
    "HostContext",
    "Records",
    "Caller",
    "HostDirectory",
    "ADMIN_TENANT",
    "PUBLIC_TENANT",
    "SYSTEM_TENANT",
    "HOST_ROLE",
]

ADMIN_TENANT = "admin"
PUBLIC_TENANT = "public"  # images: readable by every tenant
SYSTEM_TENANT = "system"  # hosts and zones
HOST_ROLE = "host"  # a host agent's token: role "host:<name>" in the store, Caller(role="host", host=name)


class Records(Protocol):
    """The record operations reconcilers use; `Store` and an agent's `RecordCache` both provide them."""

    listeners: list[Callable[[Resource, bool], None]]  # (record, spec side changed) on every write

    def get_by_id(self, rid: str) -> Resource | None: ...

    def get(self, kind: str, tenant: str | None, name: str, parent: str = "") -> Resource: ...

    def list(self, kind: str | None = None, tenant: str | None = None, **filters: Any) -> list[Resource]: ...

    def update_status(self, rid: str, **values: Any) -> Resource: ...

    def add_event(self, res: Resource, reason: str, message: str, type_: str = "Normal") -> None: ...

    def finalize(self, rid: str) -> bool: ...


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: str = "member"
    host: str | None = None  # set for a host agent's token: it may touch only that host's records

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_admin(self, what: str) -> None:
        if not self.is_admin:
            raise Forbidden(f"{what} needs the admin token")


class HostDirectory(Protocol):
    """How the control plane reaches a host's agent (exec, console, pool reports): HTTP, or in-process."""

    def agent(self, host: str) -> Any: ...


@dataclass
class Cloud:
    """The control plane: API services and cluster-wide controllers. It never touches runc, netns or a pool."""

    config: Config
    store: Store
    clock: Clock
    manager: Manager
    placement: Placement
    hosts: HostDirectory
    agent_api: AgentService = field(init=False)  # the agents' end of the watch API, set once wired


@dataclass
class HostContext:
    """One host's data plane, inside its agent: drivers plus the agent's view of the records."""

    config: Config
    store: Records
    compute: ComputeDriver
    net: NetworkDriver
    pool: StoragePool
    clock: Clock
    manager: Manager
    host: str
    zone: str
