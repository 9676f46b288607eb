"""openapi.json is the API's contract: the app must serve exactly what is committed, and answer in its terms."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloudlet.api.app import create_app
from tests.helpers import fake_cloud

ROOT = Path(__file__).resolve().parents[2]
HOW_TO_FIX = "run `.venv/bin/python scripts/openapi.py`, check the diff of openapi.json, and commit it"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("openapi_script", ROOT / "scripts" / "openapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _operations(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{method.upper()} {path}": op for path, item in schema.get("paths", {}).items() for method, op in item.items()
    }


def _differences(old: Any, new: Any, where: str = "") -> Iterator[str]:
    """JSON pointers where two documents differ, deepest first found; a whole subtree added or removed is one."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            at = f"{where}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key not in new:
                yield f"- {at}"
            elif key not in old:
                yield f"+ {at}"
            else:
                yield from _differences(old[key], new[key], at)
    elif old != new:
        yield f"~ {where or '/'}: {json.dumps(old)[:80]} -> {json.dumps(new)[:80]}"


def summary(committed: dict[str, Any], live: dict[str, Any], limit: int = 40) -> str:
    """What changed, operations first (added, removed, changed), then every other difference."""
    old_ops, new_ops = _operations(committed), _operations(live)
    lines = [f"+ {op} (new)" for op in sorted(new_ops.keys() - old_ops.keys())]
    lines += [f"- {op} (gone)" for op in sorted(old_ops.keys() - new_ops.keys())]
    lines += [f"~ {op} (changed)" for op in sorted(old_ops.keys() & new_ops.keys()) if old_ops[op] != new_ops[op]]
    details = list(_differences(committed, live))
    shown = (lines + details)[:limit]
    more = len(lines) + len(details) - len(shown)
    return "\n".join(shown + ([f"... and {more} more"] if more else []))


def test_the_committed_schema_is_what_the_app_serves() -> None:
    script = _script()
    live = script.live_schema()
    assert script.SNAPSHOT.exists(), f"no openapi.json: {HOW_TO_FIX}"
    committed = json.loads(script.SNAPSHOT.read_text())
    if committed != live:
        pytest.fail(
            f"the API's schema drifted from openapi.json; {HOW_TO_FIX}.\n{summary(committed, live)}", pytrace=False
        )
    assert script.SNAPSHOT.read_text() == script.render(live), f"openapi.json is not in canonical form: {HOW_TO_FIX}"


def test_the_agent_protocol_is_in_the_contract() -> None:
    ops = _operations(json.loads((ROOT / "openapi.json").read_text()))
    for op in ("GET /v1/agent/records", "GET /v1/agent/watch", "POST /v1/agent/ops", "POST /v1/hosts/{name}/heartbeat"):
        assert op in ops, op


def test_a_405_names_the_methods_the_path_takes(tmp_path: Path) -> None:
    client = TestClient(create_app(fake_cloud(tmp_path).cloud))
    for method, path, allowed in (
        ("TRACE", "/v1/instances", "GET, POST"),
        ("PUT", "/v1/volumes/v1", "DELETE, GET"),
        ("OPTIONS", "/v1/instances/web-1", "DELETE, GET"),
        ("OPTIONS", "/v1/volumes/clone", "POST"),  # the literal path item, not /v1/volumes/{name}, as OpenAPI reads
    ):
        r = client.request(method, path)
        assert r.status_code == 405, (method, path, r.text)
        assert r.headers["allow"] == allowed, (method, path)
        assert r.json() == {"error": {"code": "method_not_allowed", "message": "Method Not Allowed"}}


def test_the_summary_names_what_changed() -> None:
    old = {"paths": {"/v1/a": {"get": {"x": 1}}, "/v1/b": {"get": {}}}, "info": {"version": "1"}}
    new = {"paths": {"/v1/a": {"get": {"x": 2}}, "/v1/c": {"post": {}}}, "info": {"version": "1"}}
    text = summary(old, new)
    assert "+ POST /v1/c (new)" in text and "- GET /v1/b (gone)" in text and "~ GET /v1/a (changed)" in text
    assert "~ /paths/~1v1~1a/get/x: 1 -> 2" in text
