"""Security groups on a real cloud: real TCP connections between busybox instances on allowed and denied paths,
rules and memberships changed on running instances, enforcement while cloudletd is down."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from cloudlet.network.netns import NETNS_DIR
from tests.conftest import CloudCLI

pytestmark = pytest.mark.root

# three HTTP listeners, each answering with the instance's name
SERVE = (
    "mkdir -p /w && echo hi-$(hostname) > /w/index.html && httpd -p 8080 -h /w && httpd -p 9090 -h /w && "
    "exec httpd -f -p 80 -h /w"
)


def fetch(cloud: CloudCLI, src: str, dst: str, port: int) -> str | None:
    """What dst's listener on port answers src (over TCP, from inside src), or None if nothing got through."""
    ip = cloud.json("show", dst)["ip"]
    # busybox wget -T segfaults here; nc -w bounds the connect instead (a dropped SYN: 1 s)
    script = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {ip} {port}"
    out = cloud.run("exec", src, "--", "sh", "-c", script, check=False).stdout
    return f"hi-{dst}" if f"hi-{dst}" in out else None


def fetch_from_netns(netns: str, ip: str, port: int) -> str:
    """The same request made by the host inside an instance's netns: needs no cloudletd (exec goes through it)."""
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    s = socket.create_connection(({ip!r}, {port}), timeout=1)\n"
        "    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
        "    while data := s.recv(4096): sys.stdout.write(data.decode(errors='replace'))\n"
        "except OSError as e:\n"
        "    print('failed', e)\n"
    )
    return subprocess.run(
        ["nsenter", f"--net={NETNS_DIR}/{netns}", "python3", "-c", code], capture_output=True, text=True, timeout=30
    ).stdout


UDP_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"probe")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")  # the port unreachable of dst's stack: the datagram got in (nothing listens there)
except TimeoutError:
    print("silent")
"""


def udp_gets_in(netns: str, ip: str, port: int) -> bool:
    cmd = ["nsenter", f"--net={NETNS_DIR}/{netns}", "python3", "-c", UDP_PROBE, ip, str(port)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    assert out in ("refused", "silent"), out
    return out == "refused"


def ping_gets_in(netns: str, ip: str) -> bool:
    cmd = ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", ip]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


def reaches(cloud: CloudCLI, src: str, dst: str, port: int) -> bool:
    return fetch(cloud, src, dst, port) is not None


def until(check: Callable[[], bool], timeout: float = 30.0) -> float:
    """Seconds until check() holds (fails after timeout: the goal is about 1 s; bench/ measures it)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "the change did not take effect in time"
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def sg(cloud: CloudCLI) -> CloudCLI:
    cloud.run("secgroup", "create", "web", "--description", "front end")
    cloud.run("secgroup", "rule", "add", "web", "tcp", "8080", "--cidr", "0.0.0.0/0")
    for name, groups in (("a", []), ("b", []), ("c", ["--secgroup", "web"])):
        cloud.run("launch", "busybox", name, "--wait", "--memory", "32", "--command", SERVE, *groups)
    return cloud


def test_default_group_and_show(sg: CloudCLI) -> None:
    groups = {g["name"]: g for g in sg.json("secgroup", "list")}
    assert groups["default"]["members"] == ["a", "b"] and groups["web"]["members"] == ["c"]
    (rule,) = sg.json("secgroup", "show", "web")["rules"]
    assert rule["protocol"] == "tcp" and rule["ports"] == "8080" and rule["cidr"] == "0.0.0.0/0" and rule["id"]
    assert "8080" in sg.run("secgroup", "show", "web").stdout


def test_same_group_allowed_other_denied(sg: CloudCLI) -> None:
    assert fetch(sg, "a", "b", 80) == "hi-b"  # same group, no rule needed
    assert fetch(sg, "b", "a", 9090) == "hi-a"
    assert fetch(sg, "a", "c", 8080) == "hi-c"  # web lets 8080 in from anywhere
    assert not reaches(sg, "a", "c", 80)  # but not 80
    assert not reaches(sg, "c", "a", 80)  # default lets in only its members
    assert fetch(sg, "c", "c", 80) == "hi-c"  # an instance reaches itself (loopback)


def test_source_group_rule_then_rule_delete(sg: CloudCLI) -> None:
    view = sg.json("secgroup", "rule", "add", "web", "tcp", "9000-9100", "--source-group", "default")
    rid = next(r["id"] for r in view["rules"] if r["source_group"] == "default")
    until(lambda: reaches(sg, "a", "c", 9090))
    assert not reaches(sg, "a", "c", 80)  # the range is 9000-9100 only
    sg.run("secgroup", "rule", "delete", "web", rid)
    until(lambda: not reaches(sg, "a", "c", 9090))
    assert reaches(sg, "a", "c", 8080)


