"""Spec and Status models of the network kinds."""

from __future__ import annotations

__all__ = ["NetworkSpec", "NetworkStatus"]

from typing import Any

from pydantic import Field

from cloudlet.core.models import Spec, Status


class NetworkSpec(Spec):
    subnet: str
    gateway: str


class NetworkStatus(Status):
    bridge: str | None = None
    conditions: list[dict[str, Any]] = Field(default_factory=list)
