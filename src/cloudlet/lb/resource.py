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
    "members_of",
]

from typing import Any, Literal

from pydantic import BaseModel, Field

from cloudlet.compute.resource import INSTANCE
from cloudlet.core.context import Records
from cloudlet.core.kinds import KindInfo, register_kind
from cloudlet.core.models import Spec, Status
from cloudlet.core.records import Resource

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


def members_of(records: Records, lb: Resource) -> list[Resource]:
    """The live instances an LB balances over, by name or by stack layer."""
    spec = LoadBalancerSpec.of(lb)
    live = [i for i in records.list(INSTANCE, tenant=lb.tenant) if not i.deleting]
    if spec.layer:
        stack, layer = spec.layer.split("/", 1)
        return [i for i in live if i.labels.get(STACK_LABEL) == stack and i.labels.get(LAYER_LABEL) == layer]
    wanted = set(spec.members)
    return [i for i in live if i.name in wanted]
