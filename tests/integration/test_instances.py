"""Real instances through the real CLI: runc containers, netns, bridges, DNS, cgroups, crash detection."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from dnslib import DNSRecord

from tests.conftest import CloudCLI

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def web(cloud: CloudCLI) -> CloudCLI:
    cloud.run("launch", "busybox", "web-1", "--wait", "--memory", "64", "--cpus", "0.5")
    cloud.run("launch", "busybox", "web-2", "--wait")
    return cloud


def _dig(port: int, name: str, qtype: str = "A") -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    return DNSRecord.parse(q.send("127.0.0.1", port, timeout=2))


def test_list_and_show_fields(web: CloudCLI) -> None:
    items = web.json("list")
    assert {i["name"] for i in items} == {"web-1", "web-2"}
    v = web.json("show", "web-1")
    for key in (
        "id",
        "name",
        "state",
        "image",
        "network",
        "ip",
        "dns_name",
        "host",
        "zone",
        "pid",
        "cpus",
        "memory_mib",
    ):
        assert key in v
    assert v["state"] == "running" and v["host"] == "local" and v["zone"] == "zone-a"
    assert v["dns_name"] == "web-1.default.zone-a.cloudlet" and v["ip"].startswith("10.240.")
    assert web.run("list", "-o", "yaml").stdout.startswith("- id:")


def test_instance_reaches_another_by_dns_name(web: CloudCLI) -> None:
    out = web.run("exec", "web-2", "--", "wget", "-qO-", "http://web-1.default.zone-a.cloudlet/").stdout
    assert out.strip() == "hello from web-1"
    assert "hello from web-1" in web.run("exec", "web-2", "--", "wget", "-qO-", "http://web-1/").stdout


def test_dns_from_host_forward_and_reverse(web: CloudCLI) -> None:
    port = web.json("info")["ports"]["dns@local"]
    ip = web.json("show", "web-1")["ip"]
    reply = _dig(port, "web-1.default.zone-a.cloudlet")
    assert [str(r.rdata) for r in reply.rr] == [ip]
    rev = _dig(port, ".".join(reversed(ip.split("."))) + ".in-addr.arpa", "PTR")
    assert str(rev.rr[0].rdata) == "web-1.default.zone-a.cloudlet."
    assert _dig(port, "nobody.default.zone-a.cloudlet").header.rcode == 3  # NXDOMAIN
    inside = web.run("exec", "web-2", "--", "nslookup", ip).stdout
    assert "web-1.default.zone-a.cloudlet" in inside


def test_hostname_resolv_and_init(web: CloudCLI) -> None:
    assert web.run("exec", "web-1", "--", "hostname").stdout.strip() == "web-1"
    assert "nameserver 10.240." in web.run("exec", "web-1", "--", "cat", "/etc/resolv.conf").stdout
    ps = web.run("exec", "web-1", "--", "ps").stdout
    assert "cloudlet-init" in ps.splitlines()[1]  # tini is PID 1 and reaps


def test_exec_exit_code_passes_through(web: CloudCLI) -> None:
    proc = web.run("exec", "web-1", "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert proc.returncode == 7 and proc.stdout == "out\n" and "err" in proc.stderr


def test_cgroup_limits_are_applied(web: CloudCLI) -> None:
    stats = web.json("show", "web-1")["stats"]
    assert stats["memory_limit_bytes"] == 64 * 1024 * 1024
    assert stats["cpu_quota_us"] == 50000
    # a process that allocates beyond the limit is OOM-killed, the instance survives
    proc = web.run("exec", "web-1", "--", "sh", "-c", "head -c 200m /dev/zero | tail > /dev/null", check=False)
    assert proc.returncode != 0
    assert web.json("show", "web-1")["state"] == "running"


def test_networks_are_isolated_and_no_uplink(web: CloudCLI) -> None:
    web.run("network", "create", "other", "--subnet", "10.240.200.0/24")
    web.run("launch", "busybox", "x-1", "--network", "other", "--wait")
    ip1 = web.json("show", "web-1")["ip"]
    assert web.run("exec", "x-1", "--", "ping", "-c1", "-W1", ip1, check=False).returncode != 0
    assert web.run("exec", "web-2", "--", "ping", "-c1", "-W1", ip1).returncode == 0
    # no route out: the hub has no uplink and forwards nothing
    for target in ("10.240.200.1", "198.18.0.1"):
        assert web.run("exec", "web-2", "--", "ping", "-c1", "-W1", target, check=False).returncode != 0
    web.run("delete", "x-1", "--wait")
    web.run("network", "delete", "other")


def test_kill_init_is_noticed_and_restarted(web: CloudCLI) -> None:
    before = web.json("show", "web-2")
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    reasons: list[str] = []
    while time.monotonic() < deadline and "Exited" not in reasons:
        reasons = [e["reason"] for e in web.json("events", "web-2")]
        time.sleep(0.05)
    assert "Exited" in reasons, "death not noticed within 2 s"
    after = web.wait_state("web-2", "running")
    assert after["pid"] != before["pid"] and after["restarts"] == before["restarts"] + 1


def test_restart_never_stays_exited(web: CloudCLI) -> None:
    web.run("launch", "busybox", "once", "--restart", "never", "--wait")
    os.kill(web.json("show", "once")["pid"], signal.SIGKILL)
    web.wait_state("once", "exited", timeout=2.0)
    time.sleep(0.5)
    assert web.json("show", "once")["state"] == "exited"
    web.run("start", "once", "--wait")
    web.run("delete", "once", "--wait")


def test_stop_start_restart_keep_files(web: CloudCLI) -> None:
    web.run("exec", "web-1", "--", "sh", "-c", "echo kept > /root/marker")
    web.run("stop", "web-1", "--wait")
    assert web.json("show", "web-1")["pid"] is None
    web.run("start", "web-1", "--wait")
    web.run("restart", "web-1", "--wait")
    assert web.run("exec", "web-1", "--", "cat", "/root/marker").stdout == "kept\n"


def test_console_shows_output(web: CloudCLI) -> None:
    web.run("launch", "busybox", "talker", "--command", "echo booted-$(hostname); exec sleep 3600", "--wait")
    deadline = time.monotonic() + 5
    while "booted-talker" not in web.run("console", "talker").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "booted-talker" in web.run("console", "talker").stdout
    web.run("delete", "talker", "--wait")


def test_cli_errors_are_one_line(web: CloudCLI) -> None:
    for args in (
        ["launch", "busybox", "Bad_Name"],
        ["launch", "nope", "x"],
        ["show", "ghost"],
        ["launch", "busybox", "web-1"],
        ["launch", "busybox", "m", "--memory", "99999999"],
        ["network", "delete", "default"],
        ["exec", "ghost", "--", "ls"],
    ):
        proc = web.run(*args, check=False)
        assert proc.returncode != 0, args
        assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout


def test_tenant_token_sees_only_its_own(web: CloudCLI) -> None:
    token = web.run("tenant", "create", "acme").stdout.strip().splitlines()[-1]
    env = {"CLOUDLET_TOKEN": token}
    assert web.json("list", env=env) == []
    proc = web.run("show", "web-1", check=False, env=env)
    assert proc.returncode == 1 and "not found" in proc.stderr
    bad = web.run("list", check=False, env={"CLOUDLET_TOKEN": "forged"})
    assert bad.returncode == 1 and "unknown token" in bad.stderr


def test_repair_finds_and_fixes_orphans(web: CloudCLI) -> None:
    assert web.run("repair", "--check").returncode == 0
    cid = web.cloud_id()
    orphan = f"cl-{cid}-i-01orphan0000000000000000000"
    os.system(f"ip netns add {orphan}")
    check = web.run("repair", "--check", check=False)
    assert check.returncode == 1 and "orphan" in check.stdout
    web.run("repair")
    assert web.run("repair", "--check").returncode == 0


def test_down_and_up_bring_instances_back(web: CloudCLI) -> None:
    web.run("down")
    assert not [n for n in os.popen("ip netns list").read().split() if n.startswith(f"cl-{web.cloud_id()}-")]
    web.run("up")
    for name in ("web-1", "web-2"):
        web.wait_state(name, "running")
    assert "hello from web-1" in web.run("exec", "web-2", "--", "wget", "-qO-", "http://web-1/").stdout


def test_udp_dns_socket_is_loopback_only(web: CloudCLI) -> None:
    port = web.json("info")["ports"]["dns@local"]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(OSError):
        s.bind(("127.0.0.1", port))  # held by the agent
    s.close()
