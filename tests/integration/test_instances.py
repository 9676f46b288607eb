"""Real instances through the real CLI: runc containers, netns, bridges, DNS, cgroups, crash detection."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

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


def _cgroup(web: CloudCLI, controller: str, name: str, knob: str) -> str:
    """One of an instance's cgroup v1 files, read from the host (what the kernel counted, not what we report)."""
    iid = str(web.json("show", name)["id"])
    return (Path("/sys/fs/cgroup") / controller / f"cloudlet-{web.cloud_id()}" / iid / knob).read_text()


def _oom_kills(web: CloudCLI, name: str) -> int:
    lines = dict(line.split() for line in _cgroup(web, "memory", name, "memory.oom_control").splitlines())
    return int(lines["oom_kill"])


def test_cgroup_limits_are_applied(web: CloudCLI) -> None:
    stats = web.json("show", "web-1")["stats"]
    assert stats["memory_limit_bytes"] == 64 * 1024 * 1024
    assert stats["cpu_quota_us"] == 50000
    # a process that allocates beyond the limit is OOM-killed (SIGKILL: 137, counted by the memory cgroup), the
    # instance survives: same init, no restart
    before, kills = web.json("show", "web-1"), _oom_kills(web, "web-1")
    proc = web.run("exec", "web-1", "--", "sh", "-c", "head -c 200m /dev/zero | tail > /dev/null", check=False)
    assert proc.returncode == 137, (proc.returncode, proc.stderr)
    assert _oom_kills(web, "web-1") == kills + 1
    after = web.json("show", "web-1")
    assert (after["state"], after["pid"], after["restarts"]) == ("running", before["pid"], before["restarts"])


PIDS_LIMIT = 1024  # compute/drivers/runc.py: every instance's pids.max


def test_pids_limit_stops_a_fork_bomb(web: CloudCLI) -> None:
    web.run("launch", "busybox", "forky", "--memory", "512", "--wait")
    before = web.json("show", "forky")
    assert _cgroup(web, "pids", "forky", "pids.max").strip() == str(PIDS_LIMIT)
    refused = int(_cgroup(web, "pids", "forky", "pids.events").split()[1])
    # fork sleepers until fork fails; ash gives up at the first refused fork, having counted what it started
    bomb = (
        "n=0; while [ $n -lt 3000 ]; do sleep 600 </dev/null >/dev/null 2>&1 & n=$((n+1)); echo $n > /tmp/forked; done"
    )
    proc = web.run("exec", "forky", "--", "sh", "-c", bomb, check=False, timeout=300)
    assert proc.returncode != 0 and "fork" in proc.stderr, (proc.returncode, proc.stderr)
    current = int(_cgroup(web, "pids", "forky", "pids.current"))
    assert PIDS_LIMIT - 8 <= current <= PIDS_LIMIT, current  # the count stopped at the limit, not before
    assert int(_cgroup(web, "pids", "forky", "pids.events").split()[1]) > refused  # the kernel refused forks
    # the sleepers go, the instance is still the same one and works
    for pid in _cgroup(web, "pids", "forky", "cgroup.procs").split():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00600\x00":
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass  # gone already
    deadline = time.monotonic() + 30
    while int(_cgroup(web, "pids", "forky", "pids.current")) > 16:
        assert time.monotonic() < deadline, "the sleepers did not go"
        time.sleep(0.2)
    started = int(web.run("exec", "forky", "--", "cat", "/tmp/forked").stdout)
    assert PIDS_LIMIT - 16 <= started < PIDS_LIMIT, started
    after = web.json("show", "forky")
    assert (after["state"], after["pid"], after["restarts"]) == ("running", before["pid"], before["restarts"])
    web.run("delete", "forky", "--wait")


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the address


@contextmanager
def _listener(address: str, netns: str | None = None) -> Iterator[str]:
    """An HTTP server on address (in a test-made netns if given) answering its own address; yields its URL."""
    code = (  # not http.server: its bind looks the address up in DNS
        "import socket, sys\n"
        "s = socket.create_server((sys.argv[1], 0)); print(s.getsockname()[1], flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept(); c.recv(4096)\n"
        "    c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nanswered ' + sys.argv[1].encode()); c.close()\n"
    )
    argv = [sys.executable, "-c", code, address]
    proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv] if netns else argv, stdout=subprocess.PIPE)
    try:
        assert proc.stdout
        url = f"http://{address}:{int(proc.stdout.readline())}/"
        deadline = time.monotonic() + 10
        while True:  # positive control: the host reaches it, over its own route
            try:
                with NO_PROXY.open(url, timeout=2) as resp:
                    if resp.read() == f"answered {address}".encode():
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"listener on {url} never answered"
            time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def _uplink_standin() -> Iterator[tuple[str, str, str]]:
    """A netns made by this test standing in for the machine's uplink: a veth pair to the host with 198.18.N.1 on
    its side and 198.18.N.2 on the host's, a default route back through the host. Were an instance's packets ever
    routed out of the hub, the host would deliver them here (its route to 198.18.N.0/30 is more specific than the
    default), so nothing of a probe ever leaves the machine. Yields (netns, stand-in address, host address)."""
    tag = f"{os.getpid() % 100000}{random.randrange(100)}"
    ns, outer, inner = f"cltest-uplink-{tag}", f"cltu{tag}a", f"cltu{tag}b"
    n = random.randrange(1, 255)
    far, near = f"198.18.{n}.1", f"198.18.{n}.2"
    cmds = [
        f"ip netns add {ns}",
        f"ip link add {outer} type veth peer name {inner}",
        f"ip link set {inner} netns {ns}",
        f"ip addr add {near}/30 dev {outer}",
        f"ip link set {outer} up",
        f"ip -n {ns} addr add {far}/30 dev {inner}",
        f"ip -n {ns} link set {inner} up",
        f"ip -n {ns} link set lo up",
        f"ip -n {ns} route add default via {near}",
    ]
    try:
        for cmd in cmds:
            subprocess.run(cmd.split(), check=True, capture_output=True)
        yield ns, far, near
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _host_uplink_address() -> list[str]:
    """The host's own IPv4 address on the interface of its default route (looked up, no packet sent)."""
    routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True).stdout or "[]")
    if not routes or "dev" not in routes[0]:
        return []
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", routes[0]["dev"]], capture_output=True).stdout
    infos = [a for link in json.loads(out or "[]") for a in link.get("addr_info", [])]
    return [a["local"] for a in infos if a.get("scope") == "global"][:1]


