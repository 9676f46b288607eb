"""Hosts on one machine, as in a cluster: `cloudlet host add` makes a namespace with its own agent and pool on the
underlay; tenant networks span hosts over VXLAN; names resolve and security groups admit members across hosts;
another network stays unreachable across hosts too; `host remove` refuses a host that holds instances; down and
up bring the hosts back; a purge leaves nothing (the fixture's leak check). In the slow tier, all of it again with
scoped agent views (CLOUDLET_AGENT_VIEW=tenants)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import CloudCLI, running_cloud
from tests.helpers import host_home
from tests.integration.test_secgroups import SERVE, fetch, fetch_from_netns

pytestmark = pytest.mark.root


# each agent's view of other hosts' records: all of them, or (slow tier) a scoped view: its tenants' only
@pytest.fixture(scope="module", params=["all", pytest.param("tenants", marks=pytest.mark.slow)])
def hosts(request: pytest.FixtureRequest) -> Iterator[CloudCLI]:
    with running_cloud({"CLOUDLET_AGENT_VIEW": request.param}, hosts=[("h2", "zone-b")]) as cli:
        cli.run("network", "create", "other", "--subnet", "10.240.200.0/24")
        for name, zone, net in (("a1", "zone-a", "default"), ("b1", "zone-b", "default"), ("x2", "zone-b", "other")):
            cli.run("launch", "busybox", name, "--zone", zone, "--network", net, "--memory", "32", "--command", SERVE)
        for name in ("a1", "b1", "x2"):
            cli.wait_state(name, "running", timeout=60)
        yield cli


def _netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def test_added_host_runs_its_own_agent_in_its_namespace(hosts: CloudCLI) -> None:
    view = {h["name"]: h for h in hosts.json("host", "list")}
    assert view["h2"]["zone"] == "zone-b" and view["h2"]["state"] == "up", view
    assert view["h2"]["endpoint"].startswith("http://198.19."), view["h2"]
    netns = f"cl-{hosts.cloud_id()}-h-h2"
    assert os.stat(f"/proc/{hosts.agent_pid('h2')}/ns/net").st_ino == _netns_inode(netns)
    assert os.stat(f"/proc/{hosts.agent_pid('local')}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    placed = {i["name"]: i["host"] for i in hosts.json("list")}
    assert placed == {"a1": "local", "b1": "h2", "x2": "h2"}, placed
    # its instance's network namespace is named after it, and its pool is its own
    b1 = hosts.json("show", "b1")
    assert os.path.exists(f"/run/netns/{netns}.i-{b1['id']}")
    pool = host_home(hosts, "h2") / "pool"
    assert pool.with_suffix(".img").exists() or pool.is_dir()
    # each agent says which images its pool holds: both hosts booted busybox
    busybox = next(i for i in hosts.json("image", "list") if i["name"] == "busybox")
    assert busybox["hosts"] == ["h2", "local"], busybox


def _fetch_soon(cloud: CloudCLI, src: str, dst: str, port: int, timeout: float = 15) -> str | None:
    """A member on another host is admitted once that host's agent has seen its address: moments after a start."""
    deadline = time.monotonic() + timeout
    while (got := fetch(cloud, src, dst, port)) is None and time.monotonic() < deadline:
        time.sleep(0.3)
    return got


def test_network_spans_hosts_and_same_group_members_reach_each_other(hosts: CloudCLI) -> None:
    assert _fetch_soon(hosts, "a1", "b1", 8080) == "hi-b1"
    assert _fetch_soon(hosts, "b1", "a1", 8080) == "hi-a1"


def test_names_resolve_across_hosts(hosts: CloudCLI) -> None:
    a1 = hosts.json("show", "a1")
    out = hosts.run("exec", "b1", "--", "nslookup", a1["dns_name"], "10.240.0.1").stdout
    assert a1["ip"] in out, out


def test_another_network_is_unreachable_across_hosts(hosts: CloudCLI) -> None:
    """x2 (network other, host h2) and a1 (default, local) share no L2 segment: different VNIs."""
    a1_ip = hosts.json("show", "a1")["ip"]
    probe = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {a1_ip} 8080"
    assert "hi-a1" not in hosts.run("exec", "x2", "--", "sh", "-c", probe, check=False).stdout
    assert fetch(hosts, "a1", "x2", 8080) is None
    # and on the wire: only one VXLAN per network, with its own VNI, on each host's hub
    cid = hosts.cloud_id()
    vnis = set()
    for hub in (f"cl-{cid}-hub", f"cl-{cid}-h-h2.hub"):
        out = subprocess.run(["ip", "-n", hub, "-d", "link", "show", "type", "vxlan"], capture_output=True, text=True)
        vnis |= {line.split()[2] for line in out.stdout.splitlines() if line.strip().startswith("vxlan id")}
    assert len(vnis) == 2, vnis


def test_remove_refuses_a_host_with_instances(hosts: CloudCLI) -> None:
    proc = hosts.run("host", "remove", "h2", check=False)
    assert proc.returncode == 1 and "drain it first" in proc.stderr and "Traceback" not in proc.stderr
    assert {h["name"] for h in hosts.json("host", "list")} == {"local", "h2"}


def test_bad_host_names_and_zones_are_refused(hosts: CloudCLI) -> None:
    for args, words in (
        (("host", "add", "Bad_Name", "--zone", "zone-b"), "name"),
        (("host", "add", "h2", "--zone", "zone-c"), "is in zone-b"),
        (("host", "add", "local", "--zone", "zone-a"), "this machine's own host"),
        (("host", "partition", "nope"), "not on this machine's underlay"),
    ):
        proc = hosts.run(*args, check=False)
        assert proc.returncode == 1 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_an_eip_answers_on_an_added_host_and_moves_across_hosts(hosts: CloudCLI) -> None:
    """The outside namespace routes each EIP to the hub of the host holding it (h2 by its own link)."""
    hosts.run("secgroup", "rule", "add", "default", "tcp", "80", "--cidr", "0.0.0.0/0")
    eip = hosts.json("eip", "allocate", "e1")
    address = eip.get("address") or eip.get("ip")
    outside = f"cl-{hosts.cloud_id()}-out"
    for holder in ("b1", "a1", "b1"):
        hosts.run("eip", "associate", "e1", holder)
        deadline = time.monotonic() + 15
        while f"hi-{holder}" not in (got := fetch_from_netns(outside, address, 80)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"hi-{holder}" in got, f"EIP {address} held by {holder}: {got!r}"
    hosts.run("eip", "release", "e1", "--force")
    assert "hi-" not in fetch_from_netns(outside, address, 80)


@pytest.mark.slow  # 18 s; test_instances' down and up runs in make test (the slow tier runs this one, added hosts too)
def test_down_and_up_bring_added_hosts_back(hosts: CloudCLI) -> None:
    hosts.run("down")
    cid = hosts.cloud_id()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"cl-{cid}-" not in left, left
    hosts.run("up")
    for name in ("a1", "b1", "x2"):
        hosts.wait_state(name, "running", timeout=60)
    assert _fetch_soon(hosts, "a1", "b1", 8080) == "hi-b1"
