"""Security groups without a kernel: the nft renderer (its text checked by `nft -c` where nft and root allow),
the service rules (bounds, ids, 4xx that say what to fix) and the agent's plumber on the fake driver."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cloudlet.compute import instances
from cloudlet.compute.resource import InstanceSpec, InstanceStatus
from cloudlet.core.clock import VirtualClock
from cloudlet.core.context import Caller
from cloudlet.core.errors import Conflict, InvalidSpec, NotFound
from cloudlet.network import secgroups
from cloudlet.network.drivers.fake import FakeNetworkDriver
from cloudlet.network.nft_secgroups import DENY_INGRESS, render_antispoof, render_ingress, rule_match
from cloudlet.network.resource import SecurityGroupRule
from cloudlet.network.secgroups import RuleCreate, SecGroupCreate
from cloudlet.resilience.sim import SimCloud
from tests.helpers import fake_cloud

G1, G2 = "01j" + "a" * 23, "01j" + "b" * 23
I1 = "01j" + "c" * 23


def _nft_check(text: str) -> None:
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("nft -c needs root and nft")
    proc = subprocess.run(["unshare", "-n", "nft", "-c", "-f", "-"], input=text.encode(), capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode() + text


def _rule(
    protocol: str, ports: str | None = None, cidr: str | None = None, source: str | None = None
) -> SecurityGroupRule:
    return SecurityGroupRule(
        id=secgroups.rule_id(protocol, ports, cidr, source),
        protocol=protocol,
        ports=ports,
        cidr=cidr,
        source_group=source,
    )


def test_rule_matches() -> None:
    assert rule_match(_rule("tcp", "80", "0.0.0.0/0")) == "tcp dport 80"
    assert rule_match(_rule("udp", "8000-8100", "10.0.0.0/8")) == "ip saddr 10.0.0.0/8 udp dport 8000-8100"
    assert rule_match(_rule("tcp", None, "10.0.0.0/8")) == "ip saddr 10.0.0.0/8 meta l4proto tcp"
    assert rule_match(_rule("icmp", source=G2)) == f"ip saddr @m_{G2} meta l4proto icmp"
    assert rule_match(_rule("all", cidr="0.0.0.0/0")) == "meta nfproto ipv4"


def test_ingress_table_names_and_syntax() -> None:
    rules = [_rule("tcp", "80", "0.0.0.0/0"), _rule("icmp", source=G2), _rule("udp", "53", "10.240.0.0/12")]
    text = render_ingress([(G1, rules), (G2, [])], {G1: ["10.240.0.3", "10.240.0.2"]})
    assert text.startswith("table inet cl_sg\ndelete table inet cl_sg\n")  # one file: replaced atomically
    assert f"set m_{G1} {{" in text and "elements = { 10.240.0.2, 10.240.0.3 }" in text
    assert f"set m_{G2} {{" in text  # a source group with no member still has its (empty) set
    assert f"chain sg_{G1} {{" in text and f"ip saddr @m_{G1} accept" in text
    assert text.index(f"jump sg_{G1}") < text.index(f"jump sg_{G2}")
    assert f'comment "{rules[0].id}"' in text and "policy drop;" in text
    _nft_check(text)


def test_no_groups_lets_nothing_new_in() -> None:
    text = render_ingress([], {})
    assert "jump" not in text and "policy drop;" in text
    _nft_check(text)
    _nft_check(DENY_INGRESS)


def test_antispoof_table() -> None:
    text = render_antispoof({I1: "10.240.0.2"})
    assert f'"v{I1[-10:]}" : jump p_{I1}' in text
    assert "ip saddr 10.240.0.2 return" in text and "arp saddr ip 10.240.0.2 return" in text
    assert "ether saddr" not in text  # a port whose MAC is unknown is held to its address only
    _nft_check(text)
    text = render_antispoof({I1: "10.240.0.2"}, {I1: "02:00:00:00:00:01"})
    assert "ether saddr != 02:00:00:00:00:01 drop" in text and "arp saddr ether != 02:00:00:00:00:01 drop" in text
    _nft_check(text)
    _nft_check(render_antispoof({}))


@pytest.fixture
def sim(tmp_path: Path) -> SimCloud:
    return fake_cloud(tmp_path, clock=VirtualClock(), boot_seconds=0.1)


def test_rule_ids_bounds_and_errors(sim: SimCloud) -> None:
    cloud, me = sim.cloud, Caller("admin", "admin")
    web = secgroups.create_secgroup(cloud, me, SecGroupCreate(name="web"))
    res = secgroups.add_rule(cloud, me, "web", RuleCreate(protocol="tcp", ports="0080", cidr="0.0.0.0/0"))
    (rule,) = secgroups.secgroup_view(cloud, res)["rules"]
    assert rule["ports"] == "80" and rule["id"] == secgroups.rule_id("tcp", "80", "0.0.0.0/0", None)
    with pytest.raises(Conflict, match="already has this rule"):
        secgroups.add_rule(cloud, me, "web", RuleCreate(protocol="tcp", ports="80", cidr="0.0.0.0/0"))
    for bad, needle in (
        (RuleCreate(protocol="tcp", ports="80"), "exactly one of cidr"),
        (RuleCreate(protocol="tcp", ports="80", cidr="10.0.0.0/8", source_group="web"), "exactly one of cidr"),
        (RuleCreate(protocol="icmp", ports="80", cidr="0.0.0.0/0"), "ports apply to tcp and udp only"),
        (RuleCreate(protocol="tcp", ports="90-80", cidr="0.0.0.0/0"), "within 1-65535"),
        (RuleCreate(protocol="tcp", ports="70000", cidr="0.0.0.0/0"), "within 1-65535"),
        (RuleCreate(protocol="tcp", cidr="10.0.0.1/8"), "host bits set"),
    ):
        with pytest.raises(InvalidSpec, match=needle):
            secgroups.add_rule(cloud, me, "web", bad)
    with pytest.raises(NotFound, match="security group 'nope' not found"):
        secgroups.add_rule(cloud, me, "web", RuleCreate(protocol="all", source_group="nope"))
    selfish = secgroups.add_rule(cloud, me, "web", RuleCreate(protocol="all", source_group="web"))
    assert secgroups.secgroup_view(cloud, selfish)["rules"][-1]["source_group"] == "web"
    for port in range(1, secgroups.MAX_RULES - 1):
        secgroups.add_rule(cloud, me, "web", RuleCreate(protocol="udp", ports=str(port), cidr="0.0.0.0/0"))
    with pytest.raises(Conflict, match="the most a group may have"):
        secgroups.add_rule(cloud, me, "web", RuleCreate(protocol="udp", ports="9999", cidr="0.0.0.0/0"))
    with pytest.raises(NotFound, match="no rule 'ffffffff'"):
        secgroups.delete_rule(cloud, me, "web", "ffffffff")
    secgroups.delete_rule(cloud, me, "web", rule["id"])
    assert len(secgroups.SecurityGroupSpec.of(cloud.store.get_by_id(web.id)).rules) == secgroups.MAX_RULES - 1  # type: ignore[arg-type]


def test_launch_attach_detach_delete(sim: SimCloud) -> None:
    cloud, me = sim.cloud, Caller("admin", "admin")
    secgroups.create_secgroup(cloud, me, SecGroupCreate(name="db"))
    a = instances.launch(cloud, me, instances.InstanceCreate(name="a", image="busybox"))
    b = instances.launch(cloud, me, instances.InstanceCreate(name="b", image="busybox", secgroups=["db", "db"]))
    default = cloud.store.get(secgroups.KIND, "admin", "default")
    assert InstanceSpec.of(a).secgroups == [default.id]  # made on demand
    assert InstanceSpec.of(b).secgroups == [cloud.store.get(secgroups.KIND, "admin", "db").id]
    with pytest.raises(NotFound, match="create it with 'cloudlet secgroup create'"):
        instances.launch(cloud, me, instances.InstanceCreate(name="c", image="busybox", secgroups=["nope"]))
    with pytest.raises(Conflict, match="used by instances b; detach it"):
        secgroups.delete_secgroup(cloud, me, "db")
    secgroups.attach(cloud, me, "default", "b")
    with pytest.raises(Conflict, match="already in security group default"):
        secgroups.attach(cloud, me, "default", "b")
    assert secgroups.secgroup_view(cloud, default)["members"] == ["a", "b"]
    secgroups.detach(cloud, me, "db", "b")
    with pytest.raises(Conflict, match="the only one of instance b"):
        secgroups.detach(cloud, me, "default", "b")
    secgroups.create_secgroup(
        cloud, me, SecGroupCreate(name="app", rules=[RuleCreate(protocol="all", source_group="db")])
    )
    with pytest.raises(Conflict, match="the source of rules of groups app"):
        secgroups.delete_secgroup(cloud, me, "db")
    secgroups.delete_secgroup(cloud, me, "app")
    secgroups.delete_secgroup(cloud, me, "db")
    assert [g.name for g in cloud.store.list(secgroups.KIND)] == ["default"]
    # another tenant's instances are not found by name (as one that never existed)
    with pytest.raises(Conflict, match="instance 'a' not found"):
        secgroups.attach(cloud, Caller("acme"), "default", "a")


def test_plumber_loads_tables_on_the_fake_driver(sim: SimCloud) -> None:
    cloud, me = sim.cloud, Caller("admin", "admin")
    secgroups.create_secgroup(
        cloud, me, SecGroupCreate(name="web", rules=[RuleCreate(protocol="tcp", ports="80", cidr="0.0.0.0/0")])
    )
    for name in ("w1", "w2"):
        instances.launch(cloud, me, instances.InstanceCreate(name=name, image="busybox", secgroups=["web"]))
    instances.launch(cloud, me, instances.InstanceCreate(name="other", image="busybox"))
    sim.run_until_idle()
    net = sim.agents[sim.config.host].ctx.net
    assert isinstance(net, FakeNetworkDriver)
    ips = {i.name: InstanceStatus.of(i).ip for i in cloud.store.list("Instance")}
    w1 = cloud.store.get("Instance", "admin", "w1")
    web = cloud.store.get(secgroups.KIND, "admin", "web")
    hub = net.rulesets[("secgroups", None)]
    assert all(f"ip saddr {ip} return" in hub for ip in ips.values())
    assert f"ether saddr != {net.port_mac(w1.id)} drop" in hub
    table = net.rulesets[("secgroups", w1.id)]
    assert f"elements = {{ {', '.join(sorted([str(ips['w1']), str(ips['w2'])]))} }}" in table
    assert "tcp dport 80 accept" in table and str(ips["other"]) not in table
    secgroups.add_rule(cloud, me, "web", RuleCreate(protocol="udp", ports="53", cidr="10.0.0.0/8"))
    secgroups.attach(cloud, me, "web", "other")
    sim.run_until_idle()
    table = net.rulesets[("secgroups", w1.id)]
    assert "udp dport 53" in table and str(ips["other"]) in table and f"jump sg_{web.id}" in table


def test_a_burst_of_changes_is_one_load_per_table(sim: SimCloud) -> None:
    cloud, me = sim.cloud, Caller("admin", "admin")
    instances.launch(cloud, me, instances.InstanceCreate(name="w1", image="busybox"))
    sim.run_until_idle()
    net = sim.agents[sim.config.host].ctx.net
    assert isinstance(net, FakeNetworkDriver)
    loads: list[str | None] = []
    apply = net.apply_ruleset

    def counting(name: str, text: str, instance_id: str | None = None) -> None:
        loads.append(instance_id)
        apply(name, text, instance_id)

    net.apply_ruleset = counting  # type: ignore[method-assign]
    for port in range(8000, 8010):
        secgroups.add_rule(cloud, me, "default", RuleCreate(protocol="tcp", ports=str(port), cidr="0.0.0.0/0"))
    sim.run_until_idle()
    w1 = cloud.store.get("Instance", "admin", "w1")
    assert loads == [w1.id]  # ten rules, one load of w1's table; the hub's text did not change
    assert "tcp dport 8009" in net.rulesets[("secgroups", w1.id)]
