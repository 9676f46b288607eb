"""Clocks injected into reconcilers: the real one, and a virtual one that simulations advance by hand."""

from __future__ import annotations

import threading
import time

__all__ = ["Clock", "RealClock", "VirtualClock"]


class Clock:
    def now(self) -> float:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError


class RealClock(Clock):
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class VirtualClock(Clock):
    """Time moves only when advance() is called; sleep() advances it, so nothing ever waits."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)

    def advance_to(self, when: float) -> None:
        with self._lock:
            self._now = max(self._now, when)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
