"""`cloudlet host drain NAME` (issue 10): every instance off a host, its disk's data with it, never two copies
running. There is no CRIU on this machine kind (MACHINE-NOTES.md), so a move is stop, ship, start:

1. The host is cordoned: placement puts nothing new there.
2. Each instance, `PARALLEL` at once, goes to a host placement chooses (its own zone first; any zone when its
   zone has no other host: a drain must empty the host), unless it has a replica on a live host, which is then
   the target. Without a replica: a full btrfs send of its root disk to the target while it runs (the pre-copy,
   through the agents' `POST /replicas/disks/<id>/ship`, storage/replication.py `ship_once`), then its spec says
   stopped and the drain waits until its agent reports it stopped at that generation, then the last delta is
   shipped and promoted to `disks/<id>` on the target. With a replica: stopped the same way, then the drain waits
   for a replication cycle taken after the stop and promotes it (`recover_from_replica`). Either way one write
   places the record on the target with its spec running again: the old host's agent lets go of its copy, the
   target's runtime boots the disk as it is. Only then does anything start on the target.
3. Load balancers of the host go back to their placer (HAProxy holds no data; it is rebuilt elsewhere), and
   replicas other hosts ship to it to their planner, which chooses another host (what it held of them is dropped
   at the end).

The record stays the same one, so its name, address, labels (LB membership), DNS names and EIP target (by id)
follow it. A move that fails before the record is placed leaves the instance where it was, started again if it
was running. Attached volumes that hold data move with it, shipped like its root disk (by replica only when each
has one on the instance's replica host) and placed on the target just before it; empty ones are made again there. Progress is the Host's
`status.drain` (state, moved, total, failed, started_at, took_s); each instance gets DrainStarted, Shipped
(bytes, ms) and Moved (downtime) events, the Host DrainStarted and Drained. Draining again continues: what left
the host is not looked at, an instance this drain had stopped (label `cloudlet.io/drain`) is moved as stopped.
"""

from __future__ import annotations

__all__ = ["Drains", "DRAINS", "DrainResumer", "PARALLEL", "DRAIN_LABEL", "start_drain", "drain_host", "move_instance"]

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloudlet.agent.client import ReplicaClient
from cloudlet.compute.hosts import HOST_KIND, host_lock, set_cordoned
from cloudlet.compute.placement import NoValidHost
from cloudlet.compute.resource import INSTANCE, HostSpec, HostStatus, InstanceSpec, InstanceStatus
from cloudlet.core.context import SYSTEM_TENANT, Cloud
from cloudlet.core.errors import CloudletError, Conflict
from cloudlet.core.reconcile import Result, Watches
from cloudlet.core.records import Resource
from cloudlet.lb.resource import LOADBALANCER
from cloudlet.storage import replication
from cloudlet.storage.names import disk_of, volume_name
from cloudlet.storage.resource import REPLICA, ReplicaSpec, ReplicaStatus, VolumeStatus
from cloudlet.storage.volumes import attached_to, follow

log = logging.getLogger("cloudlet.drain")
PARALLEL = 4  # moves at once: each holds a btrfs send and receive, and two cores are shared by everything
DRAIN_LABEL = "cloudlet.io/drain"  # on an instance this drain stopped: the host it is being moved off
STOP_WAIT = 30.0  # the runtime gives an init 5 s after TERM before it kills it
START_WAIT = 60.0
RESUME_AFTER = 5.0  # seconds after cloudletd's start: its agents heartbeat (endpoints, keys) before ships are asked
POLL = 0.05


def _wait(cloud: Cloud, rid: str, done: Any, timeout: float, what: str) -> Resource:
    deadline = time.monotonic() + timeout
    while True:
        res = cloud.store.get_by_id(rid)
        if res is None:
            raise Conflict(f"the instance was deleted while {what}")
        if done(res):
            return res
        if time.monotonic() > deadline:
            raise Conflict(f"timed out after {timeout:g} s {what} (state {res.phase})")
        time.sleep(POLL)


