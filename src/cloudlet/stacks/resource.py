"""The Stack kind: its registration, Spec and Status models, and the labels a stack puts on what it makes."""

from __future__ import annotations

__all__ = [
    "STACK",
    "StackSpec",
    "StackStatus",
    "Member",
    "STACK_LABEL",
    "LAYER_LABEL",
    "LIFECYCLE_LABEL",
    "IN_SERVICE",
    "DR_ZONE_LABEL",
]

from typing import Any

from pydantic import Field

from cloudlet.core.kinds import KindInfo, register_kind
from cloudlet.core.models import Spec, Status

STACK = register_kind(KindInfo("Stack", "stacks")).name
STACK_LABEL = "cloudlet.io/stack"  # on every instance a stack made: its stack's name
LAYER_LABEL = "cloudlet.io/layer"  # ... and its layer's
# where the instance is in its life (setup, in-service, deploying, leaving, failed): DNS's LAYER.STACK.cloudlet
# answers only with in-service members
LIFECYCLE_LABEL = "cloudlet.io/lifecycle"
IN_SERVICE = "in-service"
# on a stack a DR drill moved: the zone its instances are pinned to (stacks/plan.py `desired`, resilience/drills.py)
DR_ZONE_LABEL = "cloudlet.io/dr-zone"


class StackSpec(Spec):
    document: dict[str, Any]  # the parsed YAML (stacks/spec.py StackDoc), defaults filled in
    source: str = ""  # the YAML as applied, for `stack show`
    flags: dict[str, str] = Field(default_factory=dict)  # the document's flags plus `stack flag`; metadata serves them
    readonly: bool = False
    delete: bool = False  # deletion asked for: the shutdown hooks run, then the record is marked deleted


class Member(Status):
    """One instance's place in its stack's life."""

    layer: str
    id: str
    state: str = "booting"  # booting, setup, in-service, failed, down, leaving
    ip: str | None = None
    started_at: float | None = None  # the boot its setup ran after: a new boot runs setup again
    message: str = ""


class StackStatus(Status):
    members: dict[str, Member] = Field(default_factory=dict)  # by instance name
    # {layer: [{name, ip, dns, state}]}: what hooks get in their environment and metadata serves
    membership: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    configured: str = ""  # the membership the last configure event ran for
    # zone-free names LAYER-N.STACK.cloudlet -> the id of the instance answering for it (failover and DR re-point)
    aliases: dict[str, str] = Field(default_factory=dict)
    progress: list[dict[str, Any]] = Field(default_factory=list)  # [{kind, name, state}] of what it owns
    message: str = ""
