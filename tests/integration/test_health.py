"""Health checks on a real cloud: the agent probes busybox instances from inside their network namespaces (tcp,
http, process), a killed server goes unhealthy after `fall` probes and healthy again after `rise`, a closed port
never passes, and with cloudletd down the agent goes on and reports once it is back."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import CloudCLI

pytestmark = pytest.mark.root

# httpd forks into the background (a child of init, which then sleeps): it can be killed and started again
# without the instance restarting, which would reset its health to unknown
SERVE = "mkdir -p /w && echo ok > /w/index.html && httpd -p 8080 -h /w; exec sleep 1000000"
START_HTTPD = ["httpd", "-p", "8080", "-h", "/w"]
FAST = ["--health-interval", "0.5", "--health-fall", "3", "--health-rise", "2"]
BOUND = 15.0  # seconds: fall 3 x 0.5 s is 1.5 s; generous so a loaded machine never flakes


@pytest.fixture(scope="module")
def checked(cloud: CloudCLI) -> CloudCLI:
    for name, health in (
        ("ht", "tcp:8080"),
        ("hh", "http:8080/index.html"),
        ("hp", "process:httpd"),
        ("hx", "tcp:9"),
        ("h4", "http:8080/missing"),
    ):
        cloud.run("launch", "busybox", name, "--command", SERVE, "--memory", "32", "--health", health, *FAST)
    for name in ("ht", "hh", "hp", "hx", "h4"):
        cloud.wait_state(name, "running")
    return cloud


def _health(cloud: CloudCLI, name: str) -> dict[str, Any]:
    health: dict[str, Any] = cloud.json("show", name)["health"] or {}
    return health


def _until(cloud: CloudCLI, name: str, state: str, timeout: float = BOUND) -> float:
    """Seconds until the instance's health is `state`."""
    start = time.monotonic()
    seen: dict[str, Any] = {}
    while time.monotonic() - start < timeout:
        seen = _health(cloud, name)
        if seen.get("state") == state:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{name} never became {state}: {seen}")


def _settled(cloud: CloudCLI, name: str, timeout: float = 60) -> dict[str, Any]:
    """Waits until no recovery is under way for it and it is healthy; its view."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = cloud.json("show", name)
        if "cloudlet.io/recovery" not in view["labels"] and (view["health"] or {}).get("state") == "healthy":
            return view
        time.sleep(0.2)
    raise AssertionError(f"{name} did not settle healthy: {view}")


def _events(cloud: CloudCLI, name: str, reason: str, after: float = 0.0) -> list[dict[str, Any]]:
    """The instance's events of that reason since `after` (wall clock; agents stamp their own), oldest first."""
    items = [e for e in cloud.json("events", name) if e["reason"] == reason and _time(e) > after]
    return sorted(items, key=_time)


def _time(event: dict[str, Any]) -> float:
    t = event["time"]
    return float(t) if isinstance(t, int | float) else datetime.fromisoformat(t).timestamp()