def _choose(cloud: Cloud, res: Resource, drained: str) -> tuple[str, str]:
    """(host, zone) for res: placement, in the instance's zone if one there passes, else in any zone."""
    spec = InstanceSpec.of(res)
    zones = [spec.zone, None] if spec.zone else [None]
    last: NoValidHost | None = None
    for zone in zones:
        try:
            d = cloud.placement.place_instance(res, zone)
        except NoValidHost as exc:
            last = exc
            continue
        if d.host is not None and d.host != drained:
            return d.host, str(d.zone)
    raise Conflict(last.message if last is not None else f"placement chose host {drained} itself")


def _replica_target(cloud: Cloud, res: Resource, drained: str) -> tuple[Resource, str, list[Resource]] | None:
    """The Replica record of res, the live, uncordoned host holding its newest copy, and the Replicas a move
    there waits for (its own and each bound volume's, which must be on that host too), if res has one."""
    rep = replication.replica_of(cloud.store, res.id)
    holder = ReplicaStatus.of(rep).host if rep is not None else None
    if rep is None or holder is None or holder == drained:
        return None
    found = cloud.store.list(HOST_KIND, tenant=SYSTEM_TENANT, name=holder)
    if not found or found[0].phase != "up" or HostSpec.of(found[0]).cordoned:
        return None
    try:
        volumes = replication.volume_replicas(cloud, res, holder)
    except Conflict:
        return None  # a volume's data is not there: copy everything instead
    return rep, holder, [rep, *(vrep for _, vrep in volumes if vrep is not None)]


def _stop(cloud: Cloud, res: Resource, drained: str) -> tuple[Resource, float]:
    """Stops res on its host (spec side, labelled as this drain's) and waits for its agent to say so for that
    generation: until then a copy may run. Answers the record and when the stop was asked."""
    asked = time.time()
    spec = InstanceSpec.of(res)
    if spec.state == "running" or res.labels.get(DRAIN_LABEL) != drained:
        spec.state = "stopped"
        res = cloud.store.update_spec(res.id, spec.dump(), labels={DRAIN_LABEL: drained})
    gen = res.generation
    res = _wait(
        cloud,
        res.id,
        lambda r: r.phase == "stopped" and r.observed_generation >= gen,
        STOP_WAIT,
        f"waiting for host {drained} to stop it",
    )
    return res, asked


def _restore(cloud: Cloud, rid: str, was_running: bool) -> None:
    """A move that failed before the record left: the instance runs on where it was."""
    res = cloud.store.get_by_id(rid)
    if res is None or res.labels.get(DRAIN_LABEL) is None:
        return
    spec = InstanceSpec.of(res)
    spec.state = "running" if was_running else spec.state
    cloud.store.update_spec(res.id, spec.dump(), labels={DRAIN_LABEL: None})


def _place(cloud: Cloud, res: Resource, host: str, zone: str, was_running: bool) -> Resource:
    """One write: on the target, spec running again (if it was), status scheduled, the drain's label gone."""
    spec = InstanceSpec.of(res)
    spec.state = "running" if was_running else "stopped"
    status = InstanceStatus.of(res).model_copy(
        update={"state": "scheduled", "pid": None, "started_at": None, "message": "", "retry_at": None}
    )
    return cloud.store.place(
        res.id,
        host,
        zone,
        labels={DRAIN_LABEL: None},
        phase="scheduled",
        status=status.dump(),
        spec=spec.dump(),
        generation=res.generation + 1,
    )


def _token(cloud: Cloud, host: str, volume: str) -> tuple[str, str]:
    """(endpoint, token) that open volume's replicas on host's agent."""
    st = HostStatus.of(cloud.store.get(HOST_KIND, SYSTEM_TENANT, host))
    if not st.endpoint or not st.key:
        raise Conflict(f"host {host} has not reported its agent's endpoint yet")
    return st.endpoint, replication.replica_token(st.key, volume)


def _drop(cloud: Cloud, hosts: tuple[str, ...], *volumes: str) -> None:
    """The shipped replicas on each side, once the disks are promoted (or the move given up)."""
    for host in hosts:
        for volume in volumes:
            try:
                endpoint, token = _token(cloud, host, volume)
                ReplicaClient(host, endpoint, token).drop(volume)
            except CloudletError as exc:
                log.warning("replicas of %s left on host %s: %s", volume, host, exc.message)


