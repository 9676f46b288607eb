"""Replicated disks (issue 10): an instance's root disk or a volume with `replicas: 1` is shipped to a host in
another zone as btrfs incremental snapshots, every `replica_interval_s` (default 5 s), keeping the last two on both
sides; the newest one on the replica host is a bootable copy (`promote`).

Who does what:
- cloudletd's `ReplicaPlanner` chooses the replica host (`choose_replica_host`: another zone if any, else another
  host) and keeps one `Replica` record per replicated disk, placed on the disk's host, owned by its source. The
  record carries the replica host's endpoint and a token, `replica_token(that agent's key, volume)`: the source's
  agent may ship that one volume there and do nothing else (not the agent's key, which would let it exec).
- The source host's `ReplicationReconciler` (agent) runs a cycle each interval: a read-only snapshot
  `replicas/<id>/<seq>.partial`, `btrfs send -p <newest seq both sides hold>` streamed over HTTP to the replica
  host's `PUT /replicas/<volume>` (agent/server.py, `receive` below), then the snapshot is sealed as
  `replicas/<id>/<seq>` and older ones dropped. It writes the Replica's status (`host, seq, taken_at, shipped_at`)
  and a Warning event `ReplicaStale` on the source when the newest replica is older than three intervals.
- The next cycle starts early (`next_cycle_at`) by a margin over the last cycle's duration, so a replica lands
  before the previous one turns one interval old: the data lost with the source host (RPO) stays under one
  interval (bench/replication.py measures it).
"""

from __future__ import annotations

__all__ = [
    "KEEP",
    "STALE_AFTER_INTERVALS",
    "replica_dir",
    "next_cycle_at",
    "replica_token",
    "seqs",
    "receive",
    "drop",
    "promote",
    "prune",
    "choose_replica_host",
    "replica_of",
    "replica_view",
    "recover_from_replica",
    "volume_replicas",
    "ship_once",
    "ReplicaPlanner",
    "ReplicationReconciler",
]

import hashlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import httpx

from cloudlet.agent.client import ReplicaClient
from cloudlet.compute.hosts import HOST_KIND, STALE_AFTER
from cloudlet.compute.resource import INSTANCE, HostStatus, InstanceSpec, InstanceStatus
from cloudlet.core.context import SYSTEM_TENANT, Cloud, HostContext, Records
from cloudlet.core.errors import BadRequest, CloudletError, Conflict, NotFound
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import FINALIZER, Resource
from cloudlet.storage.names import disk_of, volume_name
from cloudlet.storage.pools.base import StoragePool
from cloudlet.storage.resource import REPLICA, VOLUME, ReplicaSpec, ReplicaStatus, VolumeSpec, VolumeStatus
from cloudlet.storage.volumes import attached_to, follow

log = logging.getLogger("cloudlet.replication")
KEEP = 2  # replicas kept on each side: the newest is the parent of the next send, the one before is a spare
STALE_AFTER_INTERVALS = 3
FIRST_GRACE_S = 30.0  # before the first replica: how long until it is reported stale, at least
PLAN = "ReplicaPlan"  # the planner's queue kind: keyed by the source's id, not a record kind of its own
LIVE_PHASES = ("up", "suspect")  # a replica host in any other phase (fenced, gone) is replaced


def replica_dir(volume: str) -> str:
    """Where the replicas of pool volume `disks/<id>` or `volumes/<id>` are, on both sides: `replicas/<id>`."""
    return f"replicas/{volume.partition('/')[2]}"


def next_cycle_at(taken_at: float, interval: float, last_cycle_s: float) -> float:
    """When to take the next snapshot: early by 1.5 times the last cycle (snapshot, send, receive) plus 0.1 s,
    so that it has landed before the newest replica is one interval old even if this cycle takes longer (more
    was written); never more often than a tenth of the interval."""
    return taken_at + max(interval / 10, interval - 1.5 * last_cycle_s - 0.1)


