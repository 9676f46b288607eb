"""The agent's lease and its watchdog: self-fencing when this host is the one cut off (issue 10).

Every heartbeat the control plane answers renews the lease until `send time + T` on the agent's own monotonic
clock (the control plane's store is the witness; the agent trusts no other clock). When the lease runs out the
watchdog asks the peers the last reply named (`GET /lease` on their agents, in parallel, short timeout):

- a peer answers that it cannot reach the control plane either: the control plane is down for everybody, and
  this host serves on (nothing can be recovered elsewhere meanwhile); asked again every second;
- no peer answers, or every answer comes from a peer that has reached the control plane for PEER_STABLE: this
  host is the isolated one, and it stops its HA-managed instances (SIGKILL), records them stopped (reason
  SelfFenced) and starts none until it has renewed and caught up with the records (a copy may run elsewhere by
  then);
- a peer reaches the control plane again only since moments ago (cloudletd is back): wait, this host's own
  heartbeat is about to get through too;
- no peer at all (a single-host cloud): it never self-fences; nobody else could start a copy.

A reply that refuses the renewal (the control plane fenced the host, or its lease expired there) self-fences at
once and rejoins as a new incarnation. The control plane's side of the contract is resilience/monitor.py.
"""

from __future__ import annotations

__all__ = [
    "CHECK_EVERY",
    "PEER_TIMEOUT",
    "Peer",
    "PeerAnswer",
    "Lease",
    "decide",
    "ask_peers",
    "self_fence",
    "install",
    "ha_allowed",
    "ha_may_start",
    "FENCED_MESSAGE",
    "HELD_MESSAGE",
]

import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from cloudlet.compute.drivers.base import InstanceState
from cloudlet.compute.instances import set_state
from cloudlet.compute.resource import INSTANCE, InstanceSpec
from cloudlet.core.clock import Clock
from cloudlet.core.context import HostContext

log = logging.getLogger("cloudlet.lease")
CHECK_EVERY = 1.0  # seconds between the watchdog's checks once the lease ran out
PEER_TIMEOUT = 0.5  # for one peer's answer
REPLY_FRESH = 2.5  # heartbeats go every second: no reply for this long and the control plane is not reached
PEER_STABLE = 2.0  # a peer back in touch with the control plane for less than this may be just ahead of us
FENCED_MESSAGE = "self-fenced: this host holds no lease; it starts again once the lease is renewed"
HELD_MESSAGE = "waiting for this host's agent to renew its lease and catch up before it starts HA instances"


@dataclass(frozen=True)
class Peer:
    host: str
    url: str  # its agent's `GET /lease`; empty when it has no address this host could reach


@dataclass(frozen=True)
class PeerAnswer:
    host: str
    lease_valid: bool
    cp_reachable: bool
    cp_reachable_for: float = 0.0  # seconds it has had every heartbeat answered


AskPeers = Callable[[list[Peer]], list[PeerAnswer | None]]
Verdict = Literal["fence", "serve", "wait"]


def decide(answers: list[PeerAnswer | None]) -> Verdict:
    """What a host whose lease ran out does, from its peers' answers (None: no answer)."""
    got = [a for a in answers if a is not None]
    if any(not a.cp_reachable for a in got):
        return "serve"  # the control plane is down for that peer too: nobody can take over
    if any(a.cp_reachable_for < PEER_STABLE for a in got):
        return "wait"
    return "fence"  # nobody answers, or everybody who does has long reached the control plane


def _ask(peer: Peer) -> PeerAnswer | None:
    if not peer.url:
        return None
    try:
        data = httpx.get(peer.url, timeout=PEER_TIMEOUT).json()
        since = float(data.get("cp_reachable_for") or 0.0)
        return PeerAnswer(peer.host, bool(data["lease_valid"]), bool(data["cp_reachable"]), since)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def ask_peers(peers: list[Peer]) -> list[PeerAnswer | None]:
    """Every peer at once: the whole round takes one timeout."""
    with ThreadPoolExecutor(max_workers=min(16, len(peers) or 1)) as pool:
        return list(pool.map(_ask, peers))


