"""Load balancers on the fake drivers: placement and address, the spec's service functions, the HAProxy config
rendered from them, deletion (the real process is tests/integration/test_lb.py's)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cloudlet.compute import instances
from cloudlet.core.clock import VirtualClock
from cloudlet.core.context import Caller
from cloudlet.core.errors import Conflict, InvalidSpec, NotFound
from cloudlet.lb import loadbalancers as lbs
from cloudlet.lb.haproxy import READONLY_PAGE, Frontend, Server, parse_stat, render
from cloudlet.lb.resource import LAYER_LABEL, STACK_LABEL, LoadBalancerSpec, members_of
from cloudlet.resilience.sim import SimCloud
from tests.helpers import fake_cloud

ADMIN = Caller("admin", "admin")


@pytest.fixture
def sim(tmp_path: Path) -> SimCloud:
    return fake_cloud(tmp_path, clock=VirtualClock(), boot_seconds=0.1)


def test_create_places_with_an_address_and_runs(sim: SimCloud) -> None:
    cloud = sim.cloud
    instances.launch(cloud, ADMIN, instances.InstanceCreate(name="web-1", image="busybox"))
    lbs.create_lb(cloud, ADMIN, lbs.LoadBalancerCreate(name="front", members=["web-1", "web-2"]))
    sim.run_until_idle()
    view = lbs.lb_view(cloud.store.get(lbs.KIND, "admin", "front"))
    assert view["state"] == "running" and view["host"] is not None and view["ip"].startswith("10.240.")
    assert view["ip"] != instances.instance_view(cloud.store.get(instances.KIND, "admin", "web-1"))["ip"]
    assert view["balance"] == "latency" and view["members"] == ["web-1", "web-2"]
    with pytest.raises(Conflict, match="already exists"):
        lbs.create_lb(cloud, ADMIN, lbs.LoadBalancerCreate(name="front"))
    with pytest.raises(InvalidSpec, match="either members or a layer"):
        lbs.create_lb(cloud, ADMIN, lbs.LoadBalancerCreate(name="both", members=["a"], layer="shop/web"))
    with pytest.raises(NotFound, match="network create"):
        lbs.create_lb(cloud, ADMIN, lbs.LoadBalancerCreate(name="nonet", network="nope"))


def test_readonly_drain_members_and_layer(sim: SimCloud) -> None:
    cloud = sim.cloud
    lbs.create_lb(cloud, ADMIN, lbs.LoadBalancerCreate(name="front", members=["a"]))
    res = lbs.set_readonly(cloud, ADMIN, "front", True)
    assert LoadBalancerSpec.of(res).readonly is True
    res = lbs.set_member_drained(cloud, ADMIN, "front", "a", True)
    assert LoadBalancerSpec.of(res).drained == ["a"]
    res = lbs.set_member_drained(cloud, ADMIN, "front", "a", False)
    assert LoadBalancerSpec.of(res).drained == []
    res = lbs.change_members(cloud, ADMIN, "front", lbs.MembersChange(add=["b", "c"], remove=["a"]))
    assert LoadBalancerSpec.of(res).members == ["b", "c"]
    lbs.create_lb(cloud, ADMIN, lbs.LoadBalancerCreate(name="tier", layer="shop/web"))
    with pytest.raises(Conflict, match="follows layer"):
        lbs.change_members(cloud, ADMIN, "tier", lbs.MembersChange(add=["x"]))
    labels = {STACK_LABEL: "shop", LAYER_LABEL: "web"}
    instances.launch(cloud, ADMIN, instances.InstanceCreate(name="web-1", image="busybox", labels=labels))
    instances.launch(cloud, ADMIN, instances.InstanceCreate(name="db-1", image="busybox"))
    tier = cloud.store.get(lbs.KIND, "admin", "tier")
    assert [i.name for i in members_of(cloud.store, tier)] == ["web-1"]


def test_delete_collects_the_record(sim: SimCloud) -> None:
    cloud = sim.cloud
    lbs.create_lb(cloud, ADMIN, lbs.LoadBalancerCreate(name="front"))
    sim.run_until_idle()
    lbs.delete_lb(cloud, ADMIN, "front")
    sim.run_until_idle()
    assert not cloud.store.list(lbs.KIND, tenant="admin")
    with pytest.raises(NotFound):
        lbs.set_readonly(cloud, ADMIN, "front", True)


def test_render_config(tmp_path: Path) -> None:
    fe = Frontend("10.240.0.9", 80, "roundrobin", "http:/health", True, 400)
    text = render(tmp_path, fe, [Server("a", "10.240.0.2", 8080, 256), Server("b", "10.240.0.3", 8080, 0)])
    assert "bind 10.240.0.9:80" in text and "option httpchk GET /health" in text
    assert "server a 10.240.0.2:8080 check weight 256" in text and "server b 10.240.0.3:8080 check weight 0" in text
    assert "timeout server 400ms" in text and "retry-on conn-failure empty-response response-timeout" in text
    assert "http-request disable-l7-retry if !METH_GET" in text  # writes are never replayed
    assert "hard-stop-after 30s" in text  # an old worker held open by a trickling member goes after 30 s
    assert READONLY_PAGE in text and "if !METH_GET" in text
    assert READONLY_PAGE not in render(tmp_path, Frontend("10.240.0.9", 80, "leastconn", "tcp", False, 400), [])
    if shutil.which("haproxy"):
        (tmp_path / "h.cfg").write_text(text)
        proc = subprocess.run(["haproxy", "-c", "-q", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_parse_stat() -> None:
    text = "# pxname,svname,scur,status,weight\nweb,FRONTEND,0,OPEN,\nmembers,a,2,UP,256\nmembers,BACKEND,2,UP,256\n"
    assert parse_stat(text) == {"a": {"pxname": "members", "svname": "a", "scur": "2", "status": "UP", "weight": "256"}}
