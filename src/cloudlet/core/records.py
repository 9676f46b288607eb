"""The uniform resource record every kind shares (DESIGN.md section 2), and name rules."""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ulid import ULID

from cloudlet.core.errors import BadRequest

__all__ = ["Resource", "Event", "new_id", "check_name", "FINALIZER", "to_wire", "from_wire"]

FINALIZER = "cloudlet.io/artefacts"
NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def new_id() -> str:
    return str(ULID()).lower()


def check_name(kind: str, name: str) -> str:
    """Names become DNS labels, so they follow RFC 1123 label rules."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequest(
            f"invalid {kind} name {name!r}: use 1-63 lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'"
        )
    return name


@dataclass
class Resource:
    kind: str
    tenant: str
    name: str
    spec: dict[str, Any]
    id: str = field(default_factory=new_id)
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    phase: str = "pending"
    generation: int = 1
    observed_generation: int = 0
    owner: str | None = None
    host: str | None = None
    zone: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    deleted_at: float | None = None
    finalizers: list[str] = field(default_factory=list)

    @property
    def deleting(self) -> bool:
        return self.deleted_at is not None


@dataclass
class Event:
    resource_id: str
    kind: str
    tenant: str
    name: str
    time: float
    type: str
    reason: str
    message: str


def to_wire(res: Resource) -> dict[str, Any]:
    """The record as JSON-ready data: how the watch API and an agent's disk cache carry it."""
    return dataclasses.asdict(res)


def from_wire(data: dict[str, Any]) -> Resource:
    return Resource(**{f.name: data[f.name] for f in dataclasses.fields(Resource) if f.name in data})