def move_instance(cloud: Cloud, rid: str, drained: str) -> dict[str, Any] | None:
    """Moves one instance off host drained (see the module docstring); None if it is not there any more.
    Answers {instance, to, downtime_s, bytes, ms}; raises with the instance back where it was."""
    store = cloud.store
    res = store.get_by_id(rid)
    if res is None or res.deleting or res.host != drained:
        return None
    spec, began = InstanceSpec.of(res), time.time()
    # stopped by an earlier drain that did not finish: it was running then
    was_running = spec.state == "running" or res.labels.get(DRAIN_LABEL) == drained
    bound = [v for v in attached_to(cloud, res) if VolumeStatus.of(v).bound]
    replica = _replica_target(cloud, res, drained)
    target, zone = (replica[1], "") if replica else _choose(cloud, res, drained)
    zone = zone or store.get(HOST_KIND, SYSTEM_TENANT, target).zone or ""
    how = f"its replica on host {target}" if replica else f"a copy of its disk to host {target}"
    store.add_event(res, "DrainStarted", f"host {drained} is being drained: moving by {how}")
    # what is shipped: its root disk (once it started, it exists) and every volume with data, by pool name
    disks = {disk_of(res.id): "its root disk"} if InstanceStatus.of(res).run_nonce is not None else {}
    disks.update({volume_name(v.id): f"volume {v.name}" for v in bound})
    src, dst = cloud.hosts.agent(drained), cloud.hosts.agent(target)
    shipped: list[tuple[str, str, dict[str, Any]]] = []  # (full copy|last delta, what, ship_once's answer)
    placed = False
    try:
        if replica is None:
            for name, what in disks.items():  # the pre-copy, while it runs
                shipped.append(("full copy", what, src.ship_replica(name, target, *_token(cloud, target, name))))
        res, asked = _stop(cloud, res, drained)
        stopped_at = time.time()
        if replica is not None:
            for rep in replica[2]:
                _wait(
                    cloud,
                    rep.id,
                    lambda r: (ReplicaStatus.of(r).taken_at or 0.0) > stopped_at,
                    3 * ReplicaSpec.of(rep).interval_s + 30,
                    f"waiting for a replica of {ReplicaSpec.of(rep).source_name} taken after the stop on {target}",
                )
            res = replication.recover_from_replica(cloud, store.get_by_id(res.id) or res)
            placed = True
            res = _place(cloud, res, target, zone, was_running)
        else:
            for name, what in disks.items():
                shipped.append(("last delta", what, src.ship_replica(name, target, *_token(cloud, target, name))))
                dst.promote_replica_over(name, name)
            _drop(cloud, (target, drained), *disks)  # before the record leaves: a resumed drain ships again
            for vol in attached_to(cloud, res):  # before the instance: its new host sees them when it sees it
                if VolumeStatus.of(vol).bound:
                    store.place(vol.id, target, zone)
                else:
                    follow(cloud, vol, target, zone)
            res = _place(cloud, res, target, zone, was_running)
            placed = True
    except Exception as exc:
        if not placed:
            if replica is None:
                _drop(cloud, (target, drained), *disks)
            _restore(cloud, rid, was_running)
        message = exc.message if isinstance(exc, CloudletError) else f"{type(exc).__name__}: {exc}"
        raise Conflict(f"not moved, {'running on' if was_running else 'left on'} host {drained}: {message}") from exc
    for kind, what, s in shipped:
        kind += " (incremental)" if kind == "full copy" and s.get("parent") else ""
        store.add_event(res, "Shipped", f"{kind} of {what} to host {target}: {s['bytes']} bytes in {s['ms']} ms")
    if was_running:
        res = _wait(
            cloud,
            rid,
            lambda r: r.host == target and r.phase == "running",
            START_WAIT,
            f"waiting for it to start on host {target}",
        )
    downtime = time.time() - asked
    took = time.time() - began
    store.add_event(
        res,
        "Moved",
        f"moved from host {drained} to host {target} in {took:.2f} s; "
        + (f"down for {downtime:.2f} s" if was_running else "it stays stopped"),
    )
    deltas = [int(s["bytes"]) for kind, _, s in shipped if kind == "last delta"]
    return {
        "instance": res.name,
        "tenant": res.tenant,
        "to": target,
        "downtime_s": round(downtime, 3) if was_running else None,
        "took_s": round(took, 3),
        "bytes": sum(int(s["bytes"]) for _, _, s in shipped),  # the full copies and the last deltas
        "delta_bytes": sum(deltas) if deltas else None,
        "ms": [s["ms"] for _, _, s in shipped],
    }


