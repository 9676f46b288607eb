"""The data plane without the control plane, and the control plane without the data plane, with kill -9.

cloudletd killed: instances keep running and resolving names, an instance killed from outside is restarted per
its policy, every CLI command says in one line that the control plane is unreachable, and after `up` the agent
resyncs with each event recorded once. Agent killed: instances keep running, and the restarted agent adopts them
without restarting any.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest
from dnslib import DNSRecord

from tests.conftest import CloudCLI

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def trio(cloud: CloudCLI) -> CloudCLI:
    cloud.run("launch", "busybox", "a-1", "--wait", "--memory", "32")
    cloud.run("launch", "busybox", "a-2", "--wait", "--memory", "32")
    cloud.run("launch", "busybox", "a-3", "--wait", "--memory", "32", "--restart", "never")
    return cloud


def _ids(cloud: CloudCLI) -> dict[str, str]:
    return {i["name"]: i["id"] for i in cloud.json("list")}


def _pids(cloud: CloudCLI) -> dict[str, int]:
    """Container id -> init pid of everything runc runs for this cloud."""
    listing = json.loads(cloud.runc("list", "--format", "json").stdout or "[]")
    return {c["id"].removeprefix("cl-"): c["pid"] for c in listing if c["status"] == "running"}


def _inside(cloud: CloudCLI, iid: str, *argv: str) -> str:
    proc = cloud.runc("exec", f"cl-{iid}", *argv)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _agent_dns_port(cloud: CloudCLI) -> int:
    return int(json.loads((cloud.home / "agents/local/endpoint.json").read_text())["dns_port"])


def _wait(cond, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_control_plane_killed_data_plane_serves(trio: CloudCLI) -> None:
    ids = _ids(trio)
    ip = trio.json("show", "a-1")["ip"]
    url = json.loads((trio.home / "endpoint.json").read_text())["url"]
    trio.kill9("cloudletd")
    for args in (("list",), ("show", "a-1"), ("host", "list"), ("info",)):
        proc = trio.run(*args, check=False)
        assert proc.returncode == 1
        want = f"Error: control plane unreachable at {url}; start it with 'cloudlet up'"
        assert proc.stderr.strip().splitlines() == [want], proc.stderr
    # names keep resolving, inside instances and from the host
    assert _inside(trio, ids["a-2"], "wget", "-qO-", "http://a-1/").strip() == "hello from a-1"
    reply = DNSRecord.parse(
        DNSRecord.question("a-1.default.zone-a.cloudlet").send("127.0.0.1", _agent_dns_port(trio), timeout=2)
    )
    assert [str(r.rdata) for r in reply.rr] == [ip]
    # an instance killed from outside comes back by its policy; restart=never stays down
    before = _pids(trio)
    os.kill(before[ids["a-1"]], signal.SIGKILL)
    os.kill(before[ids["a-3"]], signal.SIGKILL)
    _wait(lambda: _pids(trio).get(ids["a-1"]) not in (None, before[ids["a-1"]]))
    assert ids["a-3"] not in _pids(trio)
    assert _pids(trio)[ids["a-2"]] == before[ids["a-2"]]
    trio.run("up")
    _wait(lambda: trio.json("show", "a-3")["state"] == "exited" and trio.json("show", "a-1")["restarts"] == 1)
    reasons = Counter((e["name"], e["reason"]) for e in trio.json("events", "--limit", "500"))
    assert reasons[("a-1", "Exited")] == 1 and reasons[("a-1", "Restarted")] == 1  # reported once, not lost
    assert reasons[("a-3", "Exited")] == 1 and reasons[("a-3", "Restarted")] == 0
    assert trio.run("repair", "--check", check=False).returncode == 0


def test_agent_killed_instances_run_on_and_are_adopted(trio: CloudCLI) -> None:
    ids = _ids(trio)
    before = _pids(trio)
    assert {ids["a-1"], ids["a-2"]} <= before.keys()
    started = Counter(e["reason"] for e in trio.json("events", "--limit", "500"))
    trio.kill9("agent")
    time.sleep(1.0)
    assert _pids(trio) == before  # nothing depends on the agent to keep running
    # the control plane still takes requests; the work waits for the host's agent
    trio.run("launch", "busybox", "a-4", "--memory", "32")
    trio.run("up")
    trio.wait_state("a-4", "running")
    after = _pids(trio)
    assert {k: after[k] for k in before} == before  # adopted, not restarted
    events = Counter(e["reason"] for e in trio.json("events", "--limit", "500"))
    assert events["Restarted"] == started["Restarted"]
    assert events["Started"] == started["Started"] + 1  # a-4 only
    assert "hello from a-4" in trio.run("exec", "a-1", "--", "wget", "-qO-", "http://a-4/").stdout
    hosts = trio.json("host", "list")
    assert [(h["name"], h["state"], h["zone"]) for h in hosts] == [("local", "up", "zone-a")]
    assert trio.run("repair", "--check", check=False).returncode == 0


def test_host_token_touches_only_the_agent_api(trio: CloudCLI) -> None:
    token = (trio.home / "hosts/local.token").read_text().strip()
    proc = trio.run("list", check=False, env={"CLOUDLET_TOKEN": token})
    assert proc.returncode == 1 and "host token may only use the agent API" in proc.stderr
    admin = (trio.home / "admin.token").read_text().strip()
    import httpx

    url = json.loads((trio.home / "endpoint.json").read_text())["url"]
    r = httpx.get(f"{url}/v1/agent/records", params={"kinds": "Instance"}, headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 403
    r = httpx.post(
        f"{url}/v1/hosts/other/heartbeat",
        headers={"Authorization": f"Bearer {token}"},
        json={"zone": "zone-a", "cpus": 1, "memory_mib": 64, "version": "x"},
    )
    assert r.status_code == 403 and "belongs to host local" in r.json()["error"]["message"]
