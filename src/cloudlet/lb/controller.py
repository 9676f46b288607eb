"""The agent's per-LB loop: measure every member, set HAProxy's weights, report member state.

One thread per load balancer, switched into the LB's netns (its probes reach the members from where HAProxy
does). Every TICK it reads `show stat` (requests in flight, responses, errors, timeouts, retries, check state)
and the latest result of its own probes (an HTTP GET of the health path per member, timed), feeds them to
lb/weights.py and sets the weights that changed through the runtime API. It hands the members' state to
`report` (the LB's status) every REPORT seconds, and at once when a member changed state or went in or out of
service (weight 0), not on every weight the latency controller moves.
"""

from __future__ import annotations

__all__ = ["Member", "Settings", "LbController"]

import asyncio
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudlet.lb.haproxy import HAProxy, parse_stat
from cloudlet.lb.resource import MemberStatus
from cloudlet.lb.weights import MAX_WEIGHT, Sample, WeightController
from cloudlet.network.netns import NETNS_DIR

log = logging.getLogger("cloudlet.lb")
TICK = 0.2
REPORT = 2.0
PROBE_EVERY = 0.25
PROBE_TIMEOUT = 0.5
LOST_AFTER = 10  # ticks without an answer from HAProxy's runtime socket (2 s; a reload takes ~0.1 s)
CLONE_NEWNET = 0x40000000
ERROR_FIELDS = ("econ", "eresp", "wretr", "wredis", "hrsp_5xx")


@dataclass(frozen=True)
class Member:
    name: str
    ip: str
    port: int


@dataclass(frozen=True)
class Settings:
    members: tuple[Member, ...] = ()
    health_path: str | None = None  # None: a TCP connect is the probe
    adaptive: bool = True  # False (roundrobin, leastconn): measure and report, set no weights but drains
    drained: frozenset[str] = frozenset()
    server_timeout_ms: int = 5000


@dataclass
class _Probe:
    latency_ms: float | None = None
    fresh: bool = False
    failures: int = 0


@dataclass
class _Counters:
    responses: int = 0
    errors: int = 0
    timeouts: int = 0


@dataclass
class LbController:
    haproxy: HAProxy
    netns: str
    report: Callable[[list[MemberStatus]], None]
    lost: Callable[[], None] = lambda: None  # HAProxy stopped answering: the reconciler starts it again
    settings: Settings = field(default_factory=Settings)
    weights: WeightController = field(default_factory=WeightController)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _probes: dict[str, _Probe] = field(default_factory=dict)
    _counters: dict[str, _Counters] = field(default_factory=dict)

    def configure(self, settings: Settings) -> None:
        self.settings = settings  # read once per tick: one assignment is atomic

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"lb-{self.netns[-10:]}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        with open(os.path.join(NETNS_DIR, self.netns)) as f:  # this thread only: its probes start in the LB's netns
            if ctypes.CDLL(None, use_errno=True).setns(f.fileno(), CLONE_NEWNET) != 0:
                log.warning("lb controller: cannot enter %s", self.netns)
                return
        asyncio.run(self._main())

    async def _main(self) -> None:
        probers: dict[Member, asyncio.Task[None]] = {}
        next_report = 0.0
        reported: list[tuple[str, str, bool]] = []
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            s = self.settings
            for m in s.members:
                if m not in probers:
                    probers[m] = asyncio.create_task(self._probe_loop(m))
            for m in [m for m in probers if m not in s.members]:
                probers.pop(m).cancel()
            try:
                statuses = self._tick(s, started)
                # a member that changed state or went in or out of service is reported at once (a rolling deploy
                # waits on its drain); weights the latency controller moves wait for the next report
                changed = [(m.name, m.state, m.weight == 0) for m in statuses]
                if started >= next_report or changed != reported:
                    self.report(statuses)
                    next_report, reported = started + REPORT, changed
                failures = 0
            except (OSError, ValueError) as exc:  # HAProxy reloading or not up yet: the next tick retries
                log.debug("lb controller tick failed: %s", exc)
                failures += 1
                if failures == LOST_AFTER:
                    self.lost()
            await asyncio.sleep(max(0.0, TICK - (time.monotonic() - started)))
        for task in probers.values():
            task.cancel()

    def _tick(self, s: Settings, now: float) -> list[MemberStatus]:
        stats = parse_stat(self.haproxy.command("show stat"))
        samples: dict[str, Sample] = {}
        for m in s.members:
            row = stats.get(m.name)
            if row is None:
                continue
            responses = sum(_int(row.get(f"hrsp_{c}xx")) for c in range(1, 6)) + _int(row.get("hrsp_other"))
            errors = sum(_int(row.get(k)) for k in ERROR_FIELDS)
            timeouts = _int(row.get("eresp"))
            now_counts = _Counters(responses, errors, timeouts)
            before = self._counters.setdefault(m.name, now_counts)
            d_resp, d_err = max(0, responses - before.responses), max(0, errors - before.errors)
            self._counters[m.name] = now_counts
            probe = self._probes.get(m.name, _Probe())
            latency = probe.latency_ms if probe.fresh else None
            probe.fresh = False
            if timeouts > before.timeouts:  # response timeouts: those requests took at least the server timeout
                latency = max(latency or 0.0, float(s.server_timeout_ms))
            samples[m.name] = Sample(latency, _int(row.get("scur")), d_resp, d_err + (1 if probe.failures else 0))
        self.weights.slow_ms = s.server_timeout_ms / 2
        desired = self.weights.update(now, samples, s.drained)
        statuses = []
        for m in s.members:
            row = stats.get(m.name, {})
            want = desired.get(m.name, MAX_WEIGHT) if s.adaptive else (0 if m.name in s.drained else MAX_WEIGHT)
            if row and _int(row.get("weight")) != want:
                self.haproxy.command(f"set weight members/{m.name} {want}")
            cost = self.weights.members.get(m.name)
            state = (row.get("status") or "unknown").lower()
            statuses.append(
                MemberStatus(
                    name=m.name,
                    ip=m.ip,
                    state="drain" if m.name in s.drained and state.startswith("up") else state,
                    weight=want,
                    ewma_ms=round(cost.latency.value, 2) if cost and cost.latency.value is not None else None,
                    error_rate=round(cost.error_rate, 4) if cost else 0.0,
                )
            )
        return statuses

    async def _probe_loop(self, m: Member) -> None:
        probe = self._probes.setdefault(m.name, _Probe())
        while True:
            started = time.monotonic()
            ok = await self._probe_once(m)
            elapsed = (time.monotonic() - started) * 1000
            probe.latency_ms = elapsed if ok else max(elapsed, PROBE_TIMEOUT * 2000)
            probe.failures = 0 if ok else probe.failures + 1
            probe.fresh = True
            await asyncio.sleep(max(0.0, PROBE_EVERY - elapsed / 1000))

    async def _probe_once(self, m: Member) -> bool:
        path = self.settings.health_path
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                reader, writer = await asyncio.open_connection(m.ip, m.port)
                try:
                    if path is None:
                        return True
                    writer.write(
                        f"GET {path} HTTP/1.0\r\nHost: {m.ip}\r\nUser-Agent: cloudlet-lb-probe\r\n\r\n".encode()
                    )
                    line = await reader.readline()
                    parts = line.split()
                    return len(parts) > 1 and parts[1][:1] in (b"2", b"3")
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return False


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
