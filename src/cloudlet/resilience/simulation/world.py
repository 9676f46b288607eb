"""A simulated cloud to break: `SimCloud` (the real control plane and one real Agent per host, fake drivers, virtual
clock) with every host's transport cuttable, a `SimPool` that replicates, a fake fence that kills for sure, and a
seeded workload whose every create the API answered is remembered (`acknowledged`).

Stepped, never threaded: `step()` is one virtual second (the agents' heartbeat period): heartbeats of the hosts
that can beat, lease watchdogs, then the control plane and every live agent are run until nothing is due before
the next second, jumping the clock from one due key to the next.
"""

from __future__ import annotations

__all__ = ["World", "STEP"]

import ipaddress
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudlet.agent.agent import Agent
from cloudlet.agent.transport import LocalControlPlane
from cloudlet.api.routes.system import TenantCreate, create_tenant
from cloudlet.compute import instances
from cloudlet.compute.drivers.fake import FakeDriver
from cloudlet.compute.hosts import AGENT_KINDS, GLOBAL_KINDS
from cloudlet.core import quota
from cloudlet.core.clock import VirtualClock
from cloudlet.core.config import SCOPED_VIEW
from cloudlet.core.context import HOST_ROLE, SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.errors import CloudletError
from cloudlet.core.kinds import TENANT
from cloudlet.core.records import Resource
from cloudlet.daemon import bootstrap, build_control_plane
from cloudlet.network import eips, networks
from cloudlet.resilience.fence import FakeFence
from cloudlet.resilience.lease import Peer, PeerAnswer
from cloudlet.resilience.monitor import MONITOR
from cloudlet.resilience.sim import SimCloud
from cloudlet.resilience.simulation.determinism import seed_queues
from cloudlet.resilience.simulation.standins import CutTransport, SimHosts, SimPool, SimReplicaClient
from cloudlet.stacks import stacks
from cloudlet.storage.resource import REPLICA, ReplicaSpec

STEP = 1.0  # seconds of virtual time per step: the heartbeat period
RESYNC = 30  # steps between resyncs: every reconciler looks at every record again (Manager.resync)
ADMIN = Caller("admin", "admin")
TENANTS = ("admin", "acme", "globex")
PER_TENANT = 20  # instances per tenant in a large world (World.populate)
MAX_TENANTS = 1500  # their fleet networks' /24s fit below the stacks' subnets (10.248.0.0)
FLEET = "fleet"  # each tenant's network for the instances outside stacks (stacks have their own)
HOST_CPUS, HOST_MEMORY = 64, 256 * 1024
STACK_DOC = """\
name: {name}
networks:
  net: {{subnet: {subnet}}}
layers:
  {name}web:
    count: {web}
    memory: 32
  {name}db:
    count: 1
    memory: 32
    replicas: 1
    replica_interval_s: {interval}
load_balancers:
  front: {{layer: {name}web, port: 80}}
"""
STACK_EIP = """\
eips:
  public: {load_balancer: front}
"""
EIPS = 200  # of the cloud's pool of 253 (network/outside.py): half for stacks' load balancers, half for instances


