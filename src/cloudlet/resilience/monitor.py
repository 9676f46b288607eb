"""The control plane's host monitor: failure detection and fencing (issue 10).

A host's phase, written here and by its heartbeats (compute/hosts.py):

    up ──silent SUSPECT_S──▶ suspect ──the fence driver saw every process gone──▶ fenced
     ▲                          │
     │                          └──T + margin since the last renewal, its peers all hold leases──▶ lease-expired
     └── heartbeat: from suspect any; from fenced or lease-expired only a new incarnation of the agent

Silence is counted on the control plane's clock from the last renewal or from this monitor's own start (the
first renewal it saw: the API serves by then), whichever is later: after a restart of cloudletd nothing is
suspected before its agents had SUSPECT_S to heartbeat, and nothing is lease-expired before T + margin (an agent
cut off meanwhile has self-fenced by then).

Lease-expired means the host's agent has stopped its HA instances by contract (resilience/lease.py): it does
so when its lease ran out and no peer told it that the control plane was down for everybody. The monitor
therefore expires a host only if it had peers to ask (a single-host cloud never self-fences) and each of them
is fenced or has been up, renewing with every reply reaching it, long enough for the host's last checks to have
heard so (PEER_WINDOW). A peer that is itself silent might have answered "the control plane is down here too",
so it holds the expiry back: fencing (or that peer coming back) resolves it. When every host of a cloud of
several falls silent at once, the monitor suspects none: this control plane is more likely stalled or cut off than
all of them gone (and there would be nowhere to recover to).

`may_start_elsewhere` is what recovery asks before it starts a copy of anything the host ran.
"""

from __future__ import annotations

__all__ = ["MONITOR", "PERIOD", "HostMonitor", "may_start_elsewhere", "peer_window"]

import logging
import math
import time

from cloudlet.compute.hosts import FENCED, LEASE_EXPIRED, SUSPECT, UP, host_lock
from cloudlet.compute.resource import HOST, HostStatus
from cloudlet.core.config import Config
from cloudlet.core.context import SYSTEM_TENANT, Cloud
from cloudlet.core.errors import CloudletError, NotSupported
from cloudlet.core.reconcile import Result
from cloudlet.core.records import Resource
from cloudlet.core.store import Store
from cloudlet.resilience.fence import FenceDriver, make_fence
from cloudlet.resilience.lease import CHECK_EVERY, PEER_STABLE, PEER_TIMEOUT

log = logging.getLogger("cloudlet.monitor")
MONITOR = "HostMonitor"  # the work queue's kind for this controller's keys (a Host's id)
PERIOD = 0.5  # seconds between looks at a suspected host
BEAT = 1.0  # agents heartbeat this often


def peer_window(config: Config) -> float:
    """How long a peer must have been up before a host's silence is taken as its self-fence: the host's
    watchdog waits until the peer has been in touch PEER_STABLE, asks every CHECK_EVERY (PEER_TIMEOUT per round),
    and a peer's heartbeat reports a lost reply one beat late."""
    return PEER_STABLE + CHECK_EVERY + PEER_TIMEOUT + BEAT + config.lease_margin_s


def may_start_elsewhere(store: Store, host_name: str, now: float) -> bool:
    """Whether anything host_name ran may be started on another host: only once it is fenced, or its lease
    expired T + margin after its last renewal (now: the control plane's clock, `cloud.clock.now()`)."""
    res = store.cached(HOST).get(SYSTEM_TENANT, host_name)
    if res is None:
        return False
    if res.phase == FENCED:
        return True
    lease_until = HostStatus.of(res).lease_until
    return res.phase == LEASE_EXPIRED and (lease_until is None or now >= lease_until)


