"""How an agent talks to the control plane: over HTTP with its host token, or in-process (simulations)."""

from __future__ import annotations

import builtins

__all__ = ["ControlPlane", "HttpControlPlane", "LocalControlPlane", "Scope"]

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from cloudlet.agent.cache import Change
from cloudlet.agent.http import ApiClient
from cloudlet.core.records import Resource, from_wire

if TYPE_CHECKING:
    from cloudlet.compute.hosts import AgentService
    from cloudlet.core.context import Caller


Scope = Collection[str] | None  # the tenants of an agent's scoped view; None: an agent that sees every tenant


def _listed(tenants: Scope) -> builtins.list[str] | None:
    return None if tenants is None else sorted(tenants)


def _scope(tenants: Scope) -> dict[str, str]:
    """The query parameter a scoped view sends."""
    listed = _listed(tenants)
    return {} if listed is None else {"tenants": ",".join(listed)}


def _changes(events: builtins.list[dict[str, Any]]) -> builtins.list[Change]:
    return [(e["type"], e["id"], from_wire(e["object"]) if e["object"] else None) for e in events]


class ControlPlane(ABC):
    @abstractmethod
    def list(self, kinds: builtins.list[str], tenants: Scope = None) -> tuple[builtins.list[Resource], int]:
        """Every record of kinds this host serves (with `tenants`: in its scoped view of them), and the revision
        the listing is current at."""

    @abstractmethod
    def watch(
        self, rev: int, kinds: builtins.list[str], timeout: float, tenants: Scope = None
    ) -> tuple[builtins.list[Change], int]:
        """Changes after rev (waiting up to timeout for one), and the revision to resume from."""

    @abstractmethod
    def push(self, ops: builtins.list[dict[str, Any]]) -> int:
        """Applies outbox ops in order; returns the seq of the last one applied."""

    @abstractmethod
    def heartbeat(self, host: str, beat: dict[str, Any]) -> dict[str, Any]:
        """The host's view and its lease: renewed (for how long, the peers to ask) or revoked."""


class HttpControlPlane(ControlPlane):
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._call = ApiClient(url, token, "control plane").call

    def list(self, kinds: builtins.list[str], tenants: Scope = None) -> tuple[builtins.list[Resource], int]:
        params = {"kinds": ",".join(kinds), **_scope(tenants)}
        data = self._call("GET", "/v1/agent/records", params=params)
        return [from_wire(d) for d in data["items"]], int(data["rev"])

    def watch(
        self, rev: int, kinds: builtins.list[str], timeout: float, tenants: Scope = None
    ) -> tuple[builtins.list[Change], int]:
        data = self._call(
            "GET",
            "/v1/agent/watch",
            timeout=timeout + 15,
            params={"rev": rev, "kinds": ",".join(kinds), "timeout": timeout, **_scope(tenants)},
        )
        return _changes(data["events"]), int(data["rev"])

    def push(self, ops: builtins.list[dict[str, Any]]) -> int:
        return int(self._call("POST", "/v1/agent/ops", json={"ops": ops})["applied"])

    def heartbeat(self, host: str, beat: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = self._call("POST", f"/v1/hosts/{host}/heartbeat", timeout=5, json=beat)
        return reply


class LocalControlPlane(ControlPlane):
    """The same service calls as the HTTP routes make, without sockets: simulated hosts use this."""

    def __init__(self, service: AgentService, caller: Caller) -> None:
        self.service = service
        self.caller = caller

    def list(self, kinds: builtins.list[str], tenants: Scope = None) -> tuple[builtins.list[Resource], int]:
        data = self.service.list(self.caller, kinds, _listed(tenants))
        return [from_wire(d) for d in data["items"]], int(data["rev"])

    def watch(
        self, rev: int, kinds: builtins.list[str], timeout: float, tenants: Scope = None
    ) -> tuple[builtins.list[Change], int]:
        data = self.service.wait(self.caller, rev, kinds, timeout, _listed(tenants))
        return _changes(data["events"]), int(data["rev"])

    def push(self, ops: builtins.list[dict[str, Any]]) -> int:
        from cloudlet.compute.hosts import AgentOps

        return self.service.apply(self.caller, AgentOps.model_validate({"ops": ops}))["applied"]

    def heartbeat(self, host: str, beat: dict[str, Any]) -> dict[str, Any]:
        from cloudlet.compute.hosts import Heartbeat

        return self.service.heartbeat(self.caller, host, Heartbeat.model_validate(beat))