def replica_token(agent_key: str, volume: str) -> str:
    """What the replica host's agent (whose key this is) accepts from the agent shipping `volume` to it."""
    return hmac.new(agent_key.encode(), f"replica:{volume}".encode(), hashlib.sha256).hexdigest()


def seqs(pool: StoragePool, volume: str) -> list[int]:
    """The finished replicas of volume in this pool, oldest first."""
    d = replica_dir(volume)
    return sorted(int(n.rpartition("/")[2]) for n in pool.list(d + "/") if n.rpartition("/")[2].isdigit())


def prune(pool: StoragePool, volume: str, keep: int = KEEP) -> None:
    for seq in seqs(pool, volume)[:-keep]:
        pool.delete(f"{replica_dir(volume)}/{seq}")


def receive(pool: StoragePool, volume: str, seq: int, stream: Iterable[bytes]) -> dict[str, Any]:
    """The replica host's end of one cycle (agent/server.py): the stream must hold replica `seq` of volume."""
    d = replica_dir(volume)
    name = pool.receive(stream, d + "/")
    if name != f"{d}/{seq}":
        pool.delete(name)
        raise BadRequest(f"the stream held {name}, not replica {seq} of {volume}")
    prune(pool, volume)
    return {"name": name, "seq": seq}


def drop(pool: StoragePool, volume: str) -> None:
    """Every replica of volume in this pool (finished or half received), and their directory."""
    d = replica_dir(volume)
    where = pool.path(d)
    if not where.is_dir():
        return
    for p in where.iterdir():
        pool.delete(f"{d}/{p.name}")
    where.rmdir()


def promote(pool: StoragePool, volume: str, into: str) -> dict[str, Any]:
    """Recovery on the replica host: a writable clone of the newest replica of volume, named `into`."""
    have = seqs(pool, volume)
    if not have:
        raise NotFound(f"this host holds no replica of {volume}")
    if pool.exists(into):
        raise Conflict(f"{into} exists already on this host")
    pool.promote(f"{replica_dir(volume)}/{have[-1]}", into)
    return {"name": into, "seq": have[-1]}


def ship_once(pool: StoragePool, volume: str, client: ReplicaClient) -> dict[str, Any]:
    """One cycle outside any Replica record (resilience/drain.py moves a disk with two: a full send while the
    instance runs, then the last delta once it stopped): snapshot, send against the newest seq both sides hold,
    seal, keep two. Answers seq, parent, bytes and ms."""
    d = replica_dir(volume)
    if not pool.exists(volume):
        raise NotFound(f"this host holds no {volume}")
    have, local = set(client.seqs(volume)), seqs(pool, volume)
    parent = max((s for s in local if s in have), default=None)
    seq = max([*local, *have, 0]) + 1
    partial = f"{d}/{seq}.partial"
    t0 = time.perf_counter()
    pool.snapshot(volume, partial, readonly=True)
    try:
        stream = pool.send(partial, f"{d}/{parent}" if parent else None)
        client.put(volume, seq, stream, parent)
    except BaseException:
        pool.delete(partial)
        raise
    pool.seal(partial, f"{d}/{seq}")
    prune(pool, volume)
    return {"seq": seq, "parent": parent, "bytes": stream.sent, "ms": round((time.perf_counter() - t0) * 1000, 1)}


def _live(host: Resource, now: float) -> bool:
    # HostStatus's and HostSpec's fields, unparsed: a choice looks at every host
    beat = host.status.get("last_heartbeat") or 0.0
    return host.phase == "up" and now - beat <= STALE_AFTER and not host.spec.get("cordoned", False)


def choose_replica_host(hosts: list[Resource], source: str, load: dict[str, int]) -> Resource | None:
    """A live host other than source, in another zone when one has a live host; fewest replicas first
    (`load`: replicas each host holds already), then by name."""
    now = time.time()
    zone = next((h.zone for h in hosts if h.name == source), None)
    candidates = [h for h in hosts if h.name != source and _live(h, now)]
    if not candidates:
        return None
    return min(candidates, key=lambda h: (h.zone == zone, load.get(h.name, 0), h.name))


