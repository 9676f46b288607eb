"""The latency-aware weight controller: peak-EWMA cost per member, weights inversely proportional to it.

Pure (no I/O, time passed in): the agent's per-LB loop (lb/controller.py) feeds it one `Sample` per member and
tick from HAProxy's runtime stats and its own probes, and sets the weights it returns through the runtime API.

Peak-EWMA (Finagle's): a sample above the current value replaces it at once (a member that turns slow is
avoided on the next tick), one below decays toward it with time constant `decay` (a member that recovered wins
traffic back over a second or two). Cost = ewma latency x (1 + requests in flight) x (1 + penalty x error
rate): in-flight requests pile up on a slow member long before its responses (or timeouts) come back.
When every member is slow (timing out or failing), or they all cost about the same, weights are equal: draining
them all would only move the queue into HAProxy.
"""

from __future__ import annotations

__all__ = ["Sample", "PeakEwma", "MemberCost", "WeightController", "MAX_WEIGHT", "MIN_WEIGHT"]

import math
from dataclasses import dataclass, field

MAX_WEIGHT = 256  # HAProxy's largest
MIN_WEIGHT = 1  # a floor, not 0: a slow member still gets a trickle, so its recovery shows in real traffic
ERROR_PENALTY = 20.0  # cost multiplier per unit of error rate: 10 % errors cost 3x
EQUAL_WITHIN = 1.2  # costs within 20 % of each other: equal weights
SLOW_ERRORS = 0.5  # an error rate above this: the member is failing, however fast it fails


@dataclass(frozen=True)
class Sample:
    """What one tick observed of one member."""

    latency_ms: float | None = None  # a probe's time, or a response time HAProxy measured; None: nothing new
    in_flight: int = 0  # HAProxy's current sessions on it
    requests: int = 0  # responses since the last tick
    errors: int = 0  # failed responses, timeouts, connection errors and retries since the last tick


class PeakEwma:
    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.value: float | None = None
        self.at = 0.0

    def observe(self, sample: float, now: float) -> float:
        if self.value is None or sample >= self.value:
            self.value = sample
        else:
            w = math.exp(-max(0.0, now - self.at) / self.decay)
            self.value = self.value * w + sample * (1.0 - w)
        self.at = now
        return self.value


@dataclass
class MemberCost:
    latency: PeakEwma
    errors: PeakEwma  # of the error rate, with a slower decay: one bad second is remembered for a few
    in_flight: int = 0
    weight: int = MAX_WEIGHT

    @property
    def error_rate(self) -> float:
        return self.errors.value or 0.0

    def cost(self) -> float | None:
        if self.latency.value is None:
            return None
        return max(self.latency.value, 0.1) * (1 + self.in_flight) * (1 + ERROR_PENALTY * self.error_rate)


@dataclass
class WeightController:
    decay: float = 1.0
    error_decay: float = 3.0
    members: dict[str, MemberCost] = field(default_factory=dict)
    slow_ms: float = 1000.0  # a member this slow (the controller says: half the server timeout) is timing out

    def update(self, now: float, samples: dict[str, Sample], drained: frozenset[str] = frozenset()) -> dict[str, int]:
        """Takes one tick's samples; returns every member's weight (drained members 0)."""
        for gone in self.members.keys() - samples.keys():
            del self.members[gone]
        for name, s in samples.items():
            m = self.members.setdefault(name, MemberCost(PeakEwma(self.decay), PeakEwma(self.error_decay)))
            m.in_flight = s.in_flight
            if s.latency_ms is not None:
                m.latency.observe(s.latency_ms, now)
            if s.requests or s.errors:
                m.errors.observe(min(1.0, s.errors / max(1, s.requests)), now)
            elif m.errors.value:
                m.errors.observe(0.0, now)
        costs = {n: c for n, m in self.members.items() if n not in drained and (c := m.cost()) is not None}
        all_slow = all(self._slow(self.members[n]) for n in costs)
        weights = {n: MAX_WEIGHT for n in self.members}
        if costs and not all_slow and max(costs.values()) > min(costs.values()) * EQUAL_WITHIN:
            best = min(costs.values())
            for n, c in costs.items():
                weights[n] = max(MIN_WEIGHT, min(MAX_WEIGHT, round(MAX_WEIGHT * best / c)))
        for n in drained:
            if n in weights:
                weights[n] = 0
        for n, w in weights.items():
            self.members[n].weight = w
        return weights

    def _slow(self, m: MemberCost) -> bool:
        return (m.latency.value or 0.0) >= self.slow_ms or m.error_rate > SLOW_ERRORS
