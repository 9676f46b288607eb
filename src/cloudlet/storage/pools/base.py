"""The storage pool interface (DESIGN.md section 6): volumes addressed by a relative name such as
`images/<digest>`, `disks/<instance>`, `volumes/<id>`, `snapshots/<id>`; snapshot and clone are O(1) where the
pool can (btrfs), copies where it cannot (dir). Replication (`send`, `receive`, `promote`) ships read-only
snapshots between two pools as a stream, incrementally against a parent both sides hold (btrfs only)."""

from __future__ import annotations

__all__ = ["Usage", "PoolCapabilities", "StoragePool", "SendStream", "mounted", "run"]

import io
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudlet.core.errors import DriverError, NotSupported


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Usage:
    logical_bytes: int  # what the volume's files add up to
    exclusive_bytes: int  # what deleting it would free (shared extents not counted)


@dataclass(frozen=True)
class PoolCapabilities:
    cow: bool  # snapshot and clone share blocks and take O(1) time
    quotas: bool  # per-volume size limits are enforced
    replication: bool = False  # send, receive and promote work (incremental snapshot streams)


class SendStream:
    """What a producer process writes to its stdout, as an iterator of chunks (as they come: a slow reader holds
    the producer back); its failure is raised after the last chunk, so a consumer never takes a cut stream for a
    whole one. `sent` counts the bytes handed out."""

    def __init__(self, argv: list[str], what: str, chunk: int = 1 << 20) -> None:
        self.what = what
        self.chunk = chunk
        self.sent = 0
        # a file, not a pipe: nobody reads it while the stream flows; it lives as long as the stream
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._err)

    def __iter__(self) -> Iterator[bytes]:
        out = self._proc.stdout
        assert isinstance(out, io.BufferedReader)  # read1: what the pipe holds now, not a full chunk
        try:
            while chunk := out.read1(self.chunk):
                self.sent += len(chunk)
                yield chunk
            if self._proc.wait() != 0:
                self._err.seek(0)
                raise DriverError(f"{self.what}: {self._err.read().decode(errors='replace').strip()}")
        finally:
            self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._err.close()


class StoragePool(ABC):
    name = "base"
    capabilities = PoolCapabilities(cow=False, quotas=False)
    root: Path  # where the pool's volumes are, for the pools that keep them in a directory tree

    @abstractmethod
    def setup(self) -> None:
        """Makes the pool usable (idempotent): mounts it if it lives in an image file."""

    @abstractmethod
    def teardown(self, purge: bool) -> None:
        """Unmounts the pool; with purge, destroys it."""

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return self.path(name).is_dir()

    @abstractmethod
    def create_volume(self, name: str, size_bytes: int | None = None) -> Path:
        """An empty writable volume; an existing one is returned as it is."""

    @abstractmethod
    def snapshot(self, src: str, dst: str, readonly: bool = True) -> Path:
        """A point-in-time copy of src; with readonly False it is a writable clone."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Removes the volume; succeeds if it is already gone."""

    def list(self, prefix: str) -> set[str]:
        """Names of the finished volumes under prefix (e.g. "disks/"); `.partial` ones are work in flight."""
        base = self.path(prefix)
        if not base.is_dir():
            return set()
        return {prefix + p.name for p in base.iterdir() if p.is_dir() and not p.name.endswith(".partial")}

    @abstractmethod
    def usage(self, name: str) -> Usage: ...

    def seal(self, partial: str, final: str) -> Path:
        """Turns a filled-in volume into a read-only one under its final name, atomically."""
        path = self.snapshot(partial, final, readonly=True)
        self.delete(partial)
        return path

    def send(self, name: str, parent: str | None = None) -> SendStream:
        """A stream of the read-only snapshot name, holding only what changed since parent when given (the
        receiving pool must hold a copy of parent)."""
        raise NotSupported(f"replication needs the btrfs pool; this host's pool is {self.name}")

    def receive(self, stream: Iterable[bytes], into_prefix: str) -> str:
        """Makes the volume a `send` stream holds, read-only, under into_prefix (e.g. "replicas/<id>/") with the
        name it was sent under; returns that name. A failed or cut stream leaves nothing under a final name."""
        raise NotSupported(f"replication needs the btrfs pool; this host's pool is {self.name}")

    def promote(self, replica: str, disk: str) -> Path:
        """A writable clone of a received replica, to boot from; the replica stays as it is."""
        raise NotSupported(f"replication needs the btrfs pool; this host's pool is {self.name}")

    def set_limit(self, name: str, size_bytes: int) -> None:
        raise NotSupported(f"size limits are not implemented for the {self.name} pool")

    def total(self) -> Usage:
        """Logical bytes of all volumes and physical bytes the pool uses."""
        return Usage(0, 0)
