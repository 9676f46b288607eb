"""The host agent: everything host-local (runtime, plumbing, pool, DNS, restart policy) for one host.

It lists and then watches the records of its host, keeps them on local disk, runs the host-local reconcilers
over that cache and sends their writes back (see cache.py). With the control plane gone it goes on from the
cache: instances keep running and resolving names, and crashed ones restart per their policy. Threaded with the
real clock (`start`), or stepped by a simulation on a virtual clock (`sync` and the manager's `run_ready`).

The control plane reaches it for what only the host can do (exec, console, stats, pool reports, repair,
image imports): the methods below, over HTTP (server.py) or in-process.
"""

from __future__ import annotations

__all__ = ["Agent", "VERSION"]

import dataclasses
import json
import logging
import secrets
import threading
from pathlib import Path
from typing import Any

from cloudlet import __version__, repair
from cloudlet.agent.cache import RecordCache
from cloudlet.agent.transport import ControlPlane
from cloudlet.chaos import faults
from cloudlet.compute import images
from cloudlet.compute.drivers.base import ComputeDriver
from cloudlet.compute.hosts import AGENT_KINDS, SCOPED_KINDS
from cloudlet.compute.instances import KIND as INSTANCE
from cloudlet.compute.instances import set_state
from cloudlet.compute.resource import InstanceSpec, InstanceStatus
from cloudlet.core.clock import Clock
from cloudlet.core.config import SCOPED_VIEW, Config
from cloudlet.core.context import HostContext
from cloudlet.core.errors import CloudletError, NotFound
from cloudlet.core.reconcile import Manager
from cloudlet.core.records import Resource
from cloudlet.domains import DOMAINS
from cloudlet.lb.loadbalancers import stop_all as stop_load_balancers
from cloudlet.network.drivers.base import NetworkDriver
from cloudlet.resilience import lease
from cloudlet.storage import usage
from cloudlet.storage.names import volume_name
from cloudlet.storage.pools.base import StoragePool

log = logging.getLogger("cloudlet.agent")
VERSION = __version__
KINDS = list(AGENT_KINDS)
BATCH = 0.01  # seconds the outbox waits to gather writes into one request
# one request's share of the outbox: the API bounds request bodies (and the ops of one request)
PUSH_BYTES, PUSH_OPS = 256 * 1024, 1000
# the host's CPU pressure, for placement's pressure weight: the unified hierarchy's root group (this host's
# hybrid layout), else the kernel's system-wide file
PSI_FILES = (Path("/sys/fs/cgroup/unified/cpu.pressure"), Path("/proc/pressure/cpu"))


def cpu_pressure() -> float:
    """PSI "some avg10": the share (%) of the last 10 s in which a runnable task waited for a CPU; 0 if unknown."""
    for path in PSI_FILES:
        try:
            line = path.read_text().splitlines()[0]  # some avg10=0.00 avg60=0.00 avg300=0.00 total=0
            return min(100.0, max(0.0, float(line.split()[1].partition("=")[2])))
        except (OSError, IndexError, ValueError):
            continue
    return 0.0


