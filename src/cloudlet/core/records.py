"""The uniform resource record every kind shares (DESIGN.md section 2), name rules, and the field types
request models share (names, JSON numbers)."""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from ulid import ULID

from cloudlet.core.errors import BadRequest

__all__ = [
    "Resource",
    "Event",
    "new_id",
    "check_name",
    "Name",
    "NameRef",
    "NAME_RULES",
    "Int",
    "Number",
    "JsonNumber",
    "Text",
    "NO_NUL",
    "FINALIZER",
    "to_wire",
    "from_wire",
    "record_view",
]

FINALIZER = "cloudlet.io/artefacts"
NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
NAME_RULES = "1-63 lowercase letters, digits and '-', starting with a letter and not ending with '-'"
# The name of the record a request makes. The schema states the rules and check_name() enforces them, so a bad
# name gets a 400 that says which name is wrong ("invalid volume name ...").
Name = Annotated[
    str,
    Field(
        description=f"a DNS label (RFC 1123): {NAME_RULES}",
        json_schema_extra={"minLength": 1, "maxLength": 63, "pattern": NAME_RE.pattern},
    ),
]
# The name of a record a request refers to; checked as the request is parsed (422).
NameRef = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=NAME_RE.pattern, description=f"a name (RFC 1123 label): {NAME_RULES}"),
]
# Free text the kernel (argv, paths) or Postgres will be handed: anything but NUL.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(pattern=NO_NUL)]


def _json_number(value: Any) -> Any:
    """The schema says integer or number: pydantic's lax mode would also take true, false and "5"."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number")  # noqa: TRY004 (pydantic reports ValueError, not TypeError)
    return value


# Numbers in request bodies. (2.0 stays a valid integer, as JSON Schema says; strict mode would refuse it.) An
# optional one puts its bounds first, or the schema gets them as "ge"/"le": Annotated[int, Field(ge=0), JsonNumber]
JsonNumber = BeforeValidator(_json_number)
Int = Annotated[int, JsonNumber]
Number = Annotated[float, JsonNumber]


def new_id() -> str:
    return str(ULID()).lower()


def derived_name(base: str, suffix: str) -> str:
    """A name made from another and a suffix (a timestamp), shortened to stay a valid name."""
    return base[: 62 - len(suffix)].rstrip("-") + "-" + suffix


def check_name(kind: str, name: str) -> str:
    """Names become DNS labels, so they follow RFC 1123 label rules."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):  # match() would let "web\n" through ($)
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


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars): what asdict does, several times faster."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


_FIELDS = tuple(f.name for f in dataclasses.fields(Resource))


def to_wire(res: Resource, owned: bool = False) -> dict[str, Any]:
    """The record as JSON-ready data: how the watch API and an agent's disk cache carry it. Every agent gets
    every instance, so this runs for each record change times each agent: it must be cheap. `owned`: the caller
    read the record for this alone (nothing else holds its dicts), so they go as they are, not copied."""
    return {name: getattr(res, name) if owned else _copy(getattr(res, name)) for name in _FIELDS}


def from_wire(data: dict[str, Any]) -> Resource:
    return Resource(**{f.name: data[f.name] for f in dataclasses.fields(Resource) if f.name in data})


def record_view(res: Resource, **fields: Any) -> dict[str, Any]:
    """A record as the API and CLI show it: its identity, the kind's own fields, then when it was made and its
    labels."""
    return {
        "id": res.id,
        "name": res.name,
        "tenant": res.tenant,
        **fields,
        "created_at": res.created_at,
        "labels": res.labels,
    }