def replica_of(store: Records, source_id: str) -> Resource | None:
    """The live Replica record of a source (an instance or a volume), if it has one."""
    live = [r for r in store.list(REPLICA, tenant=SYSTEM_TENANT, owner=source_id) if not r.deleting]
    return live[0] if live else None


def replica_view(rep: Resource | None) -> dict[str, Any] | None:
    """What a tenant may see of its disk's replica (never the endpoint or token)."""
    if rep is None:
        return None
    spec, st = ReplicaSpec.of(rep), ReplicaStatus.of(rep)
    return {
        "target_host": spec.target_host,  # where the next one goes
        "host": st.host,
        "zone": spec.target_zone if st.host == spec.target_host else None,
        "seq": st.seq,
        "taken_at": st.taken_at,
        "shipped_at": st.shipped_at,
        "bytes": st.bytes,  # what the last cycle sent
        "age_s": round(time.time() - st.taken_at, 2) if st.taken_at else None,
        "interval_s": spec.interval_s,
        "state": rep.phase,
        "message": st.message or spec.note,
    }


def recover_from_replica(cloud: Cloud, res: Resource) -> Resource:
    """Moves instance res onto the host holding its newest replica, booting from it: that host's agent promotes
    the replica to the instance's root disk (`disks/<id>`), then the record is placed there, and the runtime boots
    a disk that exists as it is. The caller makes sure no copy runs where it was (stopped or fenced): this never
    checks. Its replica then goes the other way (the planner sees the source moved)."""
    rep = replica_of(cloud.store, res.id)
    st = ReplicaStatus.of(rep) if rep is not None else None
    if rep is None or st is None or st.host is None or st.seq is None:
        raise Conflict(f"{res.kind.lower()} {res.name} has no replica yet")
    if res.kind != INSTANCE:
        raise BadRequest("only an instance is recovered from its replica; a volume's replica is promoted by hand")
    holder, store = st.host, cloud.store
    volumes = volume_replicas(cloud, res, holder)  # all of them checked before anything is promoted
    agent = cloud.hosts.agent(holder)
    got = agent.promote_replica(ReplicaSpec.of(rep).volume, disk_of(res.id))
    zone = store.get(HOST_KIND, SYSTEM_TENANT, holder).zone
    ages = [f"root disk from replica {got['seq']}, taken {time.time() - (st.taken_at or 0.0):.1f} s ago"]
    for vol, vrep in volumes:  # placed before the instance: its new host's runtime sees them when it sees it
        if vrep is None:
            follow(cloud, vol, holder, zone)
            continue
        vgot = agent.promote_replica(ReplicaSpec.of(vrep).volume, volume_name(vol.id))
        store.place(vol.id, holder, zone)
        taken = ReplicaStatus.of(vrep).taken_at or 0.0
        ages.append(f"volume {vol.name} from replica {vgot['seq']}, taken {time.time() - taken:.1f} s ago")
    status = InstanceStatus.of(res).model_copy(
        update={"state": "scheduled", "pid": None, "started_at": None, "message": "", "retry_at": None}
    )
    # place: the old host hears that the record left it, and its agent lets go of the old disk
    moved = store.place(res.id, holder, zone, phase="scheduled", status=status.dump())
    store.add_event(moved, "RecoveredFromReplica", f"booting on host {holder}: " + "; ".join(ages))
    return moved


