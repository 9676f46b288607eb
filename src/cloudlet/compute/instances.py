"""Instance kind: spec, service functions for the API, and the reconciler that makes instances real.

Spec says what the user wants (image, network, size, restart policy, running or stopped, a run nonce that
start/restart bump). Status says what is: state, ip, pid, placement, restarts. The reconciler is
level-triggered: it compares spec with what the driver reports and takes the next step, so a crash at any
point is healed by running it again.
"""

from __future__ import annotations

__all__ = ["KIND", "InstanceCreate", "InstanceAction", "ExecRequest", "launch", "instance_view", "act",
           "delete_instance", "exec_in", "InstanceReconciler"]

import dataclasses
import ipaddress
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.drivers.base import ExecResult, InstanceInfo, InstanceState, LaunchSpec
from cloudlet.compute.images import get_image, volume_of
from cloudlet.compute.placement import Placement
from cloudlet.core.conditions import set_condition
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.errors import Conflict, InvalidSpec, NotFound, TerminalError
from cloudlet.core.reconcile import Result
from cloudlet.core.records import FINALIZER, Resource, check_name
from cloudlet.network import ipam, networks
from cloudlet.network.dns import DOMAIN, dns_name
from cloudlet.network.plumbing import PortSpec
from cloudlet.storage.names import disk_of, snapshot_name, volume_name
from cloudlet.storage.volumes import attached_to, delete_resource

KIND = "Instance"
READY = "Ready"


class InstanceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="DNS label: lowercase letters, digits, '-'")
    image: str | None = Field(None, description="image to boot; omit with from_snapshot")
    from_snapshot: str | None = Field(None, description="instance snapshot to boot from instead of an image")
    network: str = networks.DEFAULT
    cpus: float = Field(1.0, gt=0, le=64)
    memory_mib: int = Field(256, ge=16, le=1024 * 1024)
    restart: Literal["always", "never"] = "always"
    command: list[str] | None = Field(None, max_length=256)
    zone: str | None = None


class InstanceAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["start", "stop", "restart"]


class ExecRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: list[str] = Field(min_length=1, max_length=256)
    timeout: float = Field(60.0, gt=0, le=3600)


def launch(cloud: Cloud, caller: Caller, req: InstanceCreate, placement: Placement) -> Resource:
    check_name("instance", req.name)
    snapshot = None
    if req.from_snapshot:
        snapshot = cloud.store.get("Snapshot", caller.tenant, req.from_snapshot)
        if snapshot.spec.get("source_kind") != KIND or snapshot.deleting:
            raise InvalidSpec(f"snapshot {req.from_snapshot} is not a bootable instance snapshot")
        found = cloud.store.get_by_id(snapshot.spec["image_id"])
        if found is None:
            raise InvalidSpec(f"the image snapshot {req.from_snapshot} was taken from no longer exists")
        image = found
    elif req.image:
        image = get_image(cloud, req.image)
    else:
        raise InvalidSpec("give an image to launch, or --from-snapshot")
    if image.phase == "failed":
        raise InvalidSpec(f"image {req.image!r} failed to build: {image.status.get('message', '')}")
    if req.network == networks.DEFAULT:
        net = networks.ensure_default_network(cloud, caller.tenant)
    else:
        try:
            net = cloud.store.get(networks.KIND, caller.tenant, req.network)
        except NotFound:
            raise NotFound(f"network {req.network!r} not found; create it with 'cloudlet network create'") from None
    if net.deleting:
        raise Conflict(f"network {req.network!r} is being deleted")
    largest = placement.largest_memory()
    if req.memory_mib > largest:
        raise InvalidSpec(f"memory {req.memory_mib} MiB is more than the largest host has ({largest} MiB)")
    spec = {
        "image": image.name, "image_id": image.id, "network": net.name, "network_id": net.id,
        "cpus": req.cpus, "memory_mib": req.memory_mib, "restart": req.restart,
        "command": req.command, "zone": req.zone, "state": "running", "run_nonce": 1,
        "from_snapshot_id": snapshot.id if snapshot else None,
    }
    res = Resource(kind=KIND, tenant=caller.tenant, name=req.name, spec=spec, finalizers=[FINALIZER],
                   status={"state": "pending"})
    cloud.store.create(res, created=f"instance {req.name} of image {image.name} on network {net.name}")
    return res


def act(cloud: Cloud, caller: Caller, name: str, action: str) -> Resource:
    res = cloud.store.get(KIND, caller.tenant, name)
    if res.deleting:
        raise Conflict(f"instance {name} is being deleted")
    spec = dict(res.spec)
    if action == "stop":
        spec["state"] = "stopped"
    else:
        spec["state"] = "running"
        spec["run_nonce"] = int(spec.get("run_nonce", 0)) + 1
    res = cloud.store.update_spec(res.id, spec)
    cloud.store.add_event(res, action.capitalize() + "Requested", f"{action} requested")
    return res


