"""kill -9 the agent, cloudletd or both while volumes are created, snapshotted, cloned and deleted: after `up` nothing half-made is
ready, every ready record has its pool volume, and `storage gc --check` finds nothing held by nobody."""

from __future__ import annotations

import json
import os
import random
import time

import httpx
import pytest

from tests.conftest import CloudCLI

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _api(cloud: CloudCLI) -> httpx.Client:
    url = json.loads((cloud.home / "endpoint.json").read_text())["url"]
    token = (cloud.home / "admin.token").read_text().strip()
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_kill9_during_storage_operations(cloud: CloudCLI) -> None:
    seed = int(os.environ.get("CLOUDLET_SEED") or random.SystemRandom().randrange(1 << 32))
    seen = f"seed {seed} (replay: CLOUDLET_SEED={seed})"
    print(seen)  # shown with a failure; the assertions name it too
    rng = random.Random(seed)
    api = _api(cloud)
    vols: set[str] = set()
    snaps: dict[str, str] = {}  # snapshot -> source volume
    kills = 0

    def forget(resp: httpx.Response) -> None:
        if resp.status_code == 202:
            for item in resp.json()["items"]:
                if item["kind"] == "Volume":
                    vols.discard(item["name"])
                else:
                    snaps.pop(item["name"], None)

    for step in range(40):
        choices = (
            ["volume"] + (["snapshot", "delete-volume"] if vols else []) + (["clone", "delete-snap"] if snaps else [])
        )
        op = rng.choice(choices)
        if op == "volume":
            r = api.post("/v1/volumes", json={"name": f"v{step}", "size_gib": 1})
            assert r.status_code == 202, f"{seen}: {r.text}"
            vols.add(f"v{step}")
        elif op == "snapshot":
            src = rng.choice(sorted(vols))
            if api.post("/v1/snapshots", json={"source": src, "name": f"s{step}"}).status_code == 202:
                snaps[f"s{step}"] = src
        elif op == "clone":
            r = api.post("/v1/volumes/clone", json={"snapshot": rng.choice(sorted(snaps)), "name": f"c{step}"})
            if r.status_code == 202:
                vols.add(f"c{step}")
        elif op == "delete-volume":
            forget(api.delete(f"/v1/volumes/{rng.choice(sorted(vols))}", params={"cascade": True}))
        else:
            forget(api.delete(f"/v1/snapshots/{rng.choice(sorted(snaps))}", params={"cascade": True}))
        if step % 7 == 6:
            time.sleep(rng.uniform(0.0, 0.15))
            cloud.kill9(("agent", "cloudletd", "both")[kills % 3])  # the agent does the pool work
            kills += 1
            cloud.run("up")
            api = _api(cloud)
    assert kills >= 5, seen
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        v = {i["name"]: i["state"] for i in api.get("/v1/volumes").json()["items"]}
        s = {i["name"]: i["state"] for i in api.get("/v1/snapshots").json()["items"]}
        if set(v) == vols and set(s) == set(snaps) and all(x == "ready" for x in [*v.values(), *s.values()]):
            break
        time.sleep(0.25)
    if set(v) != vols or set(s) != set(snaps):  # what the stragglers went through, and what the agent holds
        stuck = sorted((set(v) - vols) | (set(s) - set(snaps)))
        events = {n: api.get("/v1/events", params={"name": n}).json()["items"][-8:] for n in stuck}
        cache = json.loads((cloud.home / "agents/local/cache.json").read_text())
        held = [r for r in cache["items"] if r.get("name") in stuck]
        raise AssertionError(
            f"{seen}: {v} {s} {vols} {snaps}\nevents: {events}\nagent cache: {held}\n"
            f"outbox: {cache['outbox'][:20]}\nfinalized: {cache['finalized']}"
        )
    assert all(x == "ready" for x in [*v.values(), *s.values()]), f"{seen}: {v} {s}"
    usage = api.get("/v1/storage/usage").json()["volumes"]
    owned = {(u["kind"], u["name"]) for u in usage}
    assert {("Volume", n) for n in vols} | {("Snapshot", n) for n in snaps} <= owned, f"{seen}: {owned}"
    gc = cloud.run("storage", "gc", "--check", check=False)
    assert gc.returncode == 0, f"{seen}: {gc.stdout}"
