"""The agent's half of the Instance kind: make each instance placed on this host real, and keep it so.

Level-triggered: it compares spec with what the driver reports and takes the next step, so a crash (of the
instance, the agent or the control plane) at any point is healed by running it again. It needs only the
agent's cached records, so restart policy keeps working while cloudletd is down.
"""

from __future__ import annotations

__all__ = ["InstanceReconciler"]

import dataclasses
import ipaddress
import time
from dataclasses import dataclass

from cloudlet.compute.drivers.base import InstanceInfo, InstanceState, LaunchSpec
from cloudlet.compute.images import volume_of
from cloudlet.compute.instances import KIND, set_state
from cloudlet.core.context import HostContext
from cloudlet.core.errors import TerminalError
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import Resource
from cloudlet.network.dns import DOMAIN, dns_name
from cloudlet.network.drivers.base import PortSpec
from cloudlet.storage.names import disk_of, snapshot_name, volume_name
from cloudlet.storage.volumes import attached_to


@dataclass(frozen=True)
class _Plan:
    """What one reconcile pass resolved for a running instance, handed to every step that starts it."""

    launch: LaunchSpec
    net: Resource
    ip: str
    fqdn: str
    disk_source: str  # the pool volume its root disk is cloned from


class InstanceReconciler(KindReconciler):
    kind = KIND

    def __init__(self, ctx: HostContext) -> None:
        super().__init__(ctx.store)
        self.ctx = ctx
        self.watches = {"Network": self._users_of("network_id"), "Image": self._users_of("image_id"),
                        "Volume": self._attached_instance}

    def _users_of(self, field: str):  # type: ignore[no-untyped-def]
        """A network or image becoming ready wakes the instances here that wait for it."""
        def mapper(dep: Resource) -> list[str]:
            return [i.id for i in self.records.list(KIND) if i.spec.get(field) == dep.id and self.serves(i)]
        return mapper

    @staticmethod
    def _attached_instance(vol: Resource) -> list[str]:
        """A volume becoming ready wakes the instance that waits to boot with it."""
        return [str(vol.spec["attachment"]["instance_id"])] if vol.spec.get("attachment") else []

    def serves(self, res: Resource) -> bool:
        return res.host == self.ctx.host

    def converge(self, res: Resource) -> Result:
        records = self.records
        net = records.get_by_id(res.spec["network_id"])
        if net is None or net.deleting:
            set_state(records, res, "failed", message=f"network {res.spec['network']} no longer exists")
            raise TerminalError(f"network of instance {res.name} is gone")
        image = records.get_by_id(res.spec["image_id"])
        if image is None or image.phase != "ready":
            set_state(records, res, "pending", message=f"waiting for image {res.spec['image']}")
            return Result()  # the image's watch wakes us
        waiting = [v.name for v in attached_to(self.ctx, res) if v.phase != "ready"]
        if waiting and res.status.get("run_nonce") is None:
            set_state(records, res, "pending", message=f"waiting for volumes {', '.join(waiting)}")
            return Result()  # the volumes' watch wakes us
        info = self.ctx.compute.get_instance(res.id)
        if res.spec["state"] == "stopped":
            return self._converge_stopped(res, info.state)
        ip = res.status.get("ip")
        if not ip:
            raise TerminalError(f"instance {res.name} was placed without an address")
        return self._converge_running(res, self._plan(res, net, image, str(ip)), info)

    def _plan(self, res: Resource, net: Resource, image: Resource, ip: str) -> _Plan:
        zone = res.zone or self.ctx.zone
        fqdn = dns_name(res.name, net.name, zone)
        snapshot = res.spec.get("from_snapshot_id")
        pool = self.ctx.pool
        launch = LaunchSpec(
            id=res.id, hostname=res.name, rootfs=pool.path(disk_of(res.id)),
            command=res.spec.get("command") or image.spec["command"],
            cpus=float(res.spec["cpus"]), memory_mib=int(res.spec["memory_mib"]), netns="",
            hosts=f"127.0.0.1\tlocalhost\n{ip}\t{fqdn} {res.name}\n",
            resolv_conf=(f"nameserver {net.spec['gateway']}\nsearch {net.name}.{zone}.{DOMAIN}\n"
                         "options timeout:1 attempts:2\n"),
            host=self.ctx.host,
            mounts=tuple((str(pool.path(volume_name(v.id))), v.spec["attachment"]["path"])
                         for v in attached_to(self.ctx, res)),
        )
        return _Plan(launch, net, ip, fqdn, snapshot_name(snapshot) if snapshot else volume_of(image))

    def _start(self, res: Resource, plan: _Plan, fresh: bool) -> InstanceInfo:
        self.ctx.pool.snapshot(plan.disk_source, disk_of(res.id), readonly=False)
        net = plan.net
        prefix = ipaddress.ip_network(net.spec["subnet"]).prefixlen
        netns = self.ctx.net.ensure_port(PortSpec(res.id, net.id, plan.ip, prefix, net.spec["gateway"]))
        launch = dataclasses.replace(plan.launch, netns=netns)
        if fresh:
            return self.ctx.compute.create_instance(launch)
        return self.ctx.compute.start_instance(launch)

    def _converge_running(self, res: Resource, plan: _Plan, observed: InstanceInfo) -> Result:
        records, st, state, ip = self.records, res.status, observed.state, plan.ip
        compute = self.ctx.compute
        nonce = int(res.spec.get("run_nonce", 1))
        done = st.get("run_nonce")
        restarts = int(st.get("restarts", 0))
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
        elif done == nonce and st.get("state") in ("running", "starting"):
            records.add_event(res, "Exited", "instance init exited unexpectedly", "Warning")
            if res.spec["restart"] != "always":
                set_state(records, res, "exited", pid=None, message="init exited; restart policy is never")
                return Result()
            info = self._start(res, plan, fresh=False)
            restarts += 1
            records.add_event(res, "Restarted", f"restart policy always (restart #{restarts})")
        elif done == nonce and st.get("state") == "exited":
            return Result()
        else:
            info = self._start(res, plan, fresh=False)
            records.add_event(res, "Started", f"instance running with address {ip}")
        if info.state == InstanceState.STARTING:
            set_state(records, res, "starting", run_nonce=nonce, restarts=restarts)
            return Result(requeue_after=max(0.01, float(info.extra.get("ready_at", 0)) - self.ctx.clock.now()))
        if info.state != InstanceState.RUNNING:
            set_state(records, res, "starting", run_nonce=nonce, restarts=restarts, message="init exited at start")
            raise RuntimeError(f"instance {res.name} did not stay running")
        set_state(records, res, "running", pid=info.pid, run_nonce=nonce, restarts=restarts, dns_name=plan.fqdn,
                  message="", started_at=st.get("started_at") if st.get("state") == "running" else time.time())
        return Result()

    def _converge_stopped(self, res: Resource, state: InstanceState) -> Result:
        if state in (InstanceState.RUNNING, InstanceState.STARTING, InstanceState.PAUSED):
            self.ctx.compute.stop_instance(res.id)
            self.records.add_event(res, "Stopped", "instance stopped")
        set_state(self.records, res, "stopped", pid=None, message="")
        return Result()

    def cleanup(self, res: Resource) -> None:
        self.forget(res.id)

    def forget(self, rid: str) -> None:
        """Also for a record purged while this agent was not looking (it restarted from an older cache and
        brought the instance back before catching up): what is named after a gone instance goes."""
        self.ctx.compute.delete_instance(rid)
        self.ctx.net.delete_port(rid)
        self.ctx.pool.delete(disk_of(rid))