def test_cidr_rule_lets_in_that_address_only(sg: CloudCLI) -> None:
    a_ip = sg.json("show", "a")["ip"]
    view = sg.json("secgroup", "rule", "add", "web", "tcp", "80", "--cidr", f"{a_ip}/32")
    until(lambda: reaches(sg, "a", "c", 80))
    assert not reaches(sg, "b", "c", 80)
    rid = next(r["id"] for r in view["rules"] if r["cidr"] == f"{a_ip}/32")
    sg.run("secgroup", "rule", "delete", "web", rid)
    until(lambda: not reaches(sg, "a", "c", 80))


def test_udp_and_icmp_rules(sg: CloudCLI) -> None:
    a, b, c = (sg.json("show", n) for n in ("a", "b", "c"))
    a_ns = f"cl-{sg.cloud_id()}-i-{a['id']}"
    assert udp_gets_in(a_ns, b["ip"], 5353) and ping_gets_in(a_ns, b["ip"])  # controls: same group
    assert not udp_gets_in(a_ns, c["ip"], 5353) and not ping_gets_in(a_ns, c["ip"])
    udp = sg.json("secgroup", "rule", "add", "web", "udp", "5000-6000", "--source-group", "default")
    until(lambda: udp_gets_in(a_ns, c["ip"], 5353))
    assert not udp_gets_in(a_ns, c["ip"], 7000) and not ping_gets_in(a_ns, c["ip"])
    icmp = sg.json("secgroup", "rule", "add", "web", "icmp", "--cidr", f"{a['ip']}/32")
    until(lambda: ping_gets_in(a_ns, c["ip"]))
    for view in (udp, icmp):
        sg.run("secgroup", "rule", "delete", "web", view["rules"][-1]["id"])
    until(lambda: not ping_gets_in(a_ns, c["ip"]) and not udp_gets_in(a_ns, c["ip"], 5353))


def test_attach_detach_on_a_running_instance(sg: CloudCLI) -> None:
    pid = sg.json("show", "c")["pid"]
    sg.run("secgroup", "attach", "default", "c")
    took = until(lambda: reaches(sg, "c", "a", 80) and reaches(sg, "a", "c", 80))
    print(f"attach took effect in {took:.2f} s (including probes)")
    sg.run("secgroup", "detach", "default", "c")
    until(lambda: not reaches(sg, "c", "a", 80))
    assert not reaches(sg, "a", "c", 80)
    assert sg.json("show", "c")["pid"] == pid  # the instance kept running throughout


def test_errors_say_what_to_fix(sg: CloudCLI) -> None:
    proc = sg.run("secgroup", "delete", "web", check=False)
    assert proc.returncode != 0 and "used by instances c" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = sg.run("secgroup", "detach", "web", "c", check=False)
    assert proc.returncode != 0 and "only one" in proc.stderr
    proc = sg.run("secgroup", "rule", "add", "web", "icmp", "80", "--cidr", "0.0.0.0/0", check=False)
    assert proc.returncode != 0 and "ports apply to tcp and udp only" in proc.stderr
    proc = sg.run("launch", "busybox", "x", "--secgroup", "nope", check=False)
    assert proc.returncode != 0 and "security group 'nope' not found" in proc.stderr
    sg.run("secgroup", "create", "spare")
    sg.run("secgroup", "delete", "spare")
    assert "spare" not in {g["name"] for g in sg.json("secgroup", "list")}


def test_rules_hold_while_cloudletd_is_down(sg: CloudCLI) -> None:
    a, b, c = (sg.json("show", n) for n in ("a", "b", "c"))
    a_ns = f"cl-{sg.cloud_id()}-i-{a['id']}"

    def get(dst: dict[str, Any], port: int) -> bool:
        return f"hi-{dst['name']}" in fetch_from_netns(a_ns, dst["ip"], port)

    assert get(c, 8080) and not get(c, 80)  # the probe itself tells the two apart
    sg.kill9("cloudletd")
    try:
        assert not get(c, 80) and get(c, 8080) and get(b, 80)
        # c crashes: the agent restarts it in a new netns (which lets nothing in) and loads its table there
        os.kill(c["pid"], signal.SIGKILL)
        until(lambda: get(c, 8080), timeout=30)
        assert not get(c, 80)
    finally:
        sg.run("up")
    # the agent's outbox reaches the new cloudletd shortly after it is up
    until(lambda: sg.json("show", "c")["pid"] != c["pid"], timeout=30)
    assert sg.json("show", "c")["restarts"] >= 1
    assert reaches(sg, "a", "c", 8080) and not reaches(sg, "a", "c", 80)


def test_tables_live_only_in_the_clouds_namespaces(sg: CloudCLI) -> None:
    cid = sg.cloud_id()
    hub = subprocess.run(
        ["ip", "netns", "exec", f"cl-{cid}-hub", "nft", "list", "table", "bridge", "cl_sg"],
        capture_output=True,
        text=True,
    )
    assert hub.returncode == 0 and "jump p_" in hub.stdout
    host = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert "cl_sg" not in host