def _write(cloud: Cloud, host: str, block: dict[str, Any]) -> None:
    """The Host's status.drain, under the host's lock: heartbeats write the same status every second."""
    with host_lock(host):
        res = cloud.store.get(HOST_KIND, SYSTEM_TENANT, host)
        st = HostStatus.of(res)
        st.drain = dict(block)
        cloud.store.update_status(res.id, status=st.dump())


def _release_lbs(cloud: Cloud, host: str) -> list[str]:
    """Load balancers go back to their placer, which skips the cordoned host."""
    moved = []
    for lb in cloud.store.list(LOADBALANCER, host=host):
        if lb.deleting:
            continue
        status = {**lb.status, "state": "pending", "placement": None}
        cloud.store.place(lb.id, None, phase="pending", status=status)
        cloud.store.add_event(lb, "DrainStarted", f"host {host} is being drained: placing it again elsewhere")
        moved.append(lb.name)
    return moved


def _retarget_replicas(cloud: Cloud, host: str) -> None:
    """Replicas other hosts ship to host: their planner chooses again, and skips the cordoned host."""
    for rep in cloud.store.list(REPLICA, tenant=SYSTEM_TENANT):
        spec = ReplicaSpec.of(rep)
        if rep.deleting or spec.target_host != host:
            continue
        spec.target_host = spec.target_zone = spec.endpoint = spec.token = None
        spec.note = f"host {host} is being drained: choosing another replica host"
        cloud.store.update_spec(rep.id, spec.dump())


def _drop_held_replicas(cloud: Cloud, host: str) -> int:
    """At the drain's end, what host holds of replicas shipped to it that now go elsewhere (or nowhere), including
    those an earlier, cut drain retargeted: asked for every such volume (a volume it never held costs one call)."""
    volumes = {
        ReplicaSpec.of(rep).volume
        for rep in cloud.store.list(REPLICA, tenant=SYSTEM_TENANT)
        if ReplicaSpec.of(rep).target_host != host and rep.host != host
    }
    for volume in sorted(volumes):
        _drop(cloud, (host,), volume)
    return len(volumes)


def drain_host(cloud: Cloud, host: str, parallel: int = PARALLEL) -> dict[str, Any]:
    """Cordons host and moves everything off it (see the module docstring); the progress block, as it ended."""
    t0 = time.time()
    res = set_cordoned(cloud.store, host, True)
    cloud.placement.invalidate()
    ids = [i.id for i in cloud.store.list(INSTANCE, host=host) if not i.deleting]
    block: dict[str, Any] = {
        "state": "running",
        "moved": 0,
        "total": len(ids),
        "failed": [],
        "moves": [],
        "started_at": t0,
        "took_s": None,
    }
    lock = threading.Lock()
    _write(cloud, host, block)
    cloud.store.add_event(res, "DrainStarted", f"moving {len(ids)} instances off host {host}, {parallel} at a time")
    lbs = _release_lbs(cloud, host)
    _retarget_replicas(cloud, host)

    def one(rid: str) -> None:
        try:
            moved = move_instance(cloud, rid, host)
            with lock:
                block["moved"] += 1
                if moved is not None:
                    block["moves"].append(moved)
        except Exception as exc:
            gone = cloud.store.get_by_id(rid)
            message = exc.message if isinstance(exc, CloudletError) else f"{type(exc).__name__}: {exc}"
            log.warning("drain of host %s: instance %s: %s", host, rid, message)
            if gone is not None:
                cloud.store.add_event(gone, "MoveFailed", message, "Warning")
            with lock:
                block["failed"].append({"instance": gone.name if gone else rid, "reason": message})
        with lock:
            _write(cloud, host, block)

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix=f"drain-{host}") as pool:
        list(pool.map(one, ids))
    _drop_held_replicas(cloud, host)
    left = [i.name for i in cloud.store.list(INSTANCE, host=host) if not i.deleting]
    block.update(state="failed" if block["failed"] or left else "done", took_s=round(time.time() - t0, 3))
    block["load_balancers"] = lbs
    _write(cloud, host, block)
    downs = sorted(m["downtime_s"] for m in block["moves"] if m.get("downtime_s") is not None)
    summary = f"{block['moved']} of {block['total']} instances moved in {block['took_s']:.1f} s"
    if downs:
        summary += f"; downtime p50 {downs[len(downs) // 2]:.2f} s, max {downs[-1]:.2f} s"
    if block["failed"]:
        summary += f"; {len(block['failed'])} failed, still on the host: {', '.join(left)}"
    cloud.store.add_event(
        cloud.store.get(HOST_KIND, SYSTEM_TENANT, host), "Drained", summary, "Warning" if block["failed"] else "Normal"
    )
    return block