def delete_instance(cloud: Cloud, caller: Caller, name: str, cascade: bool = False) -> list[Resource]:
    return delete_resource(cloud, cloud.store.get(KIND, caller.tenant, name), cascade)


def exec_in(cloud: Cloud, caller: Caller, name: str, req: ExecRequest) -> ExecResult:
    res = cloud.store.get(KIND, caller.tenant, name)
    return cloud.compute.exec_instance(res.id, req.command, req.timeout)


def instance_view(res: Resource) -> dict[str, Any]:
    st = res.status
    state = "deleting" if res.deleting else st.get("state", res.phase)
    return {
        "id": res.id, "name": res.name, "tenant": res.tenant, "state": state,
        "image": res.spec["image"], "network": res.spec["network"], "ip": st.get("ip"),
        "dns_name": st.get("dns_name"), "host": res.host, "zone": res.zone, "pid": st.get("pid"),
        "cpus": res.spec["cpus"], "memory_mib": res.spec["memory_mib"], "restart": res.spec["restart"],
        "desired_state": res.spec["state"], "restarts": st.get("restarts", 0), "message": st.get("message", ""),
        "generation": res.generation, "observed_generation": res.observed_generation,
        "created_at": res.created_at, "started_at": st.get("started_at"), "placement": st.get("placement"),
        "conditions": st.get("conditions", []),
    }


@dataclass(frozen=True)
class _Plan:
    """What one reconcile pass resolved for a running instance, handed to every step that starts it."""

    launch: LaunchSpec
    net: Resource
    ip: str
    fqdn: str
    disk_source: str  # the pool volume its root disk is cloned from


