"""The LoadBalancer kind: its registration and its Spec and Status models.

Members are named, never addressed: either `members` (instance names) or `layer` (`STACK/LAYER`: the live
instances labelled `cloudlet.io/stack=STACK` and `cloudlet.io/layer=LAYER`). The agent resolves them to
addresses each time it renders the config.
"""

from __future__ import annotations

__all__ = [
    "LOADBALANCER",
    "STACK_LABEL",
    "LAYER_LABEL",
    "Balance",
    "LoadBalancerSpec",
    "MemberStatus",
    "LoadBalancerStatus",
]

from typing import Any, Literal

from pydantic import BaseModel, Field

from cloudlet.core.kinds import KindInfo, register_kind
from cloudlet.core.models import Spec, Status

LOADBALANCER = register_kind(KindInfo("LoadBalancer", "loadbalancers", host_bound=True)).name
STACK_LABEL = "cloudlet.io/stack"
LAYER_LABEL = "cloudlet.io/layer"
Balance = Literal["latency", "roundrobin", "leastconn"]


class LoadBalancerSpec(Spec):
    network: str
    network_id: str
    port: int = 80
    target_port: int | None = None  # the members' port; None: the same as `port`
    protocol: Literal["http"] = "http"
    members: list[str] = Field(default_factory=list)
    layer: str | None = None
    health_check: str = "http:/health"  # `http:/PATH` or `tcp`
    balance: Balance = "latency"
    readonly: bool = False
    drained: list[str] = Field(default_factory=list)  # members taken out: no new requests, open ones finish
    server_timeout_ms: int = 5000  # a request not answered by then is retried elsewhere (idempotent ones)
    zone: str | None = None


class MemberStatus(BaseModel):
    name: str
    ip: str | None = None
    state: str = "unknown"  # HAProxy's check state, lower-cased: up, down, drain, maint, no check
    weight: int = 0
    ewma_ms: float | None = None
    error_rate: float = 0.0


class LoadBalancerStatus(Status):
    state: str = "pending"
    ip: str | None = None
    message: str = ""
    members: list[MemberStatus] = Field(default_factory=list)
    placement: dict[str, Any] | None = None
    conditions: list[dict[str, Any]] = Field(default_factory=list)