class Drains:
    """Drains running in the background (each takes seconds to minutes: not on the API's threads), one per host:
    asking again while one runs answers its progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}

    def start(self, cloud: Cloud, host: str) -> bool:
        """Starts draining host unless it is being drained; True if this call started it."""
        with self._lock:
            thread = self._running.get(host)
            if thread is not None and thread.is_alive():
                return False
            thread = threading.Thread(target=self._run, args=(cloud, host), name=f"drain-{host}", daemon=True)
            self._running[host] = thread
        thread.start()
        return True

    def running(self, host: str) -> bool:
        with self._lock:
            thread = self._running.get(host)
            return thread is not None and thread.is_alive()

    @staticmethod
    def _run(cloud: Cloud, host: str) -> None:
        try:
            drain_host(cloud, host)
        except Exception as exc:  # a bug must not leave the block saying running
            log.exception("drain of host %s failed", host)
            message = exc.message if isinstance(exc, CloudletError) else f"{type(exc).__name__}: {exc}"
            try:
                block = HostStatus.of(cloud.store.get(HOST_KIND, SYSTEM_TENANT, host)).drain or {}
                _write(cloud, host, {**block, "state": "failed", "message": message})
            except CloudletError:
                pass  # the host is gone


DRAINS = Drains()  # one per process: a cloudletd serves one cloud


class DrainResumer:
    """cloudletd: a drain its predecessor left running (its Host's block says so) carries on at the start, once its
    agents had time to heartbeat: an instance it had stopped is moved as it is, or started again where it was."""

    kind = "DrainResume"  # a queue kind only, keyed by host name: there are no records of it

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.watches: Watches = {}
        for host in cloud.store.list(HOST_KIND, tenant=SYSTEM_TENANT):
            if (HostStatus.of(host).drain or {}).get("state") == "running":
                cloud.manager.enqueue(self.kind, host.name, after=RESUME_AFTER)

    def reconcile(self, host: str) -> Result:
        if not DRAINS.running(host):
            log.info("resuming the drain of host %s", host)
            DRAINS.start(self.cloud, host)
        return Result()


def start_drain(cloud: Cloud, host: str) -> dict[str, Any]:
    """Cordons host and starts moving its instances off it in the background (idempotent: draining again
    continues). Answers the drain block as it is now."""
    res = cloud.store.get(HOST_KIND, SYSTEM_TENANT, host)
    if res.phase != "up" and not DRAINS.running(host):
        raise Conflict(
            f"host {host} is {res.phase}: its agent cannot ship its disks; bring it back, or remove it with --force "
            "(its instances are placed again from their images)"
        )
    asked = time.time()
    if DRAINS.start(cloud, host):
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # answer with this drain's first block, not the last one's
            block = HostStatus.of(cloud.store.get(HOST_KIND, SYSTEM_TENANT, host)).drain or {}
            if block.get("started_at", 0) >= asked:
                break
            time.sleep(POLL)
    return drain_state(cloud, host)


def drain_state(cloud: Cloud, host: str) -> dict[str, Any]:
    """The Host's drain block (running, or how the last one ended), with whether a drain runs in this process."""
    block = HostStatus.of(cloud.store.get(HOST_KIND, SYSTEM_TENANT, host)).drain or {}
    running = DRAINS.running(host)
    if block.get("state") == "running" and not running:
        block = {**block, "state": "interrupted", "message": "cloudletd restarted during the drain: drain again"}
    return {"host": host, **block, "active": running}
