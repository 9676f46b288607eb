"""Tolerances of the Chaos Toolkit format: is a probe's output what the steady state expects?

- `true`/`false`, a string: equal to the output;
- a number: equal to it, or to the output's `status` when the output is a mapping (http and process providers);
- a list of two numbers: a range, inclusive; any other list: one of its members (or the output's `status` in it);
- `{type: range, range: [lo, hi], target?}`, `{type: regex, pattern, target?}`,
  `{type: jsonpath, path, expect?, count?, target?}` (`target` picks a key of the output first, e.g. `body`);
- `{type: probe, name, provider}`: another probe, given the output as its `value` argument, must answer truthy.
"""

from __future__ import annotations

__all__ = ["check_tolerance", "within_tolerance"]

import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from jsonpath_ng.exceptions import JsonPathParserError
from jsonpath_ng.ext.parser import parse as jsonpath

KINDS = ("range", "regex", "jsonpath", "probe")


def check_tolerance(tol: Any) -> None:
    """Raises ValueError, saying what to write instead, for a tolerance that can never be checked."""
    if isinstance(tol, bool | int | float | str):
        return
    if isinstance(tol, list):
        if not tol:
            raise ValueError("an empty list tolerates nothing; give the accepted values or a [low, high] range")
        return
    if not isinstance(tol, dict):
        # ValueError, not TypeError: pydantic reports only ValueErrors as the field's error
        raise ValueError(f"a tolerance is a value, a list or a mapping with a type, not {type(tol).__name__}")  # noqa: TRY004
    kind = tol.get("type")
    if kind not in KINDS:
        raise ValueError(f"tolerance type {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "range":
        rng = tol.get("range")
        if not (isinstance(rng, list) and len(rng) == 2 and all(_number(v) is not None for v in rng)):
            raise ValueError("a range tolerance needs range: [low, high] (numbers)")
    elif kind == "regex":
        try:
            re.compile(str(tol["pattern"]))
        except KeyError:
            raise ValueError("a regex tolerance needs a pattern") from None
        except re.error as exc:
            raise ValueError(f"regex tolerance: bad pattern: {exc}") from None
    elif kind == "jsonpath":
        try:
            jsonpath(str(tol["path"]))
        except KeyError:
            raise ValueError("a jsonpath tolerance needs a path, e.g. $.status") from None
        except (JsonPathParserError, Exception) as exc:
            raise ValueError(f"jsonpath tolerance: bad path: {exc}") from None
    elif not isinstance(tol.get("provider"), dict):
        raise ValueError("a probe tolerance needs a provider (it is called with the output as `value`)")


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _between(rng: list[Any], value: Any) -> bool | None:
    """Whether value is in [low, high]; None unless rng is two numbers and value a number."""
    if len(rng) != 2:
        return None
    lo, hi, n = _number(rng[0]), _number(rng[1]), _number(value)
    if lo is None or hi is None or n is None:
        return None
    return lo <= n <= hi


def _status(value: Any) -> Any:
    return value["status"] if isinstance(value, dict) and "status" in value else value


def within_tolerance(tol: Any, value: Any, call_probe: Callable[[dict[str, Any], Any], Any] | None = None) -> bool:
    """call_probe(tolerance, value) runs a probe tolerance (the runner's providers)."""
    if isinstance(tol, bool):
        return value is tol or value == tol
    if isinstance(tol, int | float):
        return bool(_status(value) == tol)
    if isinstance(tol, str):
        return bool(value == tol)
    if isinstance(tol, list):
        v = _status(value)
        inside = _between(tol, v)
        return inside if inside is not None else v in tol
    target = tol.get("target")
    if target and isinstance(value, dict):
        value = value.get(target, value)
    kind = tol["type"]
    if kind == "range":
        return bool(_between(tol["range"], value))
    if kind == "regex":
        return re.search(str(tol["pattern"]), value if isinstance(value, str) else json.dumps(value)) is not None
    if kind == "jsonpath":
        if isinstance(value, bytes | str):
            try:
                value = json.loads(value)
            except ValueError:
                return False
        found = [m.value for m in jsonpath(str(tol["path"])).find(value)]
        if "count" in tol:
            return bool(len(found) == tol["count"])
        if "expect" in tol:
            expect = tol["expect"]
            return bool(found == (expect if isinstance(expect, list) else [expect]))
        return bool(found)
    if call_probe is None:
        raise ValueError("a probe tolerance needs a runner to call it")
    try:
        return bool(call_probe(tol, value))
    except Exception:
        return False  # a probe tolerance that fails tolerates nothing