def _probe(web: CloudCLI, name: str, urls: list[str]) -> dict[str, bool]:
    """wget of each URL from inside an instance, all at once, 3 s each: URL -> whether it answered. (`timeout`, not
    wget's own -T: Debian's busybox 1.35 wget crashes with it.)"""
    script = " ".join(f'(timeout 3 wget -qO /dev/null {u}; echo "{u} $?") &' for u in urls) + " wait"
    out = web.run("exec", name, "--", "sh", "-c", script).stdout
    return {line.split()[0]: line.split()[1] == "0" for line in out.splitlines()}


def test_networks_are_isolated_and_no_uplink(web: CloudCLI) -> None:
    web.run("network", "create", "other", "--subnet", "10.240.200.0/24")
    web.run("launch", "busybox", "x-1", "--network", "other", "--wait")
    web_1, x_1 = (f"http://{web.json('show', n)['ip']}/" for n in ("web-1", "x-1"))
    # positive controls: the same probe reaches what it should (web-1 from its network, x-1 from itself)
    assert _probe(web, "web-2", [web_1]) == {web_1: True}
    assert _probe(web, "x-1", [x_1]) == {x_1: True}
    # another network's instance (its httpd answers, as above) and its gateway's DNS (TCP 53) are out of reach
    assert _probe(web, "web-2", [x_1]) == {x_1: False}
    own_gw = web.json("show", "web-2")["ip"].rsplit(".", 1)[0] + ".1"
    assert web.run("exec", "web-2", "--", "nc", "-w", "2", own_gw, "53").returncode == 0  # DNS answers there
    assert web.run("exec", "web-2", "--", "nc", "-w", "2", "10.240.200.1", "53", check=False).returncode != 0
    web.run("delete", "x-1", "--wait")
    web.run("network", "delete", "other")
    # no route out. Listeners that answer the host (checked in _listener): on the stand-in uplink, on the host's
    # address towards it, on the host's address on its real uplink interface (a connection to the host's own
    # address never leaves the machine). None may answer an instance, nor the hub.
    with _uplink_standin() as (ns, far, near), ExitStack() as stack:
        urls = [stack.enter_context(_listener(far, ns)), stack.enter_context(_listener(near))]
        urls += [stack.enter_context(_listener(addr)) for addr in _host_uplink_address()]
        reached = _probe(web, "web-2", urls)
        assert reached == dict.fromkeys(urls, False), f"reachable from an instance: {reached}"
        hub = f"cl-{web.cloud_id()}-hub"
        for url in urls:
            proc = subprocess.run(["ip", "netns", "exec", hub, "timeout", "3", "busybox", "wget", "-qO-", url])
            assert proc.returncode != 0, f"{url} reachable from the hub"
        assert _probe(web, "web-2", [web_1]) == {web_1: True}  # and the probe itself still works


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed init waits a moment for the host's init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_init_is_noticed_and_restarted(web: CloudCLI) -> None:
    """Each kill -9 of the init: a new init (another pid) and `restarts` up by exactly one, one Exited and one
    Restarted event."""
    for _ in range(2):
        before = web.json("show", "web-2")
        counts = Counter(e["reason"] for e in web.json("events", "web-2", "--limit", "500"))
        os.kill(before["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 15
        view = before
        while not (view["state"] == "running" and view["pid"] not in (None, before["pid"])):
            assert time.monotonic() < deadline, f"not restarted: {view}"
            time.sleep(0.05)
            view = web.json("show", "web-2")
        assert view["restarts"] == before["restarts"] + 1, (before, view)
        assert _alive(view["pid"]) and not _alive(before["pid"]), (before, view)
        time.sleep(0.5)  # no second restart follows
        settled = web.json("show", "web-2")
        assert (settled["pid"], settled["restarts"]) == (view["pid"], view["restarts"])
        after = Counter(e["reason"] for e in web.json("events", "web-2", "--limit", "500"))
        assert after["Exited"] == counts["Exited"] + 1 and after["Restarted"] == counts["Restarted"] + 1, after


def test_restart_never_stays_exited(web: CloudCLI) -> None:
    web.run("launch", "busybox", "once", "--restart", "never", "--wait")
    os.kill(web.json("show", "once")["pid"], signal.SIGKILL)
    web.wait_state("once", "exited", timeout=30)
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
