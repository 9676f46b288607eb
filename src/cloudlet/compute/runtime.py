"""The agent's half of the Instance kind: make each instance placed on this host real, and keep it so.

Level-triggered: it compares spec with what the driver reports and takes the next step, so a crash (of the
instance, the agent or the control plane) at any point is healed by running it again. It needs only the
agent's cached records, so restart policy keeps working while cloudletd is down.
"""

from __future__ import annotations

__all__ = ["InstanceReconciler"]

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.compute.drivers.base import InstanceInfo, InstanceState, LaunchSpec
from cloudlet.compute.images import volume_of
from cloudlet.compute.instances import KIND, set_state
from cloudlet.compute.resource import IMAGE, ImageSpec, InstanceSpec, InstanceStatus
from cloudlet.compute.seed import meta_data
from cloudlet.core.context import HostContext
from cloudlet.core.errors import DriverError, TerminalError
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import Resource
from cloudlet.network.dns import DOMAIN, dns_name
from cloudlet.network.drivers.base import PortSpec
from cloudlet.network.resource import NETWORK, NetworkSpec
from cloudlet.resilience import lease
from cloudlet.storage.names import disk_of, snapshot_name, volume_name
from cloudlet.storage.resource import VOLUME, VolumeSpec
from cloudlet.storage.shift import shifted
from cloudlet.storage.volumes import attached_to

log = logging.getLogger("cloudlet.runtime")


@dataclass(frozen=True)
class _Plan:
    """What one reconcile pass resolved for a running instance, handed to every step that starts it."""

    launch: LaunchSpec
    net: Resource
    ip: str
    fqdn: str
    disk_source: str  # the pool volume its root disk is cloned from
    disk_gib: int


QUICK_EXIT = 10.0  # an init that exits sooner than this after its start is crash-looping
MAX_BACKOFF = 30.0
CONSOLE_QUOTA = 128 << 20  # per tenant, for the console logs of all its instances on a host
ALIVE = (InstanceState.RUNNING, InstanceState.STARTING, InstanceState.PAUSED)  # what a fence or self-fence stops


