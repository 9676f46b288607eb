"""The network kinds: their registration and their Spec and Status models."""

from __future__ import annotations

__all__ = ["NETWORK", "NetworkSpec", "NetworkStatus"]

from typing import Any

from pydantic import Field

from cloudlet.core.kinds import KindInfo, register_kind
from cloudlet.core.models import Spec, Status

NETWORK = register_kind(KindInfo("Network", "networks")).name


class NetworkSpec(Spec):
    subnet: str
    gateway: str


class NetworkStatus(Status):
    bridge: str | None = None
    conditions: list[dict[str, Any]] = Field(default_factory=list)
