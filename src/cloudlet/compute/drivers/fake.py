"""Fake compute driver: in-memory instances on a (virtual) clock with seeded faults, for simulation at scale.

An instance boots `boot_seconds` after it is started; with `crash_rate` > 0, each state check may find a
running instance crashed, drawn from the seeded random source so a failing seed replays exactly.
"""

from __future__ import annotations

__all__ = ["FakeDriver"]

import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.compute.drivers.base import (
    Capabilities,
    ComputeDriver,
    ConsolePage,
    ExecResult,
    InstanceInfo,
    InstanceState,
    LaunchSpec,
    console_page,
    exec_output,
)
from cloudlet.core.clock import Clock, RealClock
from cloudlet.core.errors import Conflict


@dataclass
class _Fake:
    spec: LaunchSpec
    started_at: float | None
    pid: int


class FakeDriver(ComputeDriver):
    name = "fake"
    capabilities = Capabilities(exec=True, console=True, real_processes=False)

    def __init__(
        self, clock: Clock | None = None, boot_seconds: float = 0.0, crash_rate: float = 0.0, seed: int = 0, **_: object
    ) -> None:
        self.clock = clock or RealClock()
        self.boot_seconds = boot_seconds
        self.crash_rate = crash_rate
        self.rng = random.Random(seed)
        self.instances: dict[str, _Fake] = {}
        self.mounts: dict[str, dict[str, Path]] = {}
        self._next_pid = 1000
        self._on_exit: Callable[[str], None] | None = None

    def create_instance(self, spec: LaunchSpec) -> InstanceInfo:
        if spec.id in self.instances and self.instances[spec.id].started_at is not None:
            return self.get_instance(spec.id)
        return self.start_instance(spec)

    def start_instance(self, spec: LaunchSpec) -> InstanceInfo:
        self._next_pid += 1
        if spec.plumb is not None:
            spec.plumb(self._next_pid)
        self.instances[spec.id] = _Fake(spec, self.clock.now(), self._next_pid)
        return self.get_instance(spec.id)

    def stop_instance(self, iid: str, timeout: float = 5.0) -> None:
        if iid in self.instances:
            self.instances[iid].started_at = None

    def delete_instance(self, iid: str) -> None:
        self.instances.pop(iid, None)

    def get_instance(self, iid: str) -> InstanceInfo:
        inst = self.instances.get(iid)
        if inst is None:
            return InstanceInfo(iid, InstanceState.MISSING)
        if inst.started_at is not None and self.crash_rate and self.rng.random() < self.crash_rate:
            self.crash(iid)
        if inst.started_at is None:
            return InstanceInfo(iid, InstanceState.STOPPED)
        if self.clock.now() < inst.started_at + self.boot_seconds:
            return InstanceInfo(iid, InstanceState.STARTING, extra={"ready_at": inst.started_at + self.boot_seconds})
        return InstanceInfo(iid, InstanceState.RUNNING, inst.pid, {"host": inst.spec.host})

    def list_instances(self) -> set[str]:
        return set(self.instances)

    def exec_instance(
        self, iid: str, argv: list[str], timeout: float = 60.0, output_limit: int = 1 << 20
    ) -> ExecResult:
        if self.get_instance(iid).state != InstanceState.RUNNING:
            raise Conflict("instance is not running; start it first")
        printed = (" ".join(argv) + "\n").encode()
        kept = printed[:output_limit]
        return ExecResult(0, exec_output(kept, len(printed)), "", truncated=len(kept) < len(printed))

    def console_log(self, iid: str, offset: int | None = None, limit: int = 65536) -> ConsolePage:
        log = f"fake console of {iid}\n".encode() if iid in self.instances else b""
        return console_page(io.BytesIO(log), len(log), offset, limit)

    def attach_volume(self, iid: str, source: Path, path: str) -> None:
        self.mounts.setdefault(iid, {})[path] = source

    def detach_volume(self, iid: str, source: Path, path: str) -> None:
        self.mounts.get(iid, {}).pop(path, None)

    def watch(self, on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit

    def crash(self, iid: str) -> None:
        """Fault injection: the instance's init dies."""
        if iid in self.instances:
            self.instances[iid].started_at = None
            if self._on_exit:
                self._on_exit(iid)

    def teardown(self) -> None:
        self.instances.clear()
