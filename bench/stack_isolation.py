"""One tenant's stacks against the rest of the cloud (the red-team findings on stack hooks), on a real cloud:
tenant A has --stacks stacks whose setup hook sleeps 400 s, tenant C one stack whose deploy hook sleeps 5 s;
meanwhile

  - tenant B launches an instance: seconds until it runs (before the hook pool: > 60 s with 7 such stacks);
  - C fires --deploys concurrent rolling deploys of its stack: the answers' status codes (one 202, the rest 409)
    and the slowest answer, while B lists its instances: median and slowest GET /v1/instances.

Prints one table. The machine is shared: the times include whatever else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import real_cloud_env


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stacks", type=int, default=7, help="A's stacks with a setup hook sleeping 400 s")
    parser.add_argument("--deploys", type=int, default=45, help="concurrent deploy requests of A")
    args = parser.parse_args()
    with real_cloud_env() as (admin, env):
        cli = [sys.executable, "-m", "cloudlet.cli.main"]
        clients = {}
        for name in ("slowpoke", "bystander", "deployer"):
            out = subprocess.run([*cli, "tenant", "create", name], env=env, check=True, capture_output=True, text=True)
            token = out.stdout.strip().splitlines()[-1]
            clients[name] = httpx.Client(
                base_url=str(admin.base_url), headers={"Authorization": f"Bearer {token}"}, timeout=120
            )
        a, b, c = clients["slowpoke"], clients["bystander"], clients["deployer"]
        subprocess.run(
            [*cli, "tenant", "quota", "slowpoke", "--instances", "50"], env=env, check=True, capture_output=True
        )
        dep = "name: dep\nlayers:\n  d: {memory: 32, cpus: 0.1, hooks: {deploy: sleep 5}}\n"
        c.post("/v1/stacks", json={"yaml": dep}).raise_for_status()
        wait_for(lambda: c.get("/v1/stacks/dep").json()["state"] == "ready", 90, "stack dep ready")
        for i in range(args.stacks):
            text = f"name: s{i}\nlayers:\n  s{i}: {{memory: 32, cpus: 0.1, hooks: {{setup: sleep 400}}}}\n"
            a.post("/v1/stacks", json={"yaml": text}).raise_for_status()

        def a_running() -> bool:
            return sum(i["state"] == "running" for i in a.get("/v1/instances").json()["items"]) == args.stacks

        wait_for(a_running, 120, "A's instances")
        time.sleep(2)  # the setup hooks are sleeping now
        b.post("/v1/instances", json={"name": "b-1", "image": "busybox", "memory_mib": 32, "cpus": 0.1})
        launch = wait_for(lambda: b.get("/v1/instances/b-1").json()["state"] == "running", 120, "B's launch")

        lists: list[float] = []
        stop = threading.Event()

        def lister() -> None:
            while not stop.is_set():
                t = time.monotonic()
                b.get("/v1/instances").raise_for_status()
                lists.append(time.monotonic() - t)
                time.sleep(0.05)

        watcher = threading.Thread(target=lister)
        watcher.start()
        barrier = threading.Barrier(args.deploys)

        def deploy(_: int) -> tuple[int, float]:
            with httpx.Client(base_url=c.base_url, headers=c.headers, timeout=120) as own:
                barrier.wait()
                t = time.monotonic()
                r = own.post("/v1/stacks/dep/deploy", json={"layer": "d", "batch": 1})
                return r.status_code, time.monotonic() - t

        with ThreadPoolExecutor(args.deploys) as pool:
            answers = list(pool.map(deploy, range(args.deploys)))
        try:
            done = wait_for(lambda: c.get("/v1/stacks/dep/deploy").json()["state"] != "running", 60, "the deploy")
        finally:
            stop.set()
            watcher.join()
        codes = Counter(code for code, _ in answers)
        print(f"{'measure':58} value")
        print(f"{'B launch to running, A has ' + str(args.stacks) + ' stacks with sleeping setup':58} {launch:.2f} s")
        print(
            f"{str(args.deploys) + ' concurrent deploys of one stack: status codes':58} {dict(sorted(codes.items()))}"
        )
        print(f"{'slowest deploy answer':58} {max(t for _, t in answers):.3f} s")
        print(f"{'the deploy (5 s hook) finished after the burst':58} {done:.1f} s")
        print(
            f"{'B GET /v1/instances during the burst: median / max':58} "
            f"{statistics.median(lists) * 1000:.0f} / {max(lists) * 1000:.0f} ms ({len(lists)} requests)"
        )


if __name__ == "__main__":
    main()
