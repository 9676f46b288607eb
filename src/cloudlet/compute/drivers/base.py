"""The compute driver interface (libcloud shape): verb-noun methods, neutral value objects, a state map."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from cloudlet.core.errors import NotSupported

__all__ = [
    "InstanceState",
    "Capabilities",
    "InstanceInfo",
    "LaunchSpec",
    "ExecResult",
    "ConsolePage",
    "CONSOLE_PAGE",
    "ComputeDriver",
    "exec_output",
    "console_page",
]


class InstanceState(str, Enum):
    STARTING = "starting"  # process started, not yet up (simulated boot)
    RUNNING = "running"
    STOPPED = "stopped"  # artefacts exist, no process
    PAUSED = "paused"
    MISSING = "missing"  # no artefacts at all


@dataclass(frozen=True)
class Capabilities:
    exec: bool = False
    console: bool = False
    real_processes: bool = False


@dataclass
class InstanceInfo:
    id: str
    state: InstanceState
    pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


USERNS_IDS = 65536  # uids (and gids) a user namespace maps: 0-65535 inside


@dataclass(frozen=True)
class LaunchSpec:
    id: str
    hostname: str
    rootfs: Path | None
    command: list[str]
    cpus: float
    memory_mib: int
    netns: str  # a network namespace to join; "" makes a new one, handed to `plumb` before init runs
    hosts: str
    resolv_conf: str
    host: str = "local"
    mounts: tuple[tuple[str, str], ...] = ()  # (host path, path inside): attached volumes
    uid_base: int | None = None  # host uid that container root maps to (USERNS_IDS from it); None: no user namespace
    plumb: Callable[[int], None] | None = None  # wires a new netns up, given the pid of the instance's init
    net_raw: bool = False  # CAP_NET_RAW on top of the default set
    console: Path | None = None  # where its console log is kept (a size-limited place); None: beside its bundle
    meta_data: str = ""  # its NoCloud meta-data (compute/seed.py), bound read-only with the user-data
    user_data: str | None = None  # run at boot by the runner of compute/seed.py


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False  # a stream printed more than the cap: the rest was dropped, and it ends with a marker


def exec_output(kept: bytes, printed: int) -> str:
    """One stream of an exec's result: what was kept of it, then a marker line if it printed more."""
    text = kept.decode(errors="replace")
    if printed > len(kept):
        text += f"\n[cloudlet: output truncated: {printed} bytes printed, the first {len(kept)} kept]\n"
    return text


CONSOLE_PAGE = 1 << 20  # the most one console read returns


@dataclass(frozen=True)
class ConsolePage:
    """Bytes [offset, next_offset) of an instance's console log, decoded; size is the log's length when read."""

    output: str
    offset: int
    next_offset: int
    size: int


def console_page(f: BinaryIO, size: int, offset: int | None, limit: int) -> ConsolePage:
    """At most `limit` bytes from `offset`, or the last `limit` bytes when offset is None. Pages start and end on
    UTF-8 character boundaries (unless the log itself is cut there), so pages read one after the other decode to
    the whole log."""
    start = max(0, size - limit) if offset is None else min(offset, size)
    f.seek(start)
    data = f.read(min(limit, size - start))
    if offset is None:  # a tail starting inside a character: start after it
        skip = next((i for i, b in enumerate(data[:3]) if b & 0xC0 != 0x80), 0)
        data, start = data[skip:], start + skip
    if start + len(data) < size:
        data = data[: _complete_utf8(data)]
    return ConsolePage(data.decode(errors="replace"), start, start + len(data), size)


def _complete_utf8(data: bytes) -> int:
    """Length of data without a multi-byte character cut off at its end (all of it if that would leave nothing)."""
    for back in range(1, min(4, len(data) + 1)):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for the character's first byte
            continue
        needs = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return len(data) - back if needs > back and back < len(data) else len(data)
    return len(data)


class ComputeDriver(ABC):
    name = "base"
    capabilities = Capabilities()

    @abstractmethod
    def create_instance(self, spec: LaunchSpec) -> InstanceInfo:
        """Creates whatever is missing and starts it; an existing instance with this id is adopted."""

    @abstractmethod
    def start_instance(self, spec: LaunchSpec) -> InstanceInfo: ...

    @abstractmethod
    def stop_instance(self, iid: str, timeout: float = 5.0) -> None: ...

    @abstractmethod
    def delete_instance(self, iid: str) -> None:
        """Removes every artefact of the instance; succeeds if there is nothing left."""

    @abstractmethod
    def get_instance(self, iid: str) -> InstanceInfo: ...

    @abstractmethod
    def list_instances(self) -> set[str]:
        """Ids of every instance with any artefact on this host."""

    def exec_instance(
        self, iid: str, argv: list[str], timeout: float = 60.0, output_limit: int = 1 << 20
    ) -> ExecResult:
        """Runs argv in the instance; kills it, and whatever it started, after timeout seconds (exit code 124).
        Keeps at most output_limit bytes of each stream (ExecResult.truncated says it dropped some)."""
        raise NotSupported(f"exec not implemented for the {self.name} driver")

    def console_log(self, iid: str, offset: int | None = None, limit: int = 65536) -> ConsolePage:
        """One page of what the instance printed (console_page: the tail when offset is None)."""
        raise NotSupported(f"console not implemented for the {self.name} driver")

    def attach_volume(self, iid: str, source: Path, path: str) -> None:
        """Makes source visible at path inside the running instance."""
        raise NotSupported(f"live volume attach not implemented for the {self.name} driver")

    def detach_volume(self, iid: str, source: Path, path: str) -> None:
        """Removes the mount of source that attach made (found by what it mounts, not by path)."""
        raise NotSupported(f"live volume detach not implemented for the {self.name} driver")

    def pause_instance(self, iid: str) -> bool:
        """Freezes every process of the instance (for consistent snapshots); False if it was not running."""
        return False

    def resume_instance(self, iid: str) -> None:
        """Thaws what pause_instance froze."""

    def stats(self, iid: str) -> dict[str, Any]:
        return {}

    def watch(self, on_exit: Callable[[str], None]) -> None:
        """Calls on_exit(id) as soon as an instance's init dies; drivers without events rely on resync."""

    def shutdown(self) -> None:
        """Stops every instance and releases host resources (mounts, cgroups), keeping instance files."""

    def teardown(self) -> None:
        """Removes everything the driver created for this cloud."""