class InstanceReconciler:
    kind = KIND

    def __init__(self, cloud: Cloud, placement: Placement, local_hosts: set[str] | None = None) -> None:
        self.cloud = cloud
        self.placement = placement
        self.local_hosts = local_hosts  # None: every host is driven by this process's driver

    def reconcile(self, rid: str) -> Result:
        store = self.cloud.store
        res = store.get_by_id(rid)
        if res is None:
            return Result()
        if res.deleting:
            return self._finalize(res)
        if res.host is None:
            res = self._schedule(res)
            if res.host is None:
                return Result(requeue_after=30.0)
        if self.local_hosts is not None and res.host not in self.local_hosts:
            return Result()
        net = store.get_by_id(res.spec["network_id"])
        if net is None or net.deleting:
            self._set(res, "failed", message=f"network {res.spec['network']} no longer exists")
            raise TerminalError(f"network of instance {res.name} is gone")
        if net.phase != "ready":
            self._set(res, "pending", message="waiting for the network")
            return Result(requeue_after=0.1)
        image = store.get_by_id(res.spec["image_id"])
        if image is None or image.phase != "ready":
            self._set(res, "pending", message=f"waiting for image {res.spec['image']}")
            return Result(requeue_after=1.0)
        ip = store.allocate_ip(net.id, rid, ipam.host_addresses(net.spec["subnet"]))
        info = self.cloud.compute.get_instance(rid)
        if res.spec["state"] == "stopped":
            return self._converge_stopped(res, info.state)
        return self._converge_running(res, self._plan(res, net, image, ip), info)

    def _schedule(self, res: Resource) -> Resource:
        try:
            d = self.placement.place(int(res.spec["memory_mib"]), res.spec.get("zone"))
        except InvalidSpec as exc:
            if res.status.get("message") != exc.message:
                self.cloud.store.add_event(res, "NoValidHost", exc.message, "Warning")
            self._set(res, "unschedulable", message=exc.message)
            return res
        res = self.cloud.store.update_status(
            res.id, host=d.host, zone=d.zone, status={**res.status, "placement": d.record(), "state": "scheduled"})
        self.cloud.store.add_event(res, "Scheduled", f"placed on host {d.host} in {d.zone}")
        return res

    def _plan(self, res: Resource, net: Resource, image: Resource, ip: str) -> _Plan:
        zone = res.zone or self.cloud.config.zone
        fqdn = dns_name(res.name, net.name, zone)
        snapshot = res.spec.get("from_snapshot_id")
        launch = LaunchSpec(
            id=res.id, hostname=res.name, rootfs=self.cloud.pool.path(disk_of(res.id)),
            command=res.spec.get("command") or image.spec["command"],
            cpus=float(res.spec["cpus"]), memory_mib=int(res.spec["memory_mib"]), netns="",
            hosts=f"127.0.0.1\tlocalhost\n{ip}\t{fqdn} {res.name}\n",
            resolv_conf=(f"nameserver {net.spec['gateway']}\nsearch {net.name}.{zone}.{DOMAIN}\n"
                         "options timeout:1 attempts:2\n"),
            host=res.host or self.cloud.config.host,
            mounts=tuple((str(self.cloud.pool.path(volume_name(v.id))), v.spec["attachment"]["path"])
                         for v in attached_to(self.cloud, res)),
        )
        return _Plan(launch, net, ip, fqdn, snapshot_name(snapshot) if snapshot else volume_of(image))

    def _start(self, res: Resource, plan: _Plan, fresh: bool) -> InstanceInfo:
        self.cloud.pool.snapshot(plan.disk_source, disk_of(res.id), readonly=False)
        net = plan.net
        prefix = ipaddress.ip_network(net.spec["subnet"]).prefixlen
        netns = self.cloud.net.ensure_port(PortSpec(res.id, net.id, plan.ip, prefix, net.spec["gateway"]))
        launch = dataclasses.replace(plan.launch, netns=netns)
        if fresh:
            return self.cloud.compute.create_instance(launch)
        return self.cloud.compute.start_instance(launch)

    def _converge_running(self, res: Resource, plan: _Plan, observed: InstanceInfo) -> Result:
        store, st, state, ip = self.cloud.store, res.status, observed.state, plan.ip
        nonce = int(res.spec.get("run_nonce", 1))
        done = st.get("run_nonce")
        restarts = int(st.get("restarts", 0))
        info = observed
        if state == InstanceState.RUNNING and done is not None and done != nonce:
            self.cloud.compute.stop_instance(res.id)
            info = self._start(res, plan, fresh=False)
            store.add_event(res, "Restarted", "instance restarted on request")
        elif state == InstanceState.RUNNING:
            if not self.cloud.net.port_exists(res.id):
                self.cloud.compute.stop_instance(res.id)
                info = self._start(res, plan, fresh=False)
                store.add_event(res, "Replumbed", "network namespace was missing; restarted", "Warning")
        elif state == InstanceState.MISSING:
            info = self._start(res, plan, fresh=True)
            store.add_event(res, "Started", f"instance running with address {ip}")
        elif done == nonce and st.get("state") in ("running", "starting"):
            store.add_event(res, "Exited", "instance init exited unexpectedly", "Warning")
            if res.spec["restart"] != "always":
                self._set(res, "exited", pid=None, message="init exited; restart policy is never")
                return Result()
            info = self._start(res, plan, fresh=False)
            restarts += 1
            store.add_event(res, "Restarted", f"restart policy always (restart #{restarts})")
        elif done == nonce and st.get("state") == "exited":
            return Result()
        else:
            info = self._start(res, plan, fresh=False)
            store.add_event(res, "Started", f"instance running with address {ip}")
        if info.state == InstanceState.STARTING:
            self._set(res, "starting", ip=ip, run_nonce=nonce, restarts=restarts)
            return Result(requeue_after=max(0.01, float(info.extra.get("ready_at", 0)) - self.cloud.clock.now()))
        if info.state != InstanceState.RUNNING:
            self._set(res, "starting", ip=ip, run_nonce=nonce, restarts=restarts, message="init exited at start")
            raise RuntimeError(f"instance {res.name} did not stay running")
        self._set(res, "running", ip=ip, pid=info.pid, run_nonce=nonce, restarts=restarts, dns_name=plan.fqdn,
                  message="", started_at=st.get("started_at") if st.get("state") == "running" else time.time())
        return Result()

    def _converge_stopped(self, res: Resource, state: InstanceState) -> Result:
        if state in (InstanceState.RUNNING, InstanceState.STARTING, InstanceState.PAUSED):
            self.cloud.compute.stop_instance(res.id)
            self.cloud.store.add_event(res, "Stopped", "instance stopped")
        self._set(res, "stopped", pid=None, message="")
        return Result()

    def _finalize(self, res: Resource) -> Result:
        self.cloud.compute.delete_instance(res.id)
        self.cloud.net.delete_port(res.id)
        self.cloud.pool.delete(disk_of(res.id))
        for vol in attached_to(self.cloud, res):  # volumes outlive their instance, detached
            self.cloud.store.update_spec(vol.id, {**vol.spec, "attachment": None})
        self.cloud.store.add_event(res, "Deleted", "instance and its artefacts removed")
        self.cloud.store.purge(res.id)
        self.placement.invalidate()
        return Result()

    def _set(self, res: Resource, state: str, **fields: Any) -> None:
        status = {**res.status, **fields, "state": state}
        message = str(status.get("message") or "")
        status["conditions"] = set_condition(res.status.get("conditions"), READY, state == "running",
                                             state.capitalize(), message, res.generation)
        if status != res.status or res.phase != state or res.observed_generation != res.generation:
            self.cloud.store.update_status(res.id, status=status, phase=state, observed_generation=res.generation)