class Lease:
    """This host's lease: renewed by heartbeat replies, checked by the watchdog (`run`, or `check` when stepped)."""

    def __init__(
        self,
        host: str,
        lease_s: float,
        clock: Clock,
        on_fence: Callable[[str], None],
        on_held: Callable[[], None],
        ask: AskPeers = ask_peers,
    ) -> None:
        self.host = host
        self.lease_s = lease_s
        self.clock = clock
        self.on_fence = on_fence  # stops the HA instances, given why
        self.on_held = on_held  # HA instances may start again
        self.ask = ask
        self.incarnation = secrets.token_hex(8)  # a new one per process, and after the control plane fenced us
        self.expires: float | None = None  # on self.clock; None until the first renewal
        self.peers: list[Peer] = []
        self._replied_at: float | None = None  # the last heartbeat reply (a partitioned beat hangs until timeout)
        self._reachable_since: float | None = None  # the first reply after the control plane was last lost
        self.fenced = False
        self._resync_after: float | None = None  # HA starts wait for a catch-up begun after this renewal
        # a new agent (the host may have been powered off, and its HA instances started elsewhere meanwhile)
        # starts none that is down before its first renewal and a catch-up begun after it; those running go on
        self._first_renewal: float | None = None
        self._started_once = False
        self._serving_alone = False  # logged once per outage
        self._lock = threading.Lock()

    def valid(self) -> bool:
        return self.expires is not None and self.clock.now() < self.expires

    @property
    def cp_reachable(self) -> bool:
        return self._replied_at is not None and self.clock.now() - self._replied_at < REPLY_FRESH

    def holds(self) -> bool:
        """Whether HA instances may run here."""
        return not self.fenced and self._resync_after is None

    def may_start(self) -> bool:
        """Whether an HA instance that is down may be started here."""
        return self.holds() and self._started_once

    def answer(self) -> dict[str, Any]:
        """What `GET /lease` tells a peer."""
        reachable = self.cp_reachable
        since = self.clock.now() - self._reachable_since if reachable and self._reachable_since is not None else 0.0
        return {
            "host": self.host,
            "lease_valid": self.valid(),
            "cp_reachable": reachable,
            "cp_reachable_for": round(since, 3),
        }

    # the heartbeat thread
    def renewed(self, sent_at: float, reply: dict[str, Any]) -> None:
        lease = reply.get("lease")
        if not self.cp_reachable:
            self._reachable_since = self.clock.now()
        self._replied_at = self.clock.now()
        if not isinstance(lease, dict):
            self._revoked(str(reply.get("revoked") or "fenced"))
            return
        with self._lock:
            self.expires = sent_at + min(self.lease_s, float(lease.get("valid_for") or self.lease_s))
            self.peers = [Peer(str(p["host"]), str(p.get("url") or "")) for p in lease.get("peers") or []]
            self._serving_alone = False
            if self._first_renewal is None:
                self._first_renewal = self.clock.now()
            if self.fenced:
                self.fenced = False
                self._resync_after = self.clock.now()
                log.info("lease renewed; HA instances start again once the records are caught up")

    def unreachable(self) -> None:
        self._replied_at = None

    def _revoked(self, why: str) -> None:
        log.warning("the control plane has host %s as %s: stopping its HA instances, rejoining afresh", self.host, why)
        self._fence(f"the control plane marked host {self.host} {why}")
        with self._lock:
            self.incarnation = secrets.token_hex(8)
            self.expires = None

    # the watch thread
    def caught_up(self, started: float) -> None:
        """A catch-up that began at `started` (self.clock) completed."""
        with self._lock:
            ready = self._resync_after is not None and started >= self._resync_after and not self.fenced
            if ready:
                self._resync_after = None
            first = (
                not self._started_once
                and self._resync_after is None
                and not self.fenced
                and self._first_renewal is not None
                and started >= self._first_renewal
            )
            if first:
                self._started_once = True
        if ready or first:
            self.on_held()

    # the watchdog
    def check(self) -> None:
        """Acts on a lease that ran out (nothing before the first renewal: the peers are not known yet)."""
        if self.fenced or self.expires is None or self.valid():
            return
        if not self.peers:
            if not self._serving_alone:
                log.warning("lease ran out; no peer host (single-host cloud): serving on, nobody could take over")
                self._serving_alone = True
            return
        answers = self.ask(self.peers)
        if self.valid():
            return  # renewed while the peers were asked
        verdict = decide(answers)
        if verdict == "fence":
            heard = sorted(a.host for a in answers if a is not None)
            why = f"peers {', '.join(heard)} reach the control plane" if heard else "no peer answers"
            self._fence(f"lease ran out and {why}")
        elif verdict == "serve" and not self._serving_alone:
            down = sorted(a.host for a in answers if a is not None and not a.cp_reachable)
            log.warning("lease ran out but %s cannot reach the control plane either: serving on", ", ".join(down))
            self._serving_alone = True

    def _fence(self, reason: str) -> None:
        with self._lock:
            self.fenced = True
        log.warning("self-fencing host %s: %s", self.host, reason)
        self.on_fence(reason)

    def run(self, stop: threading.Event) -> None:
        """The watchdog thread: wakes when the lease runs out, then every CHECK_EVERY."""
        while True:
            wait = CHECK_EVERY
            if self.expires is not None and not self.fenced:
                wait = min(CHECK_EVERY, max(0.0, self.expires - self.clock.now()))
            if stop.wait(wait):
                return
            try:
                self.check()
            except Exception as exc:  # the next round tries again
                log.warning("lease check failed: %s", exc)


def self_fence(ctx: HostContext, reason: str) -> list[str]:
    """Stops (SIGKILL) every HA-managed instance of this host and records it stopped; returns their names."""
    stopped = []
    for res in ctx.store.list(INSTANCE, host=ctx.host):
        if res.deleting or not InstanceSpec.of(res).ha:
            continue
        if ctx.compute.get_instance(res.id).state in (
            InstanceState.RUNNING,
            InstanceState.STARTING,
            InstanceState.PAUSED,
        ):
            ctx.compute.stop_instance(res.id, timeout=0)
            stopped.append(res.name)
            ctx.store.add_event(res, "SelfFenced", f"stopped: {reason}", "Warning")
        set_state(ctx.store, res, "stopped", pid=None, message=FENCED_MESSAGE)
        ctx.manager.enqueue(INSTANCE, res.id)  # the runtime keeps it down (ha_allowed) and notices a late start
    return stopped


_LEASES: dict[str, Lease] = {}  # host -> its agent's lease (simulations run many agents in one process)


def install(lease: Lease) -> None:
    _LEASES[lease.host] = lease


def ha_allowed(host: str) -> bool:
    """Whether an HA-managed instance may run on host (no lease installed: nothing forbids it)."""
    lease = _LEASES.get(host)
    return lease is None or lease.holds()


def ha_may_start(host: str) -> bool:
    """Whether the runtime may start an HA-managed instance that is down on host."""
    lease = _LEASES.get(host)
    return lease is None or lease.may_start()
