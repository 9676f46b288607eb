"""An agent's scoped view (CLOUDLET_AGENT_VIEW=tenants, what large clouds and the 1,000-host simulation run): it holds
another host's instances, networks and the rest of SCOPED_KINDS only for the tenants it runs something for, takes a
tenant in (listed) with its first record on the host, follows its writes, and lets it go with its last."""

from __future__ import annotations

from pathlib import Path

from cloudlet.agent.agent import Agent
from cloudlet.api.routes.system import TenantCreate, create_tenant
from cloudlet.compute import instances
from cloudlet.core.clock import VirtualClock
from cloudlet.core.config import SCOPED_VIEW
from cloudlet.core.context import Caller
from cloudlet.network import networks
from tests.helpers import fake_cloud

ADMIN = Caller("admin", "admin")


def held(agent: Agent, kind: str) -> set[str]:
    return {f"{r.tenant}/{r.name}" for r in agent.cache.list(kind)}


def test_a_scoped_agent_holds_the_tenants_it_runs_something_for(tmp_path: Path) -> None:
    clock = VirtualClock()
    sim = fake_cloud(tmp_path, clock=clock, boot_seconds=1.0, agent_view=SCOPED_VIEW)
    cloud = sim.cloud
    h2 = sim.add_host("h2", "zone-b")
    for i, tenant in enumerate(("acme", "globex")):
        create_tenant(TenantCreate(name=tenant), cloud, ADMIN)
        networks.create_network(cloud, Caller(tenant, "admin"), "net", f"10.241.{i}.0/24")

    def launch(tenant: str, name: str, zone: str) -> None:
        req = instances.InstanceCreate(name=name, image="busybox", network="net", zone=zone)
        instances.launch(cloud, Caller(tenant, "admin"), req)
        sim.run_until_idle(until=clock.now() + 30)

    launch("acme", "a1", "zone-a")
    launch("globex", "g1", "zone-a")
    local = sim.agents["local"]
    assert held(local, instances.KIND) == {"acme/a1", "globex/g1"}
    assert held(h2, instances.KIND) == set() and held(h2, networks.KIND) == set()
    assert h2.cache.list("Image"), "images are every host's, whoever it runs for"

    launch("acme", "a2", "zone-b")  # acme's first record on h2: its instances and networks are listed in
    assert held(h2, instances.KIND) == {"acme/a1", "acme/a2"}
    assert held(h2, networks.KIND) == {"acme/net"}
    a1 = cloud.store.get(instances.KIND, "acme", "a1")
    cloud.store.edit_labels(a1.id, {"seen": "yes"})  # a later write of a1 comes by the scoped watch
    g1 = cloud.store.get(instances.KIND, "globex", "g1")
    cloud.store.edit_labels(g1.id, {"seen": "yes"})
    sim.run_until_idle(until=clock.now() + 5)
    assert h2.cache.get(instances.KIND, "acme", "a1").labels.get("seen") == "yes"
    assert held(h2, instances.KIND) == {"acme/a1", "acme/a2"}

    # the agent restarts from its disk cache: the view and its tenants come back with it
    h2.cache.path = tmp_path / "h2-cache.json"
    h2.cache._dirty = True
    h2.cache.save()
    again = sim.add_host("h2", "zone-b", compute=h2.ctx.compute, pool=h2.ctx.pool, cache=h2.cache.path)  # type: ignore[arg-type]
    assert again.cache.scope == frozenset({"acme"})
    sim.run_until_idle(until=clock.now() + 5)
    assert held(again, instances.KIND) == {"acme/a1", "acme/a2"}

    a2 = cloud.store.get(instances.KIND, "acme", "a2")
    instances.delete_instance(cloud, Caller("acme", "admin"), a2.name)
    sim.run_until_idle(until=clock.now() + 30)  # acme's last record on h2 is gone: so is the rest of acme there
    assert held(again, instances.KIND) == set() and held(again, networks.KIND) == set()
    assert again.cache.scope == frozenset()
    assert held(local, instances.KIND) == {"acme/a1", "globex/g1"}  # local runs both: it holds both
