"""The compute driver interface (libcloud shape): verb-noun methods, neutral value objects, a state map."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from cloudlet.core.errors import NotSupported

__all__ = ["InstanceState", "Capabilities", "InstanceInfo", "LaunchSpec", "ExecResult", "ComputeDriver"]


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


@dataclass(frozen=True)
class LaunchSpec:
    id: str
    hostname: str
    rootfs: Path | None
    command: list[str]
    cpus: float
    memory_mib: int
    netns: str
    hosts: str
    resolv_conf: str
    host: str = "local"
    mounts: tuple[tuple[str, str], ...] = ()  # (host path, path inside): attached volumes


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


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

    def exec_instance(self, iid: str, argv: list[str], timeout: float = 60.0) -> ExecResult:
        raise NotSupported(f"exec not implemented for the {self.name} driver")

    def console_log(self, iid: str, tail_bytes: int = 65536) -> str:
        raise NotSupported(f"console not implemented for the {self.name} driver")

    def attach_volume(self, iid: str, source: Path, path: str) -> None:
        """Makes source visible at path inside the running instance."""
        raise NotSupported(f"live volume attach not implemented for the {self.name} driver")

    def detach_volume(self, iid: str, path: str) -> None:
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
