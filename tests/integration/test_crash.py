"""kill -9 cloudletd, the agent or both at random points while instances are created, stopped and deleted;
after `up` again the control plane and the agent converge: every acknowledged instance is in its desired state
and `repair --check` finds nothing (no orphan, nothing missing)."""

from __future__ import annotations

import os
import random
import time

import httpx
import pytest

from tests.conftest import CloudCLI

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _api(cloud: CloudCLI) -> httpx.Client:
    import json

    url = json.loads((cloud.home / "endpoint.json").read_text())["url"]
    token = (cloud.home / "admin.token").read_text().strip()
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_kill9_storm_converges(cloud: CloudCLI) -> None:
    rng = random.Random(int(os.environ.get("CLOUDLET_SEED", "7")))
    api = _api(cloud)
    desired: dict[str, str] = {}  # name -> running|stopped ; absent = deleted
    kills = 0
    targets: list[str] = []
    for step in range(36):
        names = sorted(desired)
        op = rng.choice(["create", "create", "delete", "stop", "start"] if names else ["create"])
        if op == "create":
            name = f"c-{step}"
            r = api.post("/v1/instances", json={"name": name, "image": "busybox", "memory_mib": 32})
            assert r.status_code == 202, r.text
            desired[name] = "running"
        else:
            name = rng.choice(names)
            if op == "delete":
                assert api.delete(f"/v1/instances/{name}").status_code == 202
                del desired[name]
            else:
                r = api.post(f"/v1/instances/{name}/actions", json={"action": op})
                assert r.status_code == 202, r.text
                desired[name] = "running" if op == "start" else "stopped"
        if step % 6 == 5:
            time.sleep(rng.uniform(0.0, 0.4))  # land somewhere inside the reconcilers' work
            target = rng.choice(["cloudletd", "agent", "both"])
            cloud.kill9(target)
            targets.append(target)
            kills += 1
            time.sleep(0.2)
            cloud.run("up")
            api = _api(cloud)
    assert kills >= 5 and len(set(targets)) >= 2, targets
    deadline = time.monotonic() + 90
    while True:
        items = {i["name"]: i for i in api.get("/v1/instances").json()["items"]}
        done = items.keys() == desired.keys() and all(items[n]["state"] == desired[n] for n in desired)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert items.keys() == desired.keys()
    assert {n: items[n]["state"] for n in desired} == desired
    check = cloud.run("repair", "--check", check=False)
    assert check.returncode == 0, check.stdout
    live_ids = {i["id"] for i in items.values()}
    cid = cloud.cloud_id()
    netns = [n for n in os.popen("ip netns list").read().split() if n.startswith(f"cl-{cid}-i-")]
    assert {n.removeprefix(f"cl-{cid}-i-") for n in netns} <= live_ids
    assert {p.name for p in (cloud.home / "instances").iterdir()} <= live_ids
    for name in (n for n, s in desired.items() if s == "running"):
        assert api.post(f"/v1/instances/{name}/exec", json={"command": ["true"]}).json()["exit_code"] == 0
