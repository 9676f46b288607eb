"""Fencing for real (issue 10): the netns fence kills exactly the processes of a host's namespaces; a real cloud's
host goes suspect when its agent stops heartbeating and comes back up; with cloudletd down for longer than the
lease, a single-host cloud's HA instance keeps running."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.core.errors import NotSupported
from cloudlet.resilience.fence import NetnsFence
from tests.conftest import IS_ROOT, CloudCLI, running_cloud
from tests.helpers import agent_sees_ha, alive, host_states, mark_ha, runc_running, wait_for

pytestmark = pytest.mark.root


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


@pytest.fixture
def namespaces() -> Iterator[tuple[str, list[str]]]:
    if not IS_ROOT:
        pytest.skip("needs root")
    cid = f"test{secrets.token_hex(2)}"
    # the host x: its machine and an instance; x-y is another host whose name starts the same
    names = [f"cl-{cid}-h-x", f"cl-{cid}-h-x.i-1", f"cl-{cid}-h-x-y"]
    for ns in names:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield cid, names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_netns_fence_kills_exactly_the_hosts_processes(namespaces: tuple[str, list[str]]) -> None:
    cid, (machine, instance, other_host) = namespaces

    def start(ns: str | None, *argv: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*(["ip", "netns", "exec", ns] if ns else []), *argv])

    inside = [start(machine, "sleep", "300"), start(machine, "sleep", "300")]
    # a shell that forks: its children must go too, wherever the fork was when the fence came
    forker = start(instance, "sh", "-c", "for i in 1 2 3 4 5; do sleep 300 & done; wait")
    outside = [start(other_host, "sleep", "300"), start(None, "sleep", "300")]
    try:
        wait_for(lambda: len(_children(forker.pid)) == 5, 10, "the shell's five children")
        children = _children(forker.pid)
        result = NetnsFence(cid).fence("x")
        print(f"netns fence: {result.killed} processes killed in {result.took_s:.2f} s")
        assert result.killed == 2 + 1 + 5
        for proc in [*inside, forker]:
            assert proc.wait(5) == -signal.SIGKILL
        assert not [pid for pid in children if alive(pid)]
        assert all(_alive(p) for p in outside)  # another host's namespace and the root namespace: untouched
        assert NetnsFence(cid).fence("x").killed == 0  # nothing left: fencing again is a no-op
        assert NetnsFence(cid).fence("nothing-here").killed == 0
        with pytest.raises(NotSupported, match="real power fence"):
            NetnsFence(cid).fence("local")
    finally:
        for proc in [*inside, forker, *outside]:
            if _alive(proc):
                proc.kill()
                proc.wait(5)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/stat").read_text().split(")")[1].split()[1] == str(pid):
                found.append(int(entry))
        except (OSError, IndexError):
            pass
    return found


# a real cloud with a short lease


@pytest.fixture(scope="module")
def short() -> Iterator[CloudCLI]:
    with running_cloud({"CLOUDLET_LEASE_S": "3"}) as cli:
        cli.run("launch", "busybox", "guarded", "--wait", "--memory", "32")
        (cli.home / "guarded.id").write_text(mark_ha(cli, "guarded"))
        wait_for(lambda: agent_sees_ha(cli, "local", "guarded"), 15, "the agent to see ha")
        yield cli


def _state(cli: CloudCLI) -> str:
    return host_states(cli)["local"]


def _init_pid(cli: CloudCLI) -> int | None:
    """What runc runs for the HA instance (cloudletd may be down)."""
    return runc_running(cli, "local").get(f"cl-{(cli.home / 'guarded.id').read_text()}")


def test_a_stopped_agent_is_suspected_and_back_up_when_it_beats_again(short: CloudCLI) -> None:
    pid = _init_pid(short)
    assert pid and _state(short) == "up"
    agent = short.agent_pid()
    os.kill(agent, signal.SIGSTOP)
    try:
        # 3 s of silence, a heartbeat's second and the monitor's half second: the time goes to bench/fencing.py
        took = wait_for(lambda: _state(short) == "suspect", 15, "host local to be suspected")
        print(f"stopped agent suspected after {took:.1f} s")
        time.sleep(5)  # past its 3 s lease: still nothing else (local cannot be fenced and has no peers)
        assert _state(short) == "suspect"
    finally:
        os.kill(agent, signal.SIGCONT)
    wait_for(lambda: _state(short) == "up", 15, "host local to be up again")
    assert _init_pid(short) == pid  # the HA instance ran on throughout: a single host never self-fences
    reasons = Counter(e["reason"] for e in short.json("host", "show", "local")["events"])
    assert reasons["HostSuspect"] == 1 and reasons["HostRecovered"] == 1 and reasons["FenceFailed"] == 1
    assert reasons["HostFenced"] == 0 and reasons["LeaseExpired"] == 0


def test_cloudletd_down_past_the_lease_keeps_a_single_hosts_ha_instance_running(short: CloudCLI) -> None:
    pid = _init_pid(short)
    assert pid
    before = Counter(e["reason"] for e in short.json("events", "--limit", "500"))
    short.kill9("cloudletd")
    time.sleep(3 + 2 + 3)  # the lease, the margin, and then some
    assert _init_pid(short) == pid
    short.run("up")
    wait_for(lambda: _state(short) == "up", 15, "host local to be up")
    time.sleep(4)  # the monitor's grace after its restart has passed: still nothing to do
    assert _state(short) == "up" and _init_pid(short) == pid
    after = Counter(e["reason"] for e in short.json("events", "--limit", "500"))
    for reason in ("HostSuspect", "HostFenced", "LeaseExpired", "SelfFenced", "Started", "Restarted"):
        assert after[reason] == before[reason], reason
    assert short.json("show", "guarded")["state"] == "running"
