"""Labels on every record and the selectors that choose records by them (Kubernetes' equality-based syntax).

env=prod          the label env has the value prod
env!=prod         env is missing or has another value
tier              the label tier is present (any value)
!tier             the label tier is absent
env=prod,tier     all of them (comma = and)
"""

from __future__ import annotations

__all__ = ["Labels", "Selector", "parse_selector", "edit_labels", "SELECTOR_PATTERN", "KEY_PATTERN"]

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

from cloudlet.core.errors import BadRequest

KEY_PATTERN = r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$"
VALUE_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$"
_KEY, _VALUE = re.compile(KEY_PATTERN), re.compile(VALUE_PATTERN)
_TERM = r"!?[a-z0-9][a-z0-9._/-]*((!=|=)[A-Za-z0-9._-]*)?"
SELECTOR_PATTERN = rf"^({_TERM})(,{_TERM})*$"
MAX_LABELS = 64


def _check(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _KEY.fullmatch(key):
            raise ValueError(
                f"label key {key!r}: use 1-63 lowercase letters, digits and '.', '_', '/', '-', "
                "starting and ending with a letter or digit"
            )
        if not _VALUE.fullmatch(value):
            raise ValueError(f"label value {value!r} of {key}: use up to 63 letters, digits and '.', '_', '-'")
    return labels


Labels = Annotated[
    dict[str, str],
    Field(
        max_length=MAX_LABELS,
        description="labels: key=value pairs",
        json_schema_extra={
            "propertyNames": {"pattern": KEY_PATTERN, "maxLength": 63},
            "additionalProperties": {"type": "string", "pattern": VALUE_PATTERN, "maxLength": 63},
        },
    ),
    AfterValidator(_check),
]


@dataclass(frozen=True)
class Selector:
    terms: tuple[tuple[str, str, str], ...] = ()  # (key, op, value): op is =, !=, exists, absent

    def matches(self, labels: dict[str, str]) -> bool:
        for key, op, value in self.terms:
            have = labels.get(key)
            if (
                (op == "=" and have != value)
                or (op == "!=" and have == value)
                or (op == "exists" and have is None)
                or (op == "absent" and have is not None)
            ):
                return False
        return True

    def __bool__(self) -> bool:
        return bool(self.terms)


def parse_selector(text: str | None) -> Selector:
    if not text:
        return Selector()
    if not re.match(SELECTOR_PATTERN, text):
        raise BadRequest(f"invalid label selector {text!r}: use key=value, key!=value, key or !key, joined by ','")
    terms = []
    for term in text.split(","):
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key, "!=", value))
        elif "=" in term:
            key, value = term.split("=", 1)
            terms.append((key, "=", value))
        elif term.startswith("!"):
            terms.append((term[1:], "absent", ""))
        else:
            terms.append((term, "exists", ""))
    return Selector(tuple(terms))


def edit_labels(labels: dict[str, str], set_: dict[str, str], remove: list[str]) -> dict[str, str]:
    out = {k: v for k, v in labels.items() if k not in remove}
    out.update(_check(set_))
    if len(out) > MAX_LABELS:
        raise BadRequest(f"at most {MAX_LABELS} labels per resource")
    return out
