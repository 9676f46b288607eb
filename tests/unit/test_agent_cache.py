"""The agent's record cache: listings by host come from its (kind, host) index, which follows a record that moves."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cloudlet.agent.cache import RecordCache
from cloudlet.core.records import Resource


def _inst(name: str, host: str | None) -> Resource:
    return Resource(kind="Instance", tenant="t", name=name, spec={}, host=host)


def test_listings_by_host_follow_moves_deletes_and_a_reload(tmp_path: Path) -> None:
    cache = RecordCache(tmp_path / "cache.json")
    a, b, c = _inst("a", "h1"), _inst("b", "h2"), _inst("c", None)
    cache.replace_all([a, b, c], rev=3)
    assert [r.name for r in cache.list("Instance", host="h1")] == ["a"]
    assert [r.name for r in cache.list("Instance", host=None)] == ["c"]
    cache.apply([("upsert", b.id, dataclasses.replace(b, host="h1")), ("delete", a.id, None)], rev=4)
    assert [r.name for r in cache.list("Instance", host="h1")] == ["b"] and cache.list("Instance", host="h2") == []
    assert [r.name for r in cache.list("Instance", host="h1", name="b")] == ["b"]
    assert cache.list("Instance", host="h1", name="a") == [] and cache.list("Network", host="h1") == []
    cache._dirty = True
    cache.save()
    again = RecordCache(tmp_path / "cache.json")
    assert again.load() and [r.name for r in again.list("Instance", host="h1")] == ["b"]
    assert [r.name for r in again.list("Instance")] == ["b", "c"]
