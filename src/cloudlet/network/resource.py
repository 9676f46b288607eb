"""The network kinds: their registration and their Spec and Status models."""

from __future__ import annotations

__all__ = [
    "SECGROUP",
    "SecurityGroupRule",
    "SecurityGroupSpec",
    "NETWORK",
    "ELASTIC_IP",
    "NetworkSpec",
    "NetworkStatus",
    "EipTarget",
    "ElasticIPSpec",
    "ElasticIPStatus",
]

from typing import Any, Literal

from pydantic import Field

from cloudlet.core.kinds import KindInfo, register_kind
from cloudlet.core.models import Spec, Status

NETWORK = register_kind(KindInfo("Network", "networks")).name
ELASTIC_IP = register_kind(KindInfo("ElasticIP", "eips")).name
SECGROUP = register_kind(KindInfo("SecurityGroup", "secgroups")).name


class NetworkSpec(Spec):
    subnet: str
    gateway: str
    egress: bool = False  # NAT to the outside namespace's range (198.18.0.0/15 only), opt-in


class NetworkStatus(Status):
    bridge: str | None = None
    conditions: list[dict[str, Any]] = Field(default_factory=list)


class EipTarget(Spec):
    """What an elastic IP points at: an Instance or a LoadBalancer, reached at its record's `status.ip`."""

    kind: str
    name: str
    id: str


class ElasticIPSpec(Spec):
    address: str  # from this cloud's public pool (network/outside.py), held until release
    target: EipTarget | None = None  # one holder at most, by construction


class ElasticIPStatus(Status):
    private_ip: str | None = None  # the holder's address the control plane last saw
    message: str = ""


class SecurityGroupRule(Spec):
    """One ingress rule: traffic of `protocol` (to `ports`, for tcp and udp) from `cidr` or from the members of
    `source_group` (a group's id) is let in. `id` is derived from the rest (network/secgroups.py rule_id)."""

    id: str
    protocol: Literal["tcp", "udp", "icmp", "all"]
    ports: str | None = None  # "80" or "8000-8100"
    cidr: str | None = None
    source_group: str | None = None


class SecurityGroupSpec(Spec):
    description: str = ""
    rules: list[SecurityGroupRule] = Field(default_factory=list)
