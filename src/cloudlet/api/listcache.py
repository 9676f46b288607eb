"""Rendered JSON of list items, cached per record and reused while the record's updated_at is unchanged.

Every write to a record (spec, status, deletion) moves updated_at, so a list only has to fetch (id, updated_at)
pairs and re-render what changed: listing 10,000 mostly idle instances costs a narrow query and a join.
"""

from __future__ import annotations

__all__ = ["RenderCache"]

import json
import threading
from collections.abc import Callable
from typing import Any

from cloudlet.core.labels import Selector
from cloudlet.core.records import Resource
from cloudlet.core.store import Store


class RenderCache:
    def __init__(self, store: Store, kind: str, view: Callable[[Resource], dict[str, Any]]) -> None:
        self.store = store
        self.kind = kind
        self.view = view
        self._by_tenant: dict[str, dict[str, tuple[float, bytes, dict[str, str]]]] = {}
        self._lock = threading.Lock()

    def page(self, tenant: str, limit: int, after: str | None, selector: Selector | None = None) -> bytes:
        """One page as the API's list JSON: {"items": [...], "count": n, "next": id-or-null}; with a label
        selector, the page's records that match it (`next` still walks every record)."""
        versions = self.store.versions(self.kind, tenant, limit, after)
        with self._lock:
            items = self._by_tenant.setdefault(tenant, {})
            stale = [rid for rid, ver in versions if rid not in items or items[rid][0] != ver]
        fresh = {
            r.id: (r.updated_at, json.dumps(self.view(r), separators=(",", ":")).encode(), r.labels)
            for r in self.store.get_many(stale)
        }
        with self._lock:
            items.update(fresh)
            if after is None and len(versions) < limit:  # a complete listing: forget records that are gone
                live = {rid for rid, _ in versions}
                for rid in [rid for rid in items if rid not in live]:
                    del items[rid]
            parts = [
                items[rid][1]
                for rid, _ in versions
                if rid in items and (not selector or selector.matches(items[rid][2]))
            ]
        nxt = json.dumps(versions[-1][0]) if len(versions) == limit else "null"
        return b'{"items":[' + b",".join(parts) + b'],"count":%d,"next":%s}' % (len(parts), nxt.encode())
