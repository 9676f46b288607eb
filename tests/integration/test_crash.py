"""kill -9 cloudletd, the agent or both at random points while instances are created, stopped, restarted and
deleted, and also while `cloudlet up` starts them, while `cloudlet down` stops everything, and while a restarted
agent adopts what runs; after `up` again the control plane and the agent converge: every acknowledged instance is
in its desired state, `repair --check` finds nothing, every address is allocated once (to a live instance), no
cgroup, netns or bundle is left of a deleted instance, and the agent's DNS answers exactly the live instances.

The storm is random: CLOUDLET_SEED replays one (every assertion names the seed), CLOUDLET_STORM_OPS sets the
number of API operations (default 120). Operations are cheap API calls without waiting, so the storm lands in the
middle of the reconcilers' work instead of between finished steps.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from dnslib import DNSRecord

from tests.conftest import CLI, CloudCLI

pytestmark = [pytest.mark.root, pytest.mark.slow]

DISRUPTIONS = ("cloudletd", "agent", "both", "during-up", "during-down", "adoption")


def _api(cloud: CloudCLI) -> httpx.Client:
    url = json.loads((cloud.home / "endpoint.json").read_text())["url"]
    token = (cloud.home / "admin.token").read_text().strip()
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _kill9(cloud: CloudCLI, target: str) -> None:
    """kill -9 of "cloudletd", "agent" or "both", but only a process of this cloud: a pid file may be stale (the
    process was killed before) and its pid reused by anything."""
    files = {"cloudletd": cloud.home / "cloudletd.pid", "agent": cloud.home / "agents/local/agent.pid"}
    for what, f in files.items():
        if target not in (what, "both"):
            continue
        try:
            pid = int(f.read_text())
            ours = f"CLOUDLET_HOME={cloud.home}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if ours:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # no pid file yet, or the process is gone


def _cli(cloud: CloudCLI, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], env=cloud.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )


def _disrupt(cloud: CloudCLI, kind: str, rng: random.Random) -> None:
    """One kill -9 scenario; the cloud is up again (`cloudlet up` succeeded) when it returns."""
    target = rng.choice(["cloudletd", "agent", "both"])
    if kind in ("cloudletd", "agent", "both"):  # somewhere inside the reconcilers' work
        time.sleep(rng.uniform(0.0, 0.4))
        _kill9(cloud, kind)
    elif kind == "during-up":  # something to start, then kill while `up` starts it
        _kill9(cloud, target)
        up = _cli(cloud, "up")
        time.sleep(rng.uniform(0.0, 2.0))
        _kill9(cloud, rng.choice(["cloudletd", "agent", "both"]))
        up.wait(timeout=180)
    elif kind == "during-down":  # kill while `down` stops instances, tears down plumbing, flushes the outbox
        down = _cli(cloud, "down")
        time.sleep(rng.uniform(0.0, 2.0))
        _kill9(cloud, target)
        down.wait(timeout=180)
    else:  # adoption: a new agent adopting the running instances is killed right after `up` or a moment later
        _kill9(cloud, "agent")
        cloud.run("up")
        time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.5)]))
        _kill9(cloud, "agent")
    cloud.run("up")


def _history(cloud: CloudCLI, text: str) -> str:
    """What the logs say about the records a failure names (by id), for a race seen once."""
    ids = set(re.findall(r"\b01[0-9a-z]{24}\b", text))
    lines = []
    for log in (cloud.home / "cloudletd.log", cloud.home / "agents/local/agent.log"):
        lines += [f"{log.name}: {x}" for x in log.read_text(errors="replace").splitlines() if any(i in x for i in ids)]
    for i in sorted(ids):
        for name in ("console.log", "runc.log"):
            f = cloud.home / "instances" / i / name
            lines.append(f"{i}/{name}: {f.read_text(errors='replace')[-600:] if f.exists() else '(none)'}")
        state = cloud.home / "runc" / f"cl-{i}"
        lines.append(f"{state}: {sorted(p.name for p in state.iterdir()) if state.is_dir() else '(none)'}")
    return "\n".join(lines[-80:])


def _until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def test_kill9_storm_converges(cloud: CloudCLI) -> None:
    seed = int(os.environ.get("CLOUDLET_SEED") or random.SystemRandom().randrange(1 << 32))
    ops = int(os.environ.get("CLOUDLET_STORM_OPS") or 120)
    seen = f"seed {seed} (replay: CLOUDLET_SEED={seed} CLOUDLET_STORM_OPS={ops})"
    print(seen)  # pytest shows it with a failure; every assertion names it too
    rng = random.Random(seed)
    api = _api(cloud)
    desired: dict[str, str] = {}  # name -> running|stopped ; absent = deleted
    created: set[str] = set()
    # every scenario once, in a random order, then random ones: about one per 8 operations
    plan = rng.sample(DISRUPTIONS, len(DISRUPTIONS))
    plan += [rng.choice(DISRUPTIONS) for _ in range(max(0, ops // 8 - len(plan)))]
    at = set(rng.sample(range(2, ops), len(plan)))
    done: list[str] = []  # the disruptions, as step:kind

    def why(*parts: object) -> str:  # a string, which pytest prints whole
        return "\n".join([seen, f"disruptions: {' '.join(done)}", *map(str, parts)])

    for step in range(ops):
        names = sorted(desired)
        op = rng.choice(["create", "create", "create", "delete", "delete", "stop", "start", "restart"])
        if op == "create" or not names:
            name = f"c-{step}"
            r = api.post("/v1/instances", json={"name": name, "image": "busybox", "memory_mib": 32})
            assert r.status_code == 202, why(step, r.text)
            desired[name] = "running"
            created.add(name)
        else:
            name = rng.choice(names)
            if op == "delete":
                r = api.delete(f"/v1/instances/{name}")
                assert r.status_code == 202, why(step, r.text)
                del desired[name]
            else:
                r = api.post(f"/v1/instances/{name}/actions", json={"action": op})
                assert r.status_code == 202, why(step, op, r.text)
                desired[name] = "stopped" if op == "stop" else "running"
        if step in at:
            kind = plan[len(done)]
            _disrupt(cloud, kind, rng)
            done.append(f"{step}:{kind}")
            api = _api(cloud)
    assert {d.split(":")[1] for d in done} == set(DISRUPTIONS), why()
    items: dict[str, Any] = {}

    def converged() -> bool:
        nonlocal items
        items = {i["name"]: i for i in api.get("/v1/instances", params={"limit": 1000}).json()["items"]}
        return items.keys() == desired.keys() and all(items[n]["state"] == desired[n] for n in desired)

    _until(converged, 120)
    wrong = {n: items[n]["id"] for n in items if desired.get(n) != items[n]["state"]}
    assert not wrong and items.keys() == desired.keys(), why(
        f"desired {desired}", f"observed { ({n: i['state'] for n, i in items.items()}) }", _history(cloud, str(wrong))
    )
    check = cloud.run("repair", "--check", check=False)
    assert check.returncode == 0, why(check.stdout, _history(cloud, check.stdout))

    ids = {n: i["id"] for n, i in items.items()}
    running = {n for n, s in desired.items() if s == "running"}
    cid = cloud.cloud_id()
    # nothing of a deleted instance: netns, bundle, cgroup in any controller
    netns = [n for n in os.popen("ip netns list").read().split() if n.startswith(f"cl-{cid}-i-")]
    assert {n.removeprefix(f"cl-{cid}-i-") for n in netns} <= set(ids.values()), why(netns)
    assert {p.name for p in (cloud.home / "instances").iterdir()} <= set(ids.values()), why(
        "bundles of deleted instances"
    )
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        parent = ctrl / f"cloudlet-{cid}"
        if parent.is_dir():
            left = {p.name for p in parent.iterdir() if p.is_dir()} - set(ids.values())
            assert not left, why(f"cgroups of deleted instances in {parent}: {left}")
    assert all((Path("/sys/fs/cgroup/pids") / f"cloudlet-{cid}" / ids[n]).is_dir() for n in running), why(
        "a running instance without a pids cgroup"
    )

    # addresses: every live instance has one, no two the same, each allocated once in the store, to it
    ips = {n: items[n]["ip"] for n in items}
    assert all(ips.values()) and len(set(ips.values())) == len(ips), why(ips)
    with sqlite3.connect(f"file:{cloud.home / 'state.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT address, owner_id FROM ip_allocations").fetchall()
    assert sorted(rows) == sorted((ips[n], ids[n]) for n in items), why(rows, ips)

    # DNS on the agent's 127.0.0.1 port: the running instances resolve to their address, deleted ones do not
    port = int(cloud.json("info")["ports"]["dns@local"])

    def answers(name: str) -> list[str]:
        q = DNSRecord.question(f"{name}.default.zone-a.cloudlet")
        return [str(r.rdata) for r in DNSRecord.parse(q.send("127.0.0.1", port, timeout=2)).rr]

    def dns_right() -> bool:
        return all(answers(n) == [ips[n]] for n in running) and not any(answers(n) for n in created - set(desired))

    if not _until(dns_right, 10):
        bad = {n: answers(n) for n in sorted(created) if answers(n) != ([ips[n]] if n in running else [])}
        raise AssertionError(why(f"DNS answers wrong: {bad}"))
    for name in rng.sample(sorted(running), min(8, len(running))):
        r = api.post(f"/v1/instances/{name}/exec", json={"command": ["true"]})
        assert r.json()["exit_code"] == 0, why(name, r.text)
