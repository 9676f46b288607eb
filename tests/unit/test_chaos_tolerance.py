"""Tolerances as chaostoolkit reads them: values, statuses, ranges, lists, regex, jsonpath and probe tolerances."""

from __future__ import annotations

from typing import Any

import pytest

from cloudlet.chaos.tolerance import check_tolerance, within_tolerance

HTTP = {"status": 200, "headers": {}, "body": {"items": [{"state": "up"}, {"state": "down"}]}}


@pytest.mark.parametrize(
    ("tol", "value", "ok"),
    [
        (True, True, True),
        (True, 1, True),
        (False, True, False),
        ("running", "running", True),
        ("running", "stopped", False),
        (200, HTTP, True),
        (503, HTTP, False),
        (0, {"status": 0, "stdout": ""}, True),
        (2, 2, True),
        ([1, 3], 2, True),
        ([1, 3], 4, False),
        ([200, 204], HTTP, True),
        (["up", "drain", "maint"], "drain", True),
        (["up", "drain", "maint"], "down", False),
        ({"type": "range", "range": [0.5, 1.5]}, 1, True),
        ({"type": "range", "range": [0.5, 1.5]}, "x", False),
        ({"type": "range", "range": [100, 300], "target": "status"}, HTTP, True),
        ({"type": "regex", "pattern": "^ok"}, "ok\n", True),
        ({"type": "regex", "pattern": "^ok", "target": "stdout"}, {"stdout": "fail"}, False),
        ({"type": "jsonpath", "path": "$.items[*].state", "target": "body"}, HTTP, True),
        ({"type": "jsonpath", "path": "$.items[?state = 'up']", "target": "body", "count": 1}, HTTP, True),
        ({"type": "jsonpath", "path": "$.items[*].state", "target": "body", "expect": ["up", "up"]}, HTTP, False),
        ({"type": "jsonpath", "path": "$.a", "expect": 1}, '{"a": 1}', True),
        ({"type": "jsonpath", "path": "$.a"}, "not json", False),
    ],
)
def test_within_tolerance(tol: Any, value: Any, ok: bool) -> None:
    check_tolerance(tol)
    assert within_tolerance(tol, value) is ok


def test_probe_tolerance_calls_the_runner_and_a_failure_tolerates_nothing() -> None:
    seen: list[Any] = []

    def call(tol: dict[str, Any], value: Any) -> Any:
        seen.append(value)
        if value == "boom":
            raise RuntimeError("probe broke")
        return value > 1

    tol = {"type": "probe", "name": "big", "provider": {"type": "python", "module": "m", "func": "f"}}
    assert within_tolerance(tol, 2, call) and not within_tolerance(tol, 1, call)
    assert not within_tolerance(tol, "boom", call)
    assert seen == [2, 1, "boom"]


@pytest.mark.parametrize(
    ("tol", "message"),
    [
        ([], "empty list"),
        ({"type": "between"}, "use one of range, regex, jsonpath, probe"),
        ({"type": "range", "range": [1]}, "range: [low, high]"),
        ({"type": "regex", "pattern": "("}, "bad pattern"),
        ({"type": "jsonpath", "path": "$[["}, "bad path"),
        ({"type": "probe"}, "needs a provider"),
        (None, "not NoneType"),
    ],
)
def test_bad_tolerances_say_what_to_write(tol: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check_tolerance(tol)