def volume_replicas(cloud: Cloud, res: Resource, holder: str) -> list[tuple[Resource, Resource | None]]:
    """Each volume attached to res with its replica on holder (None: it holds no data yet, and follows empty);
    refused when a volume with data has no replica there: the instance would boot without it."""
    out: list[tuple[Resource, Resource | None]] = []
    for vol in attached_to(cloud, res):
        if not VolumeStatus.of(vol).bound:
            out.append((vol, None))
            continue
        vrep = replica_of(cloud.store, vol.id)
        vst = ReplicaStatus.of(vrep) if vrep is not None else None
        if vrep is None or vst is None or vst.host != holder or vst.seq is None:
            where = f"on host {vst.host}" if vst is not None and vst.host else "anywhere"
            raise Conflict(
                f"volume {vol.name} of instance {res.name} has no replica on host {holder} (its replica is {where}); "
                "give the volume replicas: 1 with its instance's, or recover on its host once that is back"
            )
        out.append((vol, vrep))
    return out


def _wanted(src: Resource) -> tuple[int, float, str]:
    """(replicas, interval, pool volume) a source asks for."""
    if src.kind == INSTANCE:
        ispec = InstanceSpec.of(src)
        return ispec.replicas, ispec.replica_interval_s, disk_of(src.id)
    vspec = VolumeSpec.of(src)
    return vspec.replicas, vspec.replica_interval_s, volume_name(src.id)


class ReplicaPlanner:
    """cloudletd: one Replica record per replicated disk, on the disk's host, naming a live replica host (kept
    while it lives) with its current endpoint and a token for its current key."""

    kind = PLAN

    def __init__(self, cloud: Cloud) -> None:
        self.store = cloud.store
        self._targets: dict[str, tuple[str | None, str | None, str | None]] = {}  # source -> (host, url, key)
        self.watches = {
            INSTANCE: self._source,
            VOLUME: self._source,
            REPLICA: lambda rep: [ReplicaSpec.of(rep).source_id],
            HOST_KIND: self._host,
        }
        # the manager's resync lists records of a kind, and this queue kind has none: look at each source once
        for kind in (INSTANCE, VOLUME):
            for res in self.store.list(kind):
                if _wanted(res)[0] > 0:
                    cloud.manager.enqueue(PLAN, res.id)

    def _source(self, res: Resource) -> list[str]:
        # runs on every instance and volume write: a dict lookup, not a model validation
        return [res.id] if res.id in self._targets or res.spec.get("replicas") else []

    def _host(self, host: Resource) -> list[str]:
        """A host joined, or its agent restarted (a new key): the replicas waiting for it or shipped to it."""
        st = HostStatus.of(host)
        return [
            sid
            for sid, (name, url, key) in self._targets.items()
            if name is None or (name == host.name and (url, key) != (st.endpoint, st.key))
        ]

    def reconcile(self, sid: str) -> Result:
        src = self.store.get_by_id(sid)
        want = src is not None and not src.deleting and src.host is not None and _wanted(src)[0] > 0
        current = None
        for rep in [r for r in self.store.list(REPLICA, tenant=SYSTEM_TENANT, owner=sid) if not r.deleting]:
            if want and src is not None and rep.host == src.host and current is None:
                current = rep
            else:  # not wanted any more, or the source moved: its old host's agent drops what it shipped
                self.store.mark_deleted(rep.id)
        if not want or src is None:
            self._targets.pop(sid, None)
            return Result()
        _, interval, volume = _wanted(src)
        spec = self._plan(src, current, interval, volume)
        if current is None:
            rep = Resource(
                kind=REPLICA,
                tenant=SYSTEM_TENANT,
                name=f"{sid}@{src.host}",
                host=src.host,
                zone=src.zone,
                owner=sid,
                spec=spec.dump(),
                finalizers=[FINALIZER],
                phase="waiting",
            )
            self.store.create(rep, created=f"replica of {src.kind.lower()} {src.name} to host {spec.target_host}")
        elif spec.dump() != current.spec:
            self.store.update_spec(current.id, spec.dump())
        return Result(requeue_after=10.0)  # a replica host that died is replaced at the next look

    def _lead(self, src: Resource) -> tuple[str | None, bool]:
        """A volume attached to a replicated instance ships where the instance's root disk does, so a recovery
        finds both on one host: (that host, False), or (None, True) while the instance has none yet."""
        attachment = VolumeSpec.of(src).attachment if src.kind == VOLUME else None
        inst = self.store.get_by_id(attachment.instance_id) if attachment and attachment.instance_id else None
        if inst is None or inst.host != src.host or not InstanceSpec.of(inst).replicas:
            return None, False
        rep = replica_of(self.store, inst.id)
        target = ReplicaSpec.of(rep).target_host if rep is not None else None
        return target, target is None

    def _plan(self, src: Resource, current: Resource | None, interval: float, volume: str) -> ReplicaSpec:
        hosts = {h.name: h for h in self.store.cached(HOST_KIND).list(SYSTEM_TENANT)}
        old = ReplicaSpec.of(current) if current is not None else None
        target = hosts.get(old.target_host) if old is not None and old.target_host else None
        lead, waiting = self._lead(src)
        if lead is not None and lead in hosts and lead != src.host and hosts[lead].phase in LIVE_PHASES:
            target = hosts[lead]
        elif waiting:
            target = None
        elif target is None or target.name == src.host or target.phase not in LIVE_PHASES:
            # the targets this planner holds (every replica's, once each was planned: a start plans them all), not
            # a listing of every Replica record per choice
            load = Counter(name for name, _, _ in self._targets.values() if name)
            target = choose_replica_host(list(hosts.values()), str(src.host), load)
        spec = ReplicaSpec(
            source_kind=src.kind,  # type: ignore[arg-type]  # Instance or Volume: _wanted read it as one
            source_id=src.id,
            source_name=src.name,
            tenant=src.tenant,
            volume=volume,
            interval_s=interval,
        )
        if target is None:
            self._targets[src.id] = (None, None, None)
            spec.note = (
                "waiting for its instance's replica host (a volume's replica goes where its instance's does)"
                if waiting
                else f"no other live host can hold a replica of {src.kind.lower()} {src.name}: "
                "add one in another zone (cloudlet host add NAME --zone ZONE)"
            )
            return spec
        st = HostStatus.of(target)
        self._targets[src.id] = (target.name, st.endpoint, st.key)
        spec.target_host, spec.target_zone = target.name, target.zone
        if st.endpoint and st.key:
            spec.endpoint, spec.token = st.endpoint, replica_token(st.key, volume)
        else:
            spec.note = f"waiting for host {target.name} to report its agent's endpoint"
        return spec


