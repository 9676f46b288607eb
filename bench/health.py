"""Health checks on a real cloud: what one probe costs, and how long detection takes.

1. Probe cost: a busybox instance serving HTTP (no check of its own); resilience/health.py `probe()` is called
   --probes times per type from this process, as the agent calls it (a socket made inside the instance's netns,
   the process tree walked through /proc): p50 and p99 in ms.
2. Detection: an instance with `--health http:8080/ --health-interval 0.5 --health-fall 3 --health-rise 2`; its
   httpd is killed --rounds times; kill -> the agent's Unhealthy event (its own time stamp), p50 and max. The goal
   is fall x interval plus one probe timeout (1.5 + 0.25 s). Then it waits for Healthy again (the control plane's
   recovery rebuilds it, or the httpd started again by hand passes first).
Needs root and runc."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud_env

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
from cloudlet.compute.resource import HealthCheck
from cloudlet.resilience.health import probe

SERVE = "mkdir -p /w && echo ok > /w/index.html && httpd -p 8080 -h /w; exec sleep 1000000"
CLI = [sys.executable, "-m", "cloudlet.cli.main"]


def cli(env: dict[str, str], *args: str, check: bool = True) -> str:
    return subprocess.run([*CLI, *args], env=env, check=check, capture_output=True, text=True).stdout


def probe_costs(client: Any, env: dict[str, str], n: int) -> None:
    cli(env, "launch", "busybox", "bench-p", "--command", SERVE, "--memory", "32", "--wait")
    view = client.get("/v1/instances/bench-p").json()
    pid, ip = view["pid"], view["ip"]
    time.sleep(0.5)  # httpd up
    checks = {
        "tcp": HealthCheck(type="tcp", port=8080),
        "http": HealthCheck(type="http", port=8080, path="/index.html"),
        "process": HealthCheck(type="process", process="httpd"),
        "tcp, closed port": HealthCheck(type="tcp", port=9),
    }
    print(f"{'probe':<18} {'p50 ms':>8} {'p99 ms':>8}  result")
    for name, check in checks.items():
        times, result = [], None
        for _ in range(n):
            start = time.perf_counter()
            result = probe(check, pid, ip)
            times.append((time.perf_counter() - start) * 1000)
        print(f"{name:<18} {statistics.median(times):8.2f} {percentile(times, 99):8.2f}  {result or 'passed'}")


def _events(client: Any, name: str, reason: str, after: float) -> list[dict[str, Any]]:
    items = client.get("/v1/events", params={"name": name, "limit": 200}).json()["items"]
    return [e for e in items if e["reason"] == reason and float(e["time"]) > after]


def _wait(client: Any, name: str, reason: str, after: float, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _events(client, name, reason, after)
        if found:
            return min(float(e["time"]) for e in found)
        time.sleep(0.05)
    raise SystemExit(f"no {reason} event for {name} within {timeout:g} s")


def detection(client: Any, env: dict[str, str], rounds: int) -> None:
    fast = ["--health-interval", "0.5", "--health-fall", "3", "--health-rise", "2"]
    cli(env, "launch", "busybox", "bench-d", "--command", SERVE, "--memory", "32", "--health", "http:8080/", *fast)
    _wait(client, "bench-d", "Healthy", 0)
    took = []
    for _ in range(rounds):
        killed = time.time()
        cli(env, "exec", "bench-d", "--", "killall", "httpd")
        took.append(_wait(client, "bench-d", "Unhealthy", killed) - killed)
        cli(env, "exec", "bench-d", "--", "httpd", "-p", "8080", "-h", "/w", check=False)
        _wait(client, "bench-d", "Healthy", killed)
    print(f"kill -> Unhealthy, {rounds} rounds: p50 {statistics.median(took):.2f} s, max {max(took):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with real_cloud_env() as (client, env):
        probe_costs(client, env, args.probes)
        detection(client, env, args.rounds)


if __name__ == "__main__":
    main()