def _event(cloud: CloudCLI, name: str, reason: str, after: float, timeout: float = BOUND) -> dict[str, Any]:
    """The first such event since `after`, waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _events(cloud, name, reason, after)
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {reason} event for {name} within {timeout:g} s: {cloud.run('events', name).stdout}")


# The control plane's recovery (resilience/recovery.py) acts on an unhealthy instance (stops it, snapshots it,
# boots it afresh, which starts its health from unknown): these tests read the transitions from the events the
# agent records, not from a state that recovery moves on from.


def test_a_bad_check_is_one_line_saying_what_to_fix(cloud: CloudCLI) -> None:
    for args, says in (
        (["--health", "tcp"], "Error: --health tcp: give tcp:PORT, http:PORT/PATH or process:NAME"),
        (["--health", "tcp:80/x"], "Error: --health tcp:80/x: give tcp:PORT or http:PORT/PATH (PORT a number)"),
        (["--health-fall", "2"], "Error: --health-interval, --health-fall and --health-rise need --health"),
        (["--health", "tcp:80", "--health-fall", "50"], "health.fall: Input should be less than or equal to 20"),
        (["--health", "http:99999/"], "health.port: Input should be less than or equal to 65535"),
    ):
        proc = cloud.run("launch", "busybox", "bad", *args, check=False)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert says in proc.stderr, proc.stderr
    assert all(i["name"] != "bad" for i in cloud.json("list"))


def test_tcp_and_http_and_process_checks_pass(checked: CloudCLI) -> None:
    for name in ("ht", "hh", "hp"):
        _until(checked, name, "healthy")
        health = _health(checked, name)
        assert health["successes"] >= 2 and health["failures"] == 0
        assert "passed 2 times in a row (rise 2)" in _event(checked, name, "Healthy", 0)["message"]
    show = checked.run("show", "hh").stdout
    assert "healthy since" in show and "(http:8080/index.html every 0.5 s, fall 3, rise 2)" in show


def test_closed_port_and_wrong_status_never_healthy(checked: CloudCLI) -> None:
    hx = _event(checked, "hx", "Unhealthy", 0)
    assert hx["type"] == "Warning"
    assert hx["message"].startswith("tcp:9 failed 3 times in a row (fall 3): tcp:9: "), hx
    assert "refused" in hx["message"].lower()
    h4 = _event(checked, "h4", "Unhealthy", 0)
    assert h4["message"].endswith(": http /missing: status 404, expected 200"), h4
    time.sleep(2)  # more probes (and recoveries): still never healthy
    for name in ("hx", "h4"):
        assert _events(checked, name, "Healthy") == []
        assert _health(checked, name).get("state") != "healthy"
    checked.run("delete", "hx", "h4", "--cascade")  # recovery would rebuild them over and over, forensics too


def test_killed_server_goes_unhealthy_then_healthy_again(checked: CloudCLI) -> None:
    _until(checked, "hh", "healthy")
    _until(checked, "hp", "healthy")
    killed = time.time()
    for name in ("hh", "hp"):  # httpd forks a child per probe: one that exits during killall's scan fails it
        checked.run("exec", name, "--", "sh", "-c", "killall httpd || true")
    hh = _event(checked, "hh", "Unhealthy", killed)
    took = _time(hh) - killed
    print(f"killed server marked unhealthy after {took:.2f} s")
    assert took > 0.5, took  # fall 3 probes 0.5 s apart: not at the first failure
    assert "failed 3 times in a row (fall 3)" in hh["message"] and "refused" in hh["message"].lower(), hh
    hp = _event(checked, "hp", "Unhealthy", killed)
    assert hp["message"].endswith(": no process named httpd runs in the instance"), hp
    for name in ("hh", "hp"):
        checked.run("exec", name, "--", *START_HTTPD, check=False)  # recovery may have stopped it already
    for name, unhealthy in (("hh", hh), ("hp", hp)):
        back = _event(checked, name, "Healthy", _time(unhealthy), timeout=40)
        assert "passed 2 times in a row (rise 2)" in back["message"]
        _settled(checked, name)


def test_restart_resets_to_unknown(checked: CloudCLI) -> None:
    _until(checked, "ht", "healthy")
    restarted = time.time()
    checked.run("restart", "ht", "--wait")
    # unknown until it has passed `rise` probes on the new run, then a new Healthy event
    assert _health(checked, "ht")["state"] in ("unknown", "healthy")
    _event(checked, "ht", "Healthy", restarted)
    _until(checked, "ht", "healthy")


def _kill_in_tree(init: int, comm: str) -> int:
    """SIGKILLs the processes named comm under init (from the host: exec needs cloudletd); how many."""
    todo, killed = [init], 0
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == comm:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
    return killed


def test_checks_go_on_while_cloudletd_is_down(checked: CloudCLI) -> None:
    init = _settled(checked, "hh")["pid"]
    checked.kill9("cloudletd")
    try:
        killed = time.time()
        assert _kill_in_tree(init, "httpd") >= 1  # the server, and a probe's child if one was running
        time.sleep(6)  # fall 3 x 0.5 s, with room: the agent sees it while cloudletd is down
    finally:
        back = time.time()
        checked.run("up")
    seen = _event(checked, "hh", "Unhealthy", killed)  # from the outbox, stamped when the agent saw it
    assert killed < _time(seen) < back
    checked.run("exec", "hh", "--", *START_HTTPD, check=False)
    _until(checked, "hh", "healthy", timeout=40)  # started by hand, or rebuilt by recovery