class ReplicationReconciler(KindReconciler):
    """Agent, on the source's host: one replication cycle per interval for each Replica record of this host."""

    kind = REPLICA

    def __init__(self, ctx: HostContext) -> None:
        super().__init__(ctx.store)
        self.ctx = ctx
        self._clients: dict[tuple[str, str, str], ReplicaClient] = {}

    def serves(self, res: Resource) -> bool:
        return res.host == self.ctx.host

    def _client(self, spec: ReplicaSpec) -> ReplicaClient:
        key = (str(spec.target_host), str(spec.endpoint), str(spec.token))
        if key not in self._clients:
            self._clients[key] = ReplicaClient(*key)
        return self._clients[key]

    def converge(self, rep: Resource) -> Result:
        spec, old = ReplicaSpec.of(rep), ReplicaStatus.of(rep)
        st, pool, now = old.model_copy(), self.ctx.pool, time.time()
        again: float | None = spec.interval_s
        if not (spec.target_host and spec.endpoint and spec.token):
            st.message = spec.note or "waiting for a replica host"
        elif not pool.capabilities.replication:
            st.message, again = f"replication needs the btrfs pool; host {self.ctx.host} has the {pool.name} pool", None
        elif not pool.exists(spec.volume):
            st.message = f"waiting for {spec.volume} to be made"
        else:
            due = next_cycle_at(st.taken_at or 0.0, spec.interval_s, st.ship_s or 0.0)
            if st.host == spec.target_host and not st.message and now < due:
                return Result(requeue_after=due - now)
            try:
                st = self._ship(spec, st)
                again = max(0.0, next_cycle_at(st.taken_at or now, spec.interval_s, st.ship_s or 0.0) - time.time())
            except (CloudletError, httpx.HTTPError) as exc:
                detail = exc.message if isinstance(exc, CloudletError) else str(exc)
                st.message = f"shipping {spec.volume} to host {spec.target_host} failed: {detail}"
                if st.message != old.message:
                    self._event(spec, rep, "ReplicaFailed", st.message, "Warning")
        self._age(spec, rep, st)
        phase = "stale" if st.stale else "current" if st.taken_at and not st.message else "waiting"
        if st != old or phase != rep.phase:
            self.records.update_status(rep.id, status=st.dump(), phase=phase, observed_generation=rep.generation)
        return Result(requeue_after=again)

    def _ship(self, spec: ReplicaSpec, st: ReplicaStatus) -> ReplicaStatus:
        pool, d, client = self.ctx.pool, replica_dir(spec.volume), self._client(spec)
        for stale in pool.path(d).glob("*.partial"):  # a cycle cut short (agent killed)
            pool.delete(f"{d}/{stale.name}")
        have, local = set(client.seqs(spec.volume)), seqs(pool, spec.volume)
        parent = max((s for s in local if s in have), default=None)  # none in common: a full send
        seq = max([*local, *have, st.seq or 0]) + 1
        partial = f"{d}/{seq}.partial"
        taken, t0 = time.time(), time.perf_counter()
        pool.snapshot(spec.volume, partial, readonly=True)
        try:
            stream = pool.send(partial, f"{d}/{parent}" if parent else None)
            client.put(spec.volume, seq, stream, parent)
        except BaseException:
            pool.delete(partial)
            raise
        pool.seal(partial, f"{d}/{seq}")
        prune(pool, spec.volume)
        return st.model_copy(
            update={
                "host": spec.target_host,
                "seq": seq,
                "taken_at": taken,
                "shipped_at": time.time(),
                "ship_s": round(time.perf_counter() - t0, 3),
                "bytes": stream.sent,
                "message": "",
            }
        )

    def _age(self, spec: ReplicaSpec, rep: Resource, st: ReplicaStatus) -> None:
        """ReplicaStale once the newest replica is older than three intervals, ReplicaCurrent when it caught up."""
        age = time.time() - (st.taken_at or rep.created_at)
        limit = STALE_AFTER_INTERVALS * spec.interval_s
        if not st.taken_at:  # the first one waits for its disk to be made, and is a full send
            limit = max(limit, FIRST_GRACE_S)
        what = f"{spec.source_kind.lower()} {spec.source_name}"
        if age > limit and not st.stale:
            st.stale = True
            where = f"on host {st.host}" if st.taken_at else "anywhere yet"
            message = f"the newest replica of {what} {where} is {age:.1f} s old (interval {spec.interval_s:g} s)"
            self._event(spec, rep, "ReplicaStale", message + (f": {st.message}" if st.message else ""), "Warning")
        elif age <= limit and st.stale:
            st.stale = False
            self._event(spec, rep, "ReplicaCurrent", f"the replica of {what} on host {st.host} is current again")

    def _event(self, spec: ReplicaSpec, rep: Resource, reason: str, message: str, type_: str = "Normal") -> None:
        """On the source, where its tenant sees it, and on the Replica record."""
        src = self.records.get_by_id(spec.source_id)
        for res in (src, rep) if src is not None else (rep,):
            self.records.add_event(res, reason, message, type_)

    def cleanup(self, rep: Resource) -> None:
        """What this host shipped goes, and (if the replica host answers) what it holds of it."""
        spec = ReplicaSpec.of(rep)
        drop(self.ctx.pool, spec.volume)
        if spec.target_host and spec.endpoint and spec.token:
            try:
                self._client(spec).drop(spec.volume)
            except (CloudletError, httpx.HTTPError) as exc:  # it may be the host that died: nothing to wait for
                log.warning("replicas of %s left on host %s: %s", spec.volume, spec.target_host, exc)