class World:
    def __init__(self, home: Path, clock: VirtualClock, seed: int, hosts: int, zones: int) -> None:
        self.seed = seed
        self.clock = clock
        self.dead: set[str] = set()  # powered off (crashed or fenced): neither its agent nor its instances run
        self.cut_cp: set[str] = set()  # cannot reach the control plane
        self.cut_peers: set[str] = set()  # cannot reach other hosts either
        self.cp_down = False
        self.steps = 0
        # hosts whose agent has not caught up since a write it sees (its scoped view: compute/hosts.py SCOPED_KINDS)
        self.stale: set[str] = set()
        self.scopes: dict[str, frozenset[str]] = {}  # host -> the tenants its agent's view held at its last catch-up
        self.viewers: dict[str, set[str]] = {}  # tenant -> the hosts whose view holds it
        # when each host last stopped serving (powered off, cut off from everybody, self-fenced): the RPO check
        # measures the data a recovery lost from then
        self.failed_at: dict[str, float] = {}
        self.outages: dict[str, list[list[float]]] = {}  # host -> [[from, until]] (until: inf while it lasts)
        self.self_fenced: set[str] = set()
        self.jumps: list[tuple[float, float]] = []  # (when, seconds) the clock leapt: nothing ran, nothing was written
        self.hosts = SimHosts(self._answers)
        self.pools: dict[str, SimPool] = {}
        self.fence = FakeFence(kill=self.power_off)
        self.sim = SimCloud(
            home, clock=self.clock, failure_detection=True, hosts=self.hosts, pool=self._pool, agent_view=SCOPED_VIEW
        )
        self.names = [self.sim.config.host] + [f"h{i:04d}" for i in range(1, hosts)]
        self.zone_of = {n: f"zone-{'abcdefghij'[i % zones]}" for i, n in enumerate(self.names)}
        self._wire(self.sim.agents[self.sim.config.host])
        for name in self.names[1:]:
            self._wire(self.sim.add_host(name, self.zone_of[name], HOST_CPUS, HOST_MEMORY))
        self.zone_of[self.sim.config.host] = self.sim.agents[self.sim.config.host].ctx.zone
        self._control_plane_wiring()
        self.acknowledged: dict[str, tuple[str, str, str]] = {}  # id -> (kind, tenant, name): creates answered
        self.deleted: set[str] = set()  # ids deleted by request
        self.stacks: list[tuple[str, str]] = []  # (tenant, name)
        self.tenants: list[str] = []
        self.settle(self.clock.now() + 3 * STEP)

    # wiring
    def _pool(self) -> SimPool:
        return SimPool(self.clock)

    @property
    def cloud(self) -> Cloud:
        return self.sim.cloud

    @property
    def agents(self) -> dict[str, Agent]:
        return self.sim.agents

    def driver(self, host: str) -> FakeDriver:
        return self.agents[host].ctx.compute  # type: ignore[return-value]

    def _wire(self, agent: Agent) -> None:
        """Cuttable transport, an endpoint (replica tokens wait for one), peers asked in-process, replica shipping
        into the target's pool."""
        name = agent.host
        if not isinstance(agent.cp, CutTransport):
            agent.cp = CutTransport(agent.cp)
        agent.cp.cut = name in self.cut_cp or self.cp_down
        agent.endpoint = f"sim://{name}"
        agent.lease.ask = self._asker(name)
        assert isinstance(agent.ctx.pool, SimPool)
        self.pools[name] = agent.ctx.pool
        replicator = agent.manager.reconcilers[REPLICA]
        replicator._client = self._replica_client(name)  # type: ignore[attr-defined]
        seed_queues([agent.manager], self.seed, name)
        self.stale.add(name)

    def _replica_client(self, source: str) -> Callable[[ReplicaSpec], SimReplicaClient]:
        def client(spec: ReplicaSpec) -> SimReplicaClient:
            self.hosts.sources[spec.volume] = (source, spec.interval_s)
            return SimReplicaClient(source, str(spec.target_host), self.pools, self.reach, self.hosts.taken)

        return client

    def _control_plane_wiring(self) -> None:
        self.cloud.store.listeners.append(self._on_write)
        self.cloud.manager.reconcilers[MONITOR].fence = self.fence  # type: ignore[attr-defined]
        seed_queues([self.cloud.manager], self.seed, "cloudletd")

    def _on_write(self, res: Resource, spec_side: bool) -> None:
        """Marks the agents whose watch would answer this write: its host's, and those whose view holds its tenant
        (which takes in a record's old host after a move); every one for the kinds every host holds."""
        if res.kind in GLOBAL_KINDS:
            self.stale.update(self.agents)
        elif res.kind in AGENT_KINDS:
            self.stale.update(self.viewers.get(res.tenant, ()))
            if res.host is not None:
                self.stale.add(res.host)

    def _caught_up(self, agent: Agent) -> None:
        self.stale.discard(agent.host)
        scope = agent.cache.scope or frozenset()
        old = self.scopes.get(agent.host, frozenset())
        if scope != old:
            for tenant in old - scope:
                self.viewers[tenant].discard(agent.host)
            for tenant in scope - old:
                self.viewers.setdefault(tenant, set()).add(agent.host)
            self.scopes[agent.host] = scope

    def reseed(self, seed: int) -> None:
        """The faults' seed: every work queue's backoff jitter from here on."""
        self.seed = seed
        seed_queues([self.cloud.manager], seed, "cloudletd")
        for name, agent in self.agents.items():
            seed_queues([agent.manager], seed, name)

    def _answers(self, host: str) -> bool:
        """Whether the control plane's call to host's agent gets through."""
        return host not in self.dead and host not in self.cut_cp

    def reach(self, a: str, b: str) -> bool:
        """Whether host a's agent reaches host b's."""
        return not {a, b} & (self.dead | self.cut_peers) and b in self.agents

    def _asker(self, me: str) -> Callable[[list[Peer]], list[PeerAnswer | None]]:
        def ask(peers: list[Peer]) -> list[PeerAnswer | None]:
            return [PeerAnswer(**self.agents[p.host].lease.answer()) if self.reach(me, p.host) else None for p in peers]

        return ask

    def live(self) -> list[Agent]:
        return [a for n, a in self.agents.items() if n not in self.dead]

    # stepping
    def settle(self, until: float) -> int:
        """Runs control plane and live agents until nothing is due before `until`; the clock ends there."""
        done, quiet = 0, 0
        while True:
            n = 0 if self.cp_down else self.cloud.manager.run_ready()
            for agent in self.live():
                try:
                    # a watch with nothing an agent sees written since its last one answers nothing: skip it
                    if agent.host in self.stale or agent.cache.pending_ops():
                        agent.sync()
                        self._caught_up(agent)
                except CloudletError:
                    pass  # cut off: it works from its cache, the outbox keeps its writes
                n += agent.manager.run_ready()
            done += n
            quiet = quiet + 1 if n == 0 else 0
            if quiet < 2:
                continue
            managers = [a.manager for a in self.live()] + ([] if self.cp_down else [self.cloud.manager])
            due = [d for d in (m.queue.next_due() for m in managers) if d is not None]
            if not due or min(due) > until:
                self.clock.advance_to(until)
                return done
            self.clock.advance_to(min(due))
            quiet = 0

    def step(self) -> None:
        if self.steps % RESYNC == 0:  # what each manager's resync thread does
            for manager in [a.manager for a in self.live()] + ([] if self.cp_down else [self.cloud.manager]):
                manager.enqueue_all()
        for agent in self.live():
            try:
                agent.heartbeat()
            except CloudletError:
                pass  # the lease notes it: the watchdog acts when it runs out
        for agent in self.live():
            agent.lease.check()
            if agent.lease.fenced != (agent.host in self.self_fenced):  # its HA instances stopped, or may start
                self.self_fenced ^= {agent.host}
                (self.failed if agent.lease.fenced else self.serving)(agent.host)
        self.settle(self.clock.now() + STEP)
        self.steps += 1

    # faults: each one a real action on the simulated system
    def power_off(self, host: str) -> None:
        """A crash, or the fake fence: every process of the host dies, its agent with them."""
        self.failed(host)
        self.dead.add(host)
        driver = self.driver(host)
        for iid in sorted(driver.list_instances()):
            driver.stop_instance(iid)

    def failed(self, host: str) -> None:
        spans = self.outages.setdefault(host, [])
        if not spans or spans[-1][1] != math.inf:
            spans.append([self.clock.now(), math.inf])
            self.failed_at[host] = self.clock.now()

    def serving(self, host: str) -> None:
        for span in self.outages.get(host, [])[-1:]:
            span[1] = min(span[1], self.clock.now())

    def was_down(self, host: str, start: float, end: float) -> bool:
        """Whether host failed at some time between start and end."""
        return any(a <= end and b >= start for a, b in self.outages.get(host, []))

    def down_for(self, host: str, start: float, end: float) -> float:
        """Seconds host was down (its instances wrote nothing) between start and end."""
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.outages.get(host, []))

    def restart_agent(self, host: str, boot: bool = False) -> None:
        """A new agent process for host, from the cache the old one kept on disk (`boot`: after a power-off, its
        instances are down; else they ran on without their agent)."""
        old = self.agents[host]
        old.cache.path = self.sim.config.home / f"cache-{host}.json"
        old.cache._dirty = True  # saved as the old process last did
        old.cache.save()
        compute = self.driver(host)
        agent = self.sim.add_host(
            host, self.zone_of[host], HOST_CPUS, HOST_MEMORY, compute=compute, pool=old.ctx.pool, cache=old.cache.path
        )
        if boot:
            self.dead.discard(host)
            self.serving(host)
        self._wire(agent)
        agent.manager.enqueue_all()  # as its start does
        if boot:
            self.driver(host).instances.clear()

    def jump(self, seconds: float) -> None:
        self.jumps.append((self.clock.now(), seconds))
        self.clock.advance(seconds)

    def cut(self, host: str, peers: bool) -> None:
        self.cut_cp.add(host)
        self.agents[host].cp.cut = True  # type: ignore[attr-defined]
        if peers:
            self.cut_peers.add(host)
            self.failed(host)

    def heal(self, host: str) -> None:
        if host not in self.dead:
            self.serving(host)
        self.cut_cp.discard(host)
        self.cut_peers.discard(host)
        self.agents[host].cp.cut = self.cp_down  # type: ignore[attr-defined]

    def stop_control_plane(self) -> None:
        self.cp_down = True
        for agent in self.agents.values():
            agent.cp.cut = True  # type: ignore[attr-defined]

    def start_control_plane(self) -> None:
        """A new cloudletd process over the same database: every controller starts afresh."""
        self.cloud.store.close()
        self.sim.cloud = cloud = build_control_plane(self.sim.config, self.clock, self.hosts)
        bootstrap(cloud)
        self.cp_down = False
        self._control_plane_wiring()
        cloud.manager.enqueue_all()  # as its start does
        for name, agent in self.agents.items():
            caller = Caller(SYSTEM_TENANT, HOST_ROLE, host=name)
            agent.cp.inner = LocalControlPlane(cloud.agent_api, caller)  # type: ignore[attr-defined]
            agent.cp.cut = name in self.cut_cp  # type: ignore[attr-defined]

    def duplicate(self, rng: random.Random) -> None:
        """The checker's own test: starts a running instance's copy on a second host, as a broken fence would."""
        running = [
            (h, i)
            for h in self.names
            if h not in self.dead
            for i in sorted(self.driver(h).list_instances())
            if self.driver(h).instances[i].started_at is not None
        ]
        if not running:
            return
        host, iid = rng.choice(running)
        other = rng.choice([h for h in self.names if h not in self.dead and h != host] or [host])
        self.driver(other).start_instance(self.driver(host).instances[iid].spec)

    # the workload
    def populate(self, count: int, rng: random.Random) -> None:
        """`count` instances: a sixth in stacks (HA web layers behind an LB with an EIP, a replicated db; layers are
        named after their stack, as instance names are unique in a tenant), the rest plain, HA, replicated HA, some
        holding an EIP, over three tenants and one more per PER_TENANT instances beyond: as a large cloud is shared,
        and each agent's view holds the tenants it runs something for."""
        for i in range(max(len(TENANTS), min(MAX_TENANTS, count // PER_TENANT))):
            tenant = TENANTS[i] if i < len(TENANTS) else f"t{i:04d}"
            if tenant != "admin":
                create_tenant(TenantCreate(name=tenant), self.cloud, ADMIN)
                rec = self.cloud.store.get(TENANT, tenant, tenant)
                unlimited = {m.name: 10**9 for m in quota.meters()}
                self.cloud.store.update_spec(rec.id, {**rec.spec, "quota": unlimited})
                self._ack(rec.id, TENANT, tenant, tenant)
            subnet = f"{ipaddress.IPv4Address('10.241.0.0') + 256 * i}/24"
            net = networks.create_network(self.cloud, Caller(tenant, "admin"), FLEET, subnet)
            self._ack(net.id, net.kind, tenant, net.name)
            self.tenants.append(tenant)
        in_stacks = count // 6
        made = 0
        while made < in_stacks:
            tenant = rng.choice(self.tenants)
            web = min(rng.randint(3, 5), max(1, in_stacks - made - 1))
            name = f"s{len(self.stacks):05d}"
            subnet = f"{ipaddress.IPv4Address('10.248.0.0') + 32 * len(self.stacks)}/27"
            doc = STACK_DOC.format(name=name, web=web, interval=rng.choice([2, 5]), subnet=subnet)
            doc += STACK_EIP if len(self.stacks) < EIPS // 2 else ""
            stacks.apply_stack(self.cloud, Caller(tenant, "admin" if tenant == "admin" else "member"), doc)
            rec = self.cloud.store.get(stacks.KIND, tenant, name)
            self._ack(rec.id, rec.kind, tenant, name)
            self.stacks.append((tenant, name))
            made += web + 1
        held = 0  # EIPs of plain instances
        for i in range(count - made):
            tenant = rng.choice(self.tenants)
            caller = Caller(tenant, "admin" if tenant == "admin" else "member")
            kind = rng.random()
            replicated = kind < 0.15
            body = {"name": f"vm-{i:05d}", "image": "busybox", "memory_mib": 32, "network": FLEET}
            if replicated:
                body.update(replicas=1, replica_interval_s=rng.choice([2, 5]))
            # HA (half of them): recovery may start it elsewhere once its host is fenced or its lease ran out
            req = instances.InstanceCreate.model_validate({**body, "ha": kind < 0.5})
            res = instances.launch(self.cloud, caller, req)
            self._ack(res.id, res.kind, tenant, res.name)
            if kind < 0.5 and rng.random() < 0.1 and held < EIPS - min(len(self.stacks), EIPS // 2):
                held += 1
                eip = eips.allocate_eip(self.cloud, caller, f"ip-{i:05d}")
                eips.associate_eip(self.cloud, caller, eip.name, "Instance", res.name)
                self._ack(eip.id, eip.kind, tenant, eip.name)

    def _ack(self, rid: str, kind: str, tenant: str, name: str) -> None:
        self.acknowledged[rid] = (kind, tenant, name)

    def describe(self) -> dict[str, Any]:
        return {"hosts": len(self.names), "zones": len(set(self.zone_of.values())), "stacks": len(self.stacks)}
