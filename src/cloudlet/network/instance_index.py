"""What the gateway services (metadata, DNS) look instances up in: an index built from the records they are given
and built again once it is older than they allow, so a lookup costs a dictionary access, not a pass over every
record, and a query for a just-started instance still finds it (one rebuild, rate-limited by FRESH)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from cloudlet.compute.resource import INSTANCE, InstanceSpec, InstanceStatus
from cloudlet.core.context import Records
from cloudlet.core.records import Resource
from cloudlet.network.resource import NetworkSpec

__all__ = ["FRESH", "CachedIndex", "addressed", "gateways"]

FRESH = 0.05  # an unknown source rebuilds an index older than this once, so a just-started instance is answered

T = TypeVar("T")
R = TypeVar("R")


def gateways(networks: Iterable[Resource]) -> dict[str, str]:
    """Gateway address -> network id, of the networks not being deleted (where a query arrived tells its network)."""
    return {NetworkSpec.of(net).gateway: net.id for net in networks if not net.deleting}


def addressed(records: Records) -> Iterator[tuple[Resource, str, str]]:
    """(instance, its address, its network id) of each instance that has an address and is not being deleted."""
    for inst in records.list(INSTANCE):
        ip = InstanceStatus.of(inst).ip
        if ip and not inst.deleting:
            yield inst, ip, InstanceSpec.of(inst).network_id


class CachedIndex(Generic[T]):
    """The index `build` makes, kept for `max_age` seconds; one lookup thread builds it while the others wait."""

    def __init__(self, build: Callable[[], T], max_age: float) -> None:
        self.build = build
        self.max_age = max_age
        self._lock = threading.Lock()
        self._index: T | None = None
        self._built = float("-inf")

    def get(self, max_age: float | None = None) -> T:
        with self._lock:
            if self._index is None or time.monotonic() - self._built > (self.max_age if max_age is None else max_age):
                self._index = self.build()
                self._built = time.monotonic()
            return self._index

    def find(self, look: Callable[[T], R | None]) -> R | None:
        """What `look` finds in the index; if nothing, in one rebuilt unless it is younger than FRESH."""
        for max_age in (self.max_age, FRESH):
            found = look(self.get(max_age))
            if found is not None:
                return found
        return None
