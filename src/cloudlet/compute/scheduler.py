"""The control plane's half of the Instance kind: place each new instance on a host, give it an address on
its network, and collect the record once its host's agent has cleaned up (or at once, if it was never placed)."""

from __future__ import annotations

__all__ = ["SchedulerReconciler", "release"]

import threading
from typing import Any

from cloudlet.compute.instances import KIND, set_state
from cloudlet.compute.placement import NoValidHost
from cloudlet.compute.resource import HOST, InstanceSpec, InstanceStatus
from cloudlet.core.context import Cloud
from cloudlet.core.errors import Conflict, TerminalError
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import Resource
from cloudlet.network import ipam
from cloudlet.network.resource import NetworkSpec
from cloudlet.storage.resource import VolumeStatus
from cloudlet.storage.volumes import attached_to, follow, pinned_host, release_attachments


class SchedulerReconciler(KindReconciler):
    kind = KIND

    def __init__(self, cloud: Cloud) -> None:
        super().__init__(cloud.store)
        self.cloud = cloud
        self._lock = threading.Lock()
        self._waiting: set[str] = set()  # unschedulable instances
        self._seen: dict[str, tuple[Any, ...]] = {}  # what placement depends on of each host, as last written
        self.watches = {HOST: self._host_changed}

    def _host_changed(self, host: Resource) -> list[str]:
        """A host came up, went away, was cordoned or resized: placement sees it now, not at its next refresh,
        and the instances waiting for a host try again (heartbeats, every second, change none of this)."""
        spec = host.spec
        seen = (host.phase, host.deleting, spec.get("cordoned"), spec.get("cpus"), spec.get("memory_mib"))
        with self._lock:
            if self._seen.get(host.name) == seen:
                return []
            self._seen[host.name] = seen
            waiting = sorted(self._waiting)
        self.cloud.placement.invalidate()
        return waiting

    def reconcile(self, rid: str) -> Result:
        res = self.cloud.store.get_by_id(rid)
        if res is None or res.host is not None or res.deleting:
            with self._lock:
                self._waiting.discard(rid)
        if res is None or res.host is not None:
            return Result()  # placed: its agent owns it from here, deletion included
        if res.deleting:
            if self.cloud.store.finalize(rid):
                release(self.cloud, res)
            return Result()
        return self.converge(res)

    def converge(self, res: Resource) -> Result:
        store, spec, status = self.cloud.store, InstanceSpec.of(res), InstanceStatus.of(res)
        net = store.get_by_id(spec.network_id)
        if net is None or net.deleting:
            set_state(store, res, "failed", message=f"network {spec.network} no longer exists")
            raise TerminalError(f"network of instance {res.name} is gone")
        try:
            d = self.cloud.placement.place_instance(res, spec.zone, pinned=pinned_host(self.cloud, res))
        except (Conflict, NoValidHost) as exc:  # Conflict: its volumes hold data on different hosts
            if status.message != exc.message:
                store.add_event(res, "NoValidHost", exc.message, "Warning")
            # a placement's decision too, so `instance why` shows each host's filter
            decision = {"placement": exc.decision.record()} if isinstance(exc, NoValidHost) else {}
            set_state(store, res, "unschedulable", message=exc.message, **decision)
            with self._lock:
                self._waiting.add(res.id)
            return Result(requeue_after=30.0)
        for vol in attached_to(self.cloud, res):  # before the instance: its agent sees them when it sees it
            if vol.host != d.host and not VolumeStatus.of(vol).bound:
                follow(self.cloud, vol, str(d.host), d.zone)
        ip = store.allocate_ip(net.id, res.id, ipam.host_addresses(NetworkSpec.of(net).subnet))
        status = status.model_copy(update={"placement": d.record(), "state": "scheduled", "ip": ip})
        res = store.update_status(res.id, host=d.host, zone=d.zone, phase="scheduled", status=status.dump())
        store.add_event(res, "Scheduled", f"placed on host {d.host} in {d.zone} with address {ip}")
        return Result()


def release(cloud: Cloud, res: Resource) -> None:
    """What the control plane does once an instance record is gone: its volumes stay, detached; its capacity
    is free again."""
    release_attachments(cloud, res)
    cloud.placement.invalidate()