class Agent:
    def __init__(
        self,
        config: Config,
        cp: ControlPlane,
        host: str,
        zone: str,
        clock: Clock,
        compute: ComputeDriver,
        net: NetworkDriver,
        pool: StoragePool,
        state_dir: Path | None = None,
        capacity: tuple[int, int] = (1, 1024),
    ) -> None:
        self.cp = cp
        self.capacity = capacity
        self.cache = RecordCache(state_dir / "cache.json" if state_dir else None)
        self.manager = Manager(self.cache, clock)
        self.ctx = HostContext(config, self.cache, compute, net, pool, clock, self.manager, host, zone)
        self.key = secrets.token_urlsafe(24)  # what the control plane must show to call this agent
        self.endpoint = ""
        self.dns_port: int | None = None
        self.connected = False
        self._stop = threading.Event()
        self._beat_lock = threading.Lock()
        for domain in DOMAINS:
            for make in domain.agent:
                self.manager.register(make(self.ctx))
        compute.watch(lambda iid: self.manager.enqueue(INSTANCE, iid))
        # renewed by heartbeats; when it runs out and this host is the one cut off, HA instances stop here
        self.lease = lease.Lease(host, config.lease_s, clock, self._self_fence, self._ha_allowed_again)
        lease.install(self.lease)

    @property
    def host(self) -> str:
        return self.ctx.host

    # talking to the control plane
    def heartbeat(self) -> None:
        """One heartbeat: renews (or loses) the lease; raises Unreachable when the control plane does not answer."""
        cpus, memory = self.capacity
        with self._beat_lock:
            if self._stop.is_set():
                return  # shutting down: the last beat said so
            sent = self.ctx.clock.now()  # the lease runs from the send: the agent trusts only its own clock
            try:
                reply = self._beat(cpus, memory)
            except CloudletError:
                self.lease.unreachable()
                raise
        self.lease.renewed(sent, reply)

    def _beat(self, cpus: int, memory: int, stopping: bool = False) -> dict[str, Any]:
        return self.cp.heartbeat(
            self.host,
            {
                "zone": self.ctx.zone,
                "cpus": cpus,
                "memory_mib": memory,
                "version": VERSION,
                "endpoint": self.endpoint,
                "key": self.key,
                "dns_port": self.dns_port,
                # fake hosts (simulation) share this machine's CPU: its pressure says nothing of theirs
                "pressure": 0.0 if self.ctx.config.compute_driver == "fake" else cpu_pressure(),
                "incarnation": self.lease.incarnation,
                "replied": self.lease.cp_reachable,
                "stopping": stopping,
                "images": images.held_digests(self.ctx, self.cache.list(images.KIND)),
            },
        )

    def _self_fence(self, reason: str) -> None:
        stopped = lease.self_fence(self.ctx, reason)
        log.warning("self-fenced: stopped %d HA instances (%s)", len(stopped), ", ".join(stopped) or "none running")

    def _ha_allowed_again(self) -> None:
        for res in self.cache.list(INSTANCE, host=self.host):
            if InstanceSpec.of(res).ha:
                self.manager.enqueue(INSTANCE, res.id)

    def flush(self) -> None:
        """Sends the outbox, a bounded batch a request; raises Unreachable (and keeps what is left) when the
        control plane does not answer."""
        while ops := self.cache.pending_ops():
            size, count = 0, 0
            for op in ops[:PUSH_OPS]:
                size += len(json.dumps(op, default=str))
                if count and size > PUSH_BYTES:
                    break
                count += 1
            applied = self.cp.push(ops[:count])
            self.cache.acknowledge(applied)
            if applied < ops[count - 1]["seq"]:
                return  # not all taken: the rest waits for the next flush rather than being resent at once

    def catch_up(self, timeout: float = 0.0) -> int:
        """Takes in what changed (a full listing the first time), waiting up to timeout for a change; returns
        the revision the cache is now at."""
        started = self.ctx.clock.now()
        scoped = self.ctx.config.agent_view == SCOPED_VIEW
        if not self.cache.listed or scoped != (self.cache.scope is not None):  # first, or the view was changed
            scope = self.cache.tenants_on(self.host) if scoped else None
            records, rev = self.cp.list(KINDS, scope)
            self.cache.replace_all(records, rev, scope)
        else:
            changes, rev = self.cp.watch(self.cache.rev, KINDS, timeout, self.cache.scope)
            self.cache.apply(changes, rev)
        if scoped:
            self._rescope()
        self.lease.caught_up(started)  # after a lost lease, HA instances wait for records this fresh
        return rev

    def _rescope(self) -> None:
        """A scoped view follows the tenants this host runs something for: a tenant's first record here brings in
        its shared records (listed), its last one going lets go of them."""
        want, have = self.cache.tenants_on(self.host), self.cache.scope or frozenset()
        if want - have:
            records, _ = self.cp.list(list(SCOPED_KINDS), want - have)
            self.cache.widen(want - have, records)
        if have - want:
            self.cache.narrow(have - want, self.host, SCOPED_KINDS)

    def sync(self) -> None:
        """One stepped round: send what we did, then take in what changed."""
        self.flush()
        self.catch_up()

    # threaded mode
    def start(self) -> None:
        resumed = self.cache.load()
        log.info("agent %s starting (%s)", self.host, "resuming from its disk cache" if resumed else "no cache yet")
        self.ctx.pool.setup()
        try:
            self.heartbeat()
            self.sync()  # catch up before acting on a cache that may be old
            self.connected = True
        except CloudletError as exc:
            log.warning("control plane not reachable at start (%s); serving from the cache", exc)
        self.manager.start()
        for name, target in (
            ("watch", self._watch_loop),
            ("outbox", self._outbox_loop),
            ("heartbeat", self._heartbeat_loop),
            ("lease", lambda: self.lease.run(self._stop)),
        ):
            threading.Thread(target=target, name=f"agent-{name}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with self.cache.outbox_ready:
            self.cache.outbox_ready.notify_all()
        self.manager.stop()
        self.cache.save()

    def _watch_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                rev = self.catch_up(timeout=20.0)  # the outbox thread sends; this one only receives
                if not self.connected:
                    log.info("control plane reachable; in sync at revision %d", rev)
                self.connected, backoff = True, 0.1
            except CloudletError as exc:
                if self.connected:
                    log.warning("lost the control plane (%s); serving from the cache", exc)
                self.connected = False
                self._stop.wait(backoff)
                backoff = min(2.0, backoff * 2)

    def _outbox_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            with self.cache.outbox_ready:
                if not self.cache.pending_ops():
                    self.cache.outbox_ready.wait(1.0)
            self._stop.wait(BATCH)  # let a reconcile pass finish its writes: one request for all of them
            try:
                self.flush()
                backoff = 0.1
            except CloudletError:
                self.cache.save()  # what we did while alone must survive our own restart too
                self._stop.wait(backoff)
                backoff = min(2.0, backoff * 2)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.cache.save()
            try:
                self.heartbeat()
            except CloudletError:
                pass  # the watch loop reports the outage

    # what the control plane asks of this host
    def _record(self, iid: str) -> Resource:
        res = self.cache.get_by_id(iid)
        if res is None or res.host != self.host:
            raise NotFound(f"instance {iid} is not on host {self.host}")
        return res

    def _instance(self, iid: str) -> str:
        return self._record(iid).id

    def exec_instance(self, iid: str, argv: list[str], timeout: float) -> dict[str, Any]:
        result = self.ctx.compute.exec_instance(self._instance(iid), argv, timeout, self.ctx.config.exec_output_bytes)
        return dataclasses.asdict(result)

    def console_log(self, iid: str, offset: int | None, limit: int) -> dict[str, Any]:
        return dataclasses.asdict(self.ctx.compute.console_log(self._instance(iid), offset, limit))

    def stats(self, iid: str) -> dict[str, Any]:
        return self.ctx.compute.stats(self._instance(iid))

    def chaos_instance(self, iid: str, fault: dict[str, Any]) -> dict[str, Any]:
        return faults.inject(self.ctx, self._record(iid), faults.FaultRequest.model_validate(fault))

    def volume_usage(self, vid: str) -> dict[str, int]:
        res = self.cache.get_by_id(vid)
        if res is None or res.host != self.host:
            raise NotFound(f"volume {vid} is not on host {self.host}")
        used = self.ctx.pool.usage(volume_name(vid))
        return {"logical_bytes": used.logical_bytes, "exclusive_bytes": used.exclusive_bytes}

    def storage_report(self) -> dict[str, Any]:
        return usage.usage_report(self.ctx)

    def garbage(self, collect: bool) -> list[dict[str, Any]]:
        return usage.collect(self.ctx) if collect else usage.garbage(self.ctx)

    def repair(self, fix: bool) -> dict[str, Any]:
        findings = repair.scan(self.ctx)
        actions = repair.fix(self.ctx, findings) if fix else []
        return {"findings": [f.as_dict() for f in findings], "actions": actions}

    def import_image(self, digest: str, tarball: Path) -> None:
        images.unpack_import(self.ctx, digest, tarball)

    def shutdown_host(self, purge: bool) -> None:
        """`cloudlet down`: stop every instance (recording it, so the next start brings them back) and release
        host resources; with purge, remove every artefact of this cloud on this host."""
        self._stop.set()
        with self._beat_lock:  # after any beat in flight: the host is down, not silent (nothing to fence)
            try:
                self._beat(*self.capacity, stopping=True)
            except CloudletError as exc:
                log.warning("could not tell the control plane that this host is going down (%s)", exc)
        self.manager.stop()  # nothing may restart what is being stopped
        compute = self.ctx.compute
        if purge:
            compute.teardown()
        else:
            for res in self.cache.list(INSTANCE, host=self.host):
                if InstanceStatus.of(res).state in ("running", "starting"):
                    set_state(self.cache, res, "stopped", run_nonce=None, pid=None, message="host shut down")
            compute.shutdown()
        stop_load_balancers(self.ctx, purge)  # before their netns go
        self.ctx.net.teardown()
        self.ctx.pool.teardown(purge)
        try:
            self.flush()
        except CloudletError as exc:
            log.warning("could not report the shutdown to the control plane (%s); it is kept for next time", exc)
        self.cache.save()