class HostMonitor:
    kind = MONITOR

    def __init__(self, cloud: Cloud, fence: FenceDriver | None = None) -> None:
        self.store = cloud.store
        self.clock = cloud.clock
        self.config = cloud.config
        self.fence = fence or make_fence(cloud.config)
        self.started = self.clock.now()
        self._origin: float | None = None
        self._all_quiet = False
        self.watches = {HOST: lambda res: [res.id]}  # every heartbeat and phase change looks again
        self._fence_errors: dict[str, str] = {}  # host id -> the last fence error (told once per suspicion)
        self._unfenceable: set[str] = set()  # hosts the driver refused this suspicion (local, none)
        for res in self.store.list(HOST, tenant=SYSTEM_TENANT):
            cloud.manager.enqueue(MONITOR, res.id)  # a host that never beats again must be looked at too

    def origin(self, now: float) -> float | None:
        """Since when agents could reach this cloudletd: its first renewal after the monitor's start (its API
        serves by then; starting the process took a while), or its start once lease_s passed without any."""
        if self._origin is None:
            renewals = [
                r
                for h in self.store.cached(HOST).list(SYSTEM_TENANT)
                if (r := HostStatus.of(h).renewed_at) is not None and self.started <= r <= now
            ]
            if renewals:
                self._origin = min(renewals)
            elif now - self.started >= self.config.lease_s:
                self._origin = self.started
        return self._origin

    def silence(self, res: Resource, now: float) -> float:
        origin = self.origin(now)
        if origin is None:
            return 0.0  # nobody got through yet: this cloudletd may not be serving
        renewed = HostStatus.of(res).renewed_at
        if renewed is None or renewed > now:  # never renewed, or on another boot's clock
            return now - origin
        return now - max(renewed, origin)

    def reconcile(self, rid: str) -> Result:
        res = self.store.cached(HOST).get_by_id(rid)  # at every heartbeat; a phase change reads it afresh
        if res is None or res.deleting or res.phase not in (UP, SUSPECT):
            self._forget(rid)
            return Result()  # fenced and lease-expired wait for a new incarnation; joining for its first beat
        suspect_s = self.config.suspect_s
        if math.isinf(suspect_s):
            return Result()  # failure detection off (a simulation whose hosts do not heartbeat)
        now = self.clock.now()
        silent = self.silence(res, now)
        if silent < suspect_s:  # also a host left suspect by the last run of cloudletd: its grace first
            if res.phase == UP:
                self._forget(rid)
            return Result(requeue_after=suspect_s - silent)
        if self._all_silent(res, now):
            return Result(requeue_after=PERIOD)
        if res.phase == UP:
            res = self._move(res, UP, SUSPECT, "HostSuspect", f"host {res.name} silent for {silent:.1f} s", "Warning")
            if res is None:
                return Result()
        if self._try_fence(res, silent):
            return Result()
        if self._expirable(res, now, silent):
            message = (
                f"host {res.name} silent for {silent:.1f} s: its lease ({self.config.lease_s:g} s) ran out, "
                "its agent has stopped its HA instances"
            )
            self._move(res, SUSPECT, LEASE_EXPIRED, "LeaseExpired", message, "Warning")
            return Result()
        return Result(requeue_after=PERIOD)

    def _all_silent(self, res: Resource, now: float) -> bool:
        """Every host silent at once: more likely this control plane stalled or is cut off than all of them gone
        (and there would be nowhere to recover to): suspect nobody, and once beats get in again, count everybody's
        silence afresh, as after a restart. A single host is suspected on its own."""
        others = [
            h
            for h in self.store.cached(HOST).list(SYSTEM_TENANT)
            if h.id != res.id and not h.deleting and h.phase in (UP, SUSPECT)
        ]
        if others and all(self.silence(h, now) >= self.config.suspect_s for h in others):
            if not self._all_quiet:
                log.warning("no host heartbeats: suspecting none (is this control plane stalled or cut off?)")
                self._all_quiet = True
            return True
        if self._all_quiet:
            self._all_quiet = False
            self._origin = now
            return True
        return False

    def _try_fence(self, res: Resource, silent: float) -> bool:
        if res.id in self._unfenceable:
            return False  # the driver cannot fence this host: its lease decides
        with host_lock(res.name):  # no renewal lands while the host is being fenced
            current = self.store.get_by_id(res.id)
            if current is None or current.phase != SUSPECT:
                return True
            try:
                result = self.fence.fence(res.name)
            except CloudletError as exc:
                if isinstance(exc, NotSupported):
                    self._unfenceable.add(res.id)
                if self._fence_errors.get(res.id) != exc.message:
                    self._fence_errors[res.id] = exc.message
                    log.warning("fencing host %s failed: %s", res.name, exc.message)
                    self.store.add_event(res, "FenceFailed", exc.message, "Warning")
                return False
            message = (
                f"host {res.name} silent for {silent:.1f} s: fenced ({self.fence.name}) in "
                f"{result.took_s * 1000:.0f} ms, {result.killed} processes killed"
            )
            current = self._write(current, FENCED)
        self._forget(res.id)
        log.warning("%s", message)
        self.store.add_event(current, "HostFenced", message, "Warning")
        return True

    def _expirable(self, res: Resource, now: float, silent: float) -> bool:
        if silent < self.config.lease_s + self.config.lease_margin_s:
            return False
        peers = HostStatus.of(res).lease_peers
        if not peers:
            return False  # no peer to ask: its agent never self-fences
        window = peer_window(self.config)
        for name in peers:
            peer = self.store.cached(HOST).get(SYSTEM_TENANT, name)
            if peer is None or peer.phase == FENCED:
                continue  # nothing there to answer it
            up_since = HostStatus.of(peer).up_since
            if peer.phase != UP or up_since is None or now - up_since < window:
                return False
        return True

    def _move(self, res: Resource, old: str, new: str, reason: str, message: str, type_: str) -> Resource | None:
        """Writes the new phase unless a heartbeat changed the host meanwhile."""
        with host_lock(res.name):
            current = self.store.get_by_id(res.id)
            renewed = HostStatus.of(res).renewed_at
            if current is None or current.phase != old or HostStatus.of(current).renewed_at != renewed:
                return None
            current = self._write(current, new)
        log.warning("%s", message)
        self.store.add_event(current, reason, message, type_)
        return current

    def _forget(self, rid: str) -> None:
        self._fence_errors.pop(rid, None)
        self._unfenceable.discard(rid)

    def _write(self, res: Resource, phase: str) -> Resource:
        status = HostStatus.of(res)
        status.phase_since = time.time()
        return self.store.update_status(res.id, status=status.dump(), phase=phase)
