"""Owner references: a record whose `owner` is deleted is deleted too, in the background, deepest first.

The collector watches every registered kind: when a record starts deleting, its key comes here, and the
records it owns are marked for deletion (their own owned records first). Each then goes through its own kind's
cleanup and finalizer, as if the user had deleted it.
"""

from __future__ import annotations

__all__ = ["OwnerCollector", "COLLECTOR"]

from cloudlet.core.kinds import kinds
from cloudlet.core.reconcile import Result
from cloudlet.core.records import Resource
from cloudlet.core.store import Store

COLLECTOR = "Owned"  # the work queue's kind for this controller's keys (an owner's id)


class OwnerCollector:
    kind = COLLECTOR

    def __init__(self, store: Store) -> None:
        self.store = store
        self.watches = {k.name: self._owner_of_deleting for k in kinds()}

    @staticmethod
    def _owner_of_deleting(res: Resource) -> list[str]:
        return [res.id] if res.deleting else []

    def reconcile(self, owner_id: str) -> Result:
        self._collect(owner_id)
        return Result()

    def _collect(self, owner_id: str) -> None:
        for child in self.store.list(owner=owner_id):
            self._collect(child.id)  # deepest first
            if not child.deleting:
                deleted = self.store.mark_deleted(child.id)
                self.store.add_event(deleted, "Collected", f"{child.kind.lower()} {child.name} went with its owner")
