"""In-memory pool for simulations: names only, no files; paths are never opened by the fake compute driver."""

from __future__ import annotations

__all__ = ["MemoryPool"]

from pathlib import Path

from cloudlet.storage.pools.base import PoolCapabilities, StoragePool, Usage


class MemoryPool(StoragePool):
    name = "memory"
    capabilities = PoolCapabilities(cow=True, quotas=False)

    def __init__(self) -> None:
        self.volumes: dict[str, int] = {}

    def setup(self) -> None:
        pass

    def teardown(self, purge: bool) -> None:
        if purge:
            self.volumes.clear()

    def path(self, name: str) -> Path:
        return Path("/nonexistent/memory-pool") / name

    def exists(self, name: str) -> bool:
        return name in self.volumes

    def create_volume(self, name: str, size_bytes: int | None = None) -> Path:
        self.volumes.setdefault(name, 0)
        return self.path(name)

    def snapshot(self, src: str, dst: str, readonly: bool = True) -> Path:
        self.volumes.setdefault(dst, self.volumes.get(src, 0))
        return self.path(dst)

    def delete(self, name: str) -> None:
        self.volumes.pop(name, None)

    def list(self, prefix: str) -> set[str]:
        return {n for n in self.volumes if n.startswith(prefix) and not n.endswith(".partial")}

    def usage(self, name: str) -> Usage:
        return Usage(self.volumes.get(name, 0), 0)