class InstanceReconciler(KindReconciler):
    kind = KIND

    def __init__(self, ctx: HostContext) -> None:
        super().__init__(ctx.store)
        self.ctx = ctx
        self.watches = {
            NETWORK: self._users_of("network_id"),
            IMAGE: self._users_of("image_id"),
            VOLUME: self._attached_instance,
        }

    def _users_of(self, field: str) -> Callable[[Resource], list[str]]:
        """A network or image becoming ready wakes the instances here that wait for it."""

        def mapper(dep: Resource) -> list[str]:
            mine = self.records.list(KIND, host=self.ctx.host)  # what serves() takes: not every instance of the cloud
            return [i.id for i in mine if getattr(InstanceSpec.of(i), field) == dep.id]

        return mapper

    @staticmethod
    def _attached_instance(vol: Resource) -> list[str]:
        """A volume becoming ready wakes the instance that waits to boot with it."""
        attachment = VolumeSpec.of(vol).attachment
        return [attachment.instance_id] if attachment and attachment.instance_id else []

    def serves(self, res: Resource) -> bool:
        return res.host == self.ctx.host

    def converge(self, res: Resource) -> Result:
        records, spec, status = self.records, InstanceSpec.of(res), InstanceStatus.of(res)
        net = records.get_by_id(spec.network_id)
        if net is None or net.deleting:
            set_state(records, res, "failed", message=f"network {spec.network} no longer exists")
            raise TerminalError(f"network of instance {res.name} is gone")
        image = records.get_by_id(spec.image_id)
        if image is None or image.phase != "ready":
            set_state(records, res, "pending", message=f"waiting for image {spec.image}")
            return Result()  # the image's watch wakes us
        waiting = [v.name for v in attached_to(self.ctx, res) if v.phase != "ready"]
        if waiting and status.run_nonce is None:
            set_state(records, res, "pending", message=f"waiting for volumes {', '.join(waiting)}")
            return Result()  # the volumes' watch wakes us
        info = self.ctx.compute.get_instance(res.id)
        if spec.state == "stopped":
            return self._converge_stopped(res, info.state)
        if spec.ha and not lease.ha_allowed(self.ctx.host):
            return self._fenced(res, info.state)
        if spec.ha and info.state not in ALIVE and not lease.ha_may_start(self.ctx.host):
            # a new agent (after a power-off a copy may run elsewhere): the lease's first catch-up wakes it
            if status.message != lease.HELD_MESSAGE:
                set_state(records, res, "stopped", pid=None, message=lease.HELD_MESSAGE)
            return Result()
        if not status.ip:
            raise TerminalError(f"instance {res.name} was placed without an address")
        try:
            return self._converge_running(res, self._plan(res, spec, net, image, status.ip), info)
        except DriverError as exc:  # shown once (state, message, event); retried with backoff
            if status.message != exc.message:
                set_state(records, res, "error", pid=None, message=exc.message)
                records.add_event(res, "StartFailed", exc.message, "Warning")
            raise

    def _plan(self, res: Resource, spec: InstanceSpec, net: Resource, image: Resource, ip: str) -> _Plan:
        zone = res.zone or self.ctx.zone
        fqdn = dns_name(res.name, net.name, zone)
        gateway = NetworkSpec.of(net).gateway
        launch = LaunchSpec(
            id=res.id,
            hostname=res.name,
            rootfs=self.ctx.pool.path(disk_of(res.id)),
            command=spec.command or ImageSpec.of(image).command,
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            netns="",
            hosts=f"127.0.0.1\tlocalhost\n{ip}\t{fqdn} {res.name}\n",
            resolv_conf=(f"nameserver {gateway}\nsearch {net.name}.{zone}.{DOMAIN}\noptions timeout:1 attempts:2\n"),
            host=self.ctx.host,
            mounts=self._mounts(res),
            uid_base=spec.uid_base if self.ctx.compute.capabilities.real_processes else None,
            net_raw=spec.net_raw,
            meta_data=meta_data(res.id, fqdn),
            user_data=spec.user_data,
        )
        source = snapshot_name(spec.from_snapshot_id) if spec.from_snapshot_id else volume_of(image)
        return _Plan(launch, net, ip, fqdn, source, spec.disk_gib)

    def _mounts(self, res: Resource) -> tuple[tuple[str, str], ...]:
        """(pool path, path inside) of each volume attached to the instance, as the cache says now."""
        pool = self.ctx.pool
        return tuple(
            (str(pool.path(volume_name(vol.id))), attachment.path)
            for vol in attached_to(self.ctx, res)
            if (attachment := VolumeSpec.of(vol).attachment)
        )

    def _start(self, res: Resource, plan: _Plan, fresh: bool) -> InstanceInfo:
        base, pool, disk = plan.launch.uid_base, self.ctx.pool, disk_of(res.id)
        if pool.exists(disk) and InstanceStatus.of(res).disk_epoch != InstanceSpec.of(res).disk_epoch:
            pool.delete(disk)  # rebuilt: from its image or the snapshot its spec names now
            self.records.add_event(res, "Rebuilt", f"root disk cloned afresh from {plan.disk_source}")
        if not pool.exists(disk):
            # an instance snapshot is its tenant's disk, shifted already; an image is shifted once per tenant
            source = plan.disk_source
            if base is not None and source.startswith("images/"):
                source = shifted(pool, source, base)
            pool.snapshot(source, disk, readonly=False)
        if pool.capabilities.quotas:  # every start: a crash between the clone and its limit is healed
            pool.set_limit(disk, plan.disk_gib << 30)
        net = NetworkSpec.of(plan.net)
        port = PortSpec(res.id, plan.net.id, plan.ip, ipaddress.ip_network(net.subnet).prefixlen, net.gateway)

        def plumb(pid: int) -> None:  # the runtime makes the netns in the instance's user namespace
            self.ctx.net.ensure_port(port, pid)

        launch = dataclasses.replace(plan.launch, plumb=plumb, console=self._console(res, base))
        compute = self.ctx.compute
        info = compute.create_instance(launch) if fresh else compute.start_instance(launch)
        if info.state == InstanceState.RUNNING:
            # a volume attached while this start was under way (after its plan, before init ran) was left to
            # "the next start" by the attach, which saw no running instance: mount it now (attach is idempotent)
            for source, path in set(self._mounts(res)) - set(launch.mounts):
                compute.attach_volume(res.id, Path(source), path)
        return info

    def _console(self, res: Resource, base: int | None) -> Path | None:
        """Console logs of a tenant's instances share one size-limited volume: an instance printing without end
        fills that (its writes then fail until the log is rotated), never the host's disk."""
        pool = self.ctx.pool
        if base is None or not pool.capabilities.quotas:
            return None
        volume = f"consoles/{base}"
        if not pool.exists(volume):
            try:
                pool.create_volume(volume, CONSOLE_QUOTA)
            except DriverError:
                if not pool.exists(volume):  # else another instance's start made it first
                    raise
        return pool.path(volume) / f"{res.id}.log"

    def _converge_running(self, res: Resource, plan: _Plan, observed: InstanceInfo) -> Result:
        records, state, ip = self.records, observed.state, plan.ip
        spec, st = InstanceSpec.of(res), InstanceStatus.of(res)
        compute = self.ctx.compute
        nonce = spec.run_nonce
        done = st.run_nonce
        restarts, crash_loop = st.restarts, 0
        info = observed
        if state == InstanceState.RUNNING and done is not None and done != nonce:
            compute.stop_instance(res.id)
            info = self._start(res, plan, fresh=False)
            records.add_event(res, "Restarted", "instance restarted on request")
        elif state == InstanceState.RUNNING:
            if not self.ctx.net.port_exists(res.id):
                compute.stop_instance(res.id)
                info = self._start(res, plan, fresh=False)
                records.add_event(res, "Replumbed", "network namespace was missing; restarted", "Warning")
        elif state == InstanceState.MISSING:
            info = self._start(res, plan, fresh=True)
            records.add_event(res, "Started", f"instance running with address {ip}")
        elif done == nonce and st.state in ("running", "starting"):
            records.add_event(res, "Exited", "instance init exited unexpectedly", "Warning")
            if spec.restart != "always":
                set_state(records, res, "exited", pid=None, message="init exited; restart policy is never")
                return Result()
            quick = st.crash_loop + 1 if time.time() - (st.started_at or 0) < QUICK_EXIT else 0
            if quick >= 2:  # the first quick exit restarts at once; then 0.2 s, doubling, at most MAX_BACKOFF
                delay = min(MAX_BACKOFF, 0.2 * 2 ** (quick - 2))
                message = f"init exited {quick} times in a row within {QUICK_EXIT:g} s; restarting in {delay:g} s"
                set_state(
                    records,
                    res,
                    "backoff",
                    pid=None,
                    crash_loop=quick,
                    retry_at=self.ctx.clock.now() + delay,
                    message=message,
                )
                return Result(requeue_after=delay)
            info = self._start(res, plan, fresh=False)
            crash_loop = quick
            restarts += 1
            records.add_event(res, "Restarted", f"restart policy always (restart #{restarts})")
        elif done == nonce and st.state == "backoff":
            wait = (st.retry_at or 0) - self.ctx.clock.now()
            if wait > 0:
                return Result(requeue_after=wait)
            info = self._start(res, plan, fresh=False)
            crash_loop = st.crash_loop
            restarts += 1
            records.add_event(res, "Restarted", f"restart policy always (restart #{restarts})")
        elif done == nonce and st.state == "exited":
            return Result()
        else:
            info = self._start(res, plan, fresh=False)
            records.add_event(res, "Started", f"instance running with address {ip}")
        if info.state == InstanceState.STARTING:
            set_state(records, res, "starting", run_nonce=nonce, restarts=restarts, disk_epoch=spec.disk_epoch)
            return Result(requeue_after=max(0.01, float(info.extra.get("ready_at", 0)) - self.ctx.clock.now()))
        if info.state != InstanceState.RUNNING:
            set_state(
                records,
                res,
                "starting",
                run_nonce=nonce,
                restarts=restarts,
                message="init exited at start",
                disk_epoch=spec.disk_epoch,
            )
            raise RuntimeError(f"instance {res.name} did not stay running")
        if info is not observed and res.phase == "running":
            # a restart would keep the phase, and the agent's cache tells watchers only of phase changes: without
            # this the security-group plumber missed the new netns, which denied all ingress until its resync
            set_state(records, res, "starting", run_nonce=nonce, restarts=restarts, disk_epoch=spec.disk_epoch)
        set_state(
            records,
            res,
            "running",
            pid=info.pid,
            run_nonce=nonce,
            restarts=restarts,
            dns_name=plan.fqdn,
            message="",
            crash_loop=crash_loop,
            retry_at=None,
            started_at=st.started_at if info is observed and st.state == "running" else time.time(),
            disk_epoch=spec.disk_epoch,
        )
        return Result()

    def _converge_stopped(self, res: Resource, state: InstanceState) -> Result:
        if state in (InstanceState.RUNNING, InstanceState.STARTING, InstanceState.PAUSED):
            self.ctx.compute.stop_instance(res.id)
            self.records.add_event(res, "Stopped", "instance stopped")
        set_state(self.records, res, "stopped", pid=None, message="")
        return Result()

    def _fenced(self, res: Resource, state: InstanceState) -> Result:
        """This host lost its lease (resilience/lease.py): an HA instance stays down until it is renewed."""
        if state in ALIVE:
            self.ctx.compute.stop_instance(res.id, timeout=0)
            self.records.add_event(res, "SelfFenced", "stopped: this host holds no lease", "Warning")
        set_state(self.records, res, "stopped", pid=None, message=lease.FENCED_MESSAGE)
        return Result()

    def cleanup(self, res: Resource) -> None:
        self.forget(res.id)

    def let_go(self, res: Resource) -> None:
        if res.id in self.ctx.compute.list_instances() or self.ctx.net.port_exists(res.id):
            log.info("instance %s moved to host %s; removing what is left of it here", res.name, res.host)
            self.forget(res.id)

    def forget(self, rid: str) -> None:
        """Also for a record purged while this agent was not looking (it restarted from an older cache and
        brought the instance back before catching up): what is named after a gone instance goes."""
        self.ctx.compute.delete_instance(rid)
        self.ctx.net.delete_port(rid)
        self.ctx.pool.delete(disk_of(rid))
