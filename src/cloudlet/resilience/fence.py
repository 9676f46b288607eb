"""Fence drivers: make sure nothing a suspected host ran is still running, before anything it ran starts elsewhere.

`netns` stands in for a power fence on one machine: an added host is a set of network namespaces
(`cl-<cloud>-h-<H>` for its machine, `cl-<cloud>-h-<H>.<what>` for its hub, instances and load balancers), so
killing every process in them with SIGKILL, and checking that none is left, is pulling its plug. Processes are
found by `/proc/<pid>/ns/net`, so nothing outside those namespaces is ever touched (the root namespace's
processes, cloudletd itself). Host `local` is the root namespace: fencing it needs a real power fence, and it is
refused. `fake` records what it was asked (simulations); `none` refuses every host (the control plane then waits
for the host's lease to run out).
"""

from __future__ import annotations

__all__ = ["FenceResult", "FenceDriver", "NetnsFence", "FakeFence", "NoFence", "make_fence"]

import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudlet.core.config import Config
from cloudlet.core.errors import DriverError, NotSupported

NETNS_DIR = Path("/run/netns")
ROUNDS = 50  # kill-and-look rounds: runc-spawned processes may be mid-fork when the first round runs
ROUND_WAIT = 0.02


@dataclass(frozen=True)
class FenceResult:
    killed: int  # processes that got SIGKILL
    took_s: float  # until none was left


class FenceDriver(ABC):
    name = ""

    @abstractmethod
    def fence(self, host: str) -> FenceResult:
        """Returns once nothing of host runs any more; raises (DriverError, NotSupported) when that cannot be
        made sure."""


def _inode(path: Path) -> tuple[int, int] | None:
    """A namespace's identity: (device, inode) of its nsfs file (a stray file in /run/netns is on another device)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class NetnsFence(FenceDriver):
    name = "netns"

    def __init__(self, cloud_id: str, local_host: str = "local") -> None:
        self.cloud_id = cloud_id
        self.local_host = local_host

    def namespaces(self, host: str) -> set[tuple[int, int]]:
        """The identities of the host's namespaces (its machine, hub, instances, load balancers) that exist now."""
        base = f"cl-{self.cloud_id}-h-{host}"
        try:
            names = [n for n in os.listdir(NETNS_DIR) if n == base or n.startswith(base + ".")]
        except FileNotFoundError:
            names = []
        return {ino for n in names if (ino := _inode(NETNS_DIR / n)) is not None}

    @staticmethod
    def processes_in(inodes: set[tuple[int, int]]) -> list[int]:
        own = os.getpid()
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != own and _inode(Path("/proc", entry, "ns", "net")) in inodes:
                found.append(int(entry))
        return found

    def fence(self, host: str) -> FenceResult:
        if host == self.local_host:
            raise NotSupported(
                f"host {host} is this machine's root namespace: fencing it needs a real power fence, not the netns one"
            )
        start = time.monotonic()
        inodes = self.namespaces(host)
        killed: set[int] = set()
        for _ in range(ROUNDS):
            left = self.processes_in(inodes) if inodes else []
            if not left:
                return FenceResult(len(killed), time.monotonic() - start)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(ROUND_WAIT)  # a killed process stays in /proc until it is reaped
        left = self.processes_in(inodes)
        raise DriverError(f"fencing host {host}: {len(left)} processes survived SIGKILL (pids {left[:10]})")


@dataclass
class FakeFence(FenceDriver):
    """Simulations: records each host fenced and calls `kill` (the simulation stops that host's agent)."""

    name = "fake"
    fenced: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # hosts it cannot fence (as the netns driver refuses local)
    kill: Callable[[str], None] | None = None

    def fence(self, host: str) -> FenceResult:
        if host in self.refuse:
            raise NotSupported(f"host {host} cannot be fenced by the fake driver")
        self.fenced.append(host)
        if self.kill is not None:
            self.kill(host)
        return FenceResult(1, 0.0)


class NoFence(FenceDriver):
    name = "none"

    def fence(self, host: str) -> FenceResult:
        raise NotSupported(f"no fence driver (CLOUDLET_FENCE=none): host {host} is recovered once its lease ran out")


def make_fence(config: Config) -> FenceDriver:
    """CLOUDLET_FENCE: netns, fake or none; unset, netns for runc clouds and fake for fake ones."""
    name = config.fence or ("fake" if config.compute_driver == "fake" else "netns")
    if name == "netns":
        return NetnsFence(config.cloud_id(), config.host)
    if name == "fake":
        return FakeFence()
    if name == "none":
        return NoFence()
    raise NotSupported(f"CLOUDLET_FENCE={name}: choose netns, fake or none")
