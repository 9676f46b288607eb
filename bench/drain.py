"""Host drain: --count busybox instances on an added host h2 (zone-b), each keeping a counter on its root disk
(exits on TERM, as a service should), drained to host local (`POST /v1/hosts/h2/drain`, followed with GET every
0.2 s). Prints each instance's downtime (its stop asked -> running on local, from the drain's own record), the
bytes shipped (full copy while running + last delta) and the ship times, then downtime p50/max and the total time
of the drain; then checks every instance runs on local only (runc under both hosts' roots) with its counter at
least where it was before the drain. Goal (issue 10): 20 instances in <= 30 s. With --replicas each instance has
`replicas: 1` (interval 1 s) shipped to local first, and the drain uses that replica instead of a copy of its own.
Needs root and runc."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud_env

WRITER = (
    "trap 'exit 0' TERM; i=$(cat /counter 2>/dev/null || echo 0); "
    "while :; do i=$((i+1)); echo $i > /counter.tmp && mv /counter.tmp /counter; sleep 0.2; done"
)


def runc_running(home: Path, host: str) -> set[str]:
    root = home / "runc" if host == "local" else home / "agents" / host / "runc"
    out = subprocess.run(["runc", "--root", str(root), "list", "-f", "json"], capture_output=True, text=True)
    return {c["id"] for c in json.loads(out.stdout or "null") or [] if c["status"] == "running"}


def counter(api: httpx.Client, name: str) -> int:
    resp = api.post(f"/v1/instances/{name}/exec", json={"command": ["cat", "/counter"], "timeout": 10})
    resp.raise_for_status()
    return int(resp.json()["stdout"] or 0)


def wait_running(api: httpx.Client, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {i["name"]: i["state"] for i in api.get("/v1/instances", params={"limit": 500}).json()["items"]}
        if all(states.get(n) == "running" for n in names):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"not running after {timeout:g} s: {[n for n in names if states.get(n) != 'running']}")
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--replicas", action="store_true", help="instances with replicas: 1 (to local), used by the drain")
    args = ap.parse_args()
    with real_cloud_env() as (api, env):
        home = Path(env["CLOUDLET_HOME"])
        cli = [sys.executable, "-m", "cloudlet.cli.main"]
        subprocess.run([*cli, "host", "add", "h2", "--zone", "zone-b"], env=env, check=True, capture_output=True)
        names = [f"d{i:02d}" for i in range(args.count)]
        for name in names:
            body = {
                "name": name,
                "image": "busybox",
                "memory_mib": 32,
                "zone": "zone-b",
                "command": ["sh", "-c", WRITER],
            }
            if args.replicas:
                body.update(replicas=1, replica_interval_s=1)
            api.post("/v1/instances", json=body).raise_for_status()
        wait_running(api, names, 180)
        if args.replicas:  # every instance's first (full) replica has landed on local
            deadline = time.monotonic() + 120
            while any(not (api.get(f"/v1/instances/{n}").json().get("replica") or {}).get("seq") for n in names):
                if time.monotonic() > deadline:
                    raise SystemExit("replicas did not land")
                time.sleep(0.5)
        time.sleep(1)
        before = {n: counter(api, n) for n in names}

        t0 = time.monotonic()
        state = api.post("/v1/hosts/h2/drain").json()
        while state.get("state") == "running":
            time.sleep(0.2)
            state = api.get("/v1/hosts/h2/drain").json()
        total = time.monotonic() - t0

        print(
            f"\n{'instance':<10} {'to':<6} {'downtime s':>10} {'move s':>7} {'bytes':>10} {'delta':>7} {'ship ms':>14}"
        )
        for m in sorted(state.get("moves", []), key=lambda m: m["instance"]):
            ms = "+".join(f"{x:.0f}" for x in m["ms"]) or "-"
            print(
                f"{m['instance']:<10} {m['to']:<6} {m['downtime_s']:>10.3f} {m['took_s']:>7.2f} {m['bytes']:>10} {m.get('delta_bytes') or 0:>7} {ms:>14}"
            )
        for f in state.get("failed", []):
            print(f"{f['instance']:<10} FAILED {f['reason']}")
        downs = [m["downtime_s"] for m in state.get("moves", []) if m.get("downtime_s") is not None]
        print(
            f"\n{state.get('moved')} of {state.get('total')} moved ({'replicas' if args.replicas else 'copies'}), "
            f"state {state.get('state')}: total {total:.1f} s (drain's own {state.get('took_s')} s); "
            + (f"downtime p50 {percentile(downs, 50):.2f} s, max {max(downs):.2f} s" if downs else "")
        )
        # exactly once, on local; the data came along
        ids = {i["name"]: f"cl-{i['id']}" for i in api.get("/v1/instances", params={"limit": 500}).json()["items"]}
        local, h2 = runc_running(home, "local"), runc_running(home, "h2")
        twice = [n for n in names if ids[n] in local and ids[n] in h2]
        behind = [n for n in names if counter(api, n) < before[n]]
        print(
            f"running on local {sum(ids[n] in local for n in names)}, on h2 {sum(ids[n] in h2 for n in names)}, "
            f"on both {len(twice)}; counters behind their pre-drain value: {behind or 'none'}"
        )
        print(
            f"goal: {args.count} instances in <= 30 s: {'met' if total <= 30 and not state.get('failed') else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
