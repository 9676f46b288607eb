"""Security groups: what a change costs and how soon it holds.

1. Loading tables with the linux network driver alone (its own hub and instance namespaces, no cloud): the hub's
   anti-spoofing table for N ports, one instance's ingress table at the bounds (16 groups of 64 rules, 200
   members), and a change of one group reloaded in N instances one after the other.
2. On a real cloud (busybox instances): from the API's answer to an attach, a rule add, a rule delete and a detach
   until a probe loop inside the client instance's netns (a TCP connect every 10 ms) sees the change. Goal ~1 s.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import real_cloud_env, spread

from cloudlet.network.drivers.base import PortSpec
from cloudlet.network.drivers.linux import LinuxNetworkDriver
from cloudlet.network.netns import NETNS_DIR
from cloudlet.network.nft_secgroups import render_antispoof, render_ingress
from cloudlet.network.resource import SecurityGroupRule
from cloudlet.network.secgroups import rule_id

SERVE = "httpd -p 8080 -h / && exec httpd -f -p 80 -h /"
# prints the time of every change between reachable and not, as seen by a connect every 10 ms
PROBE = """
import socket, sys, time
ip, port, last = sys.argv[1], int(sys.argv[2]), None
while True:
    try:
        socket.create_connection((ip, port), timeout=0.05).close(); ok = True
    except OSError:
        ok = False
    if ok != last:
        print(time.time(), ok, flush=True); last = ok
    time.sleep(0.01)
"""


def timed(fn: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - started)
    return out


def driver_rows(runs: int) -> list[tuple[str, str]]:
    cloud_id = "b" + secrets.token_hex(2)
    net = LinuxNetworkDriver(cloud_id)
    rows = []
    try:
        nid = secrets.token_hex(13)
        net.ensure_network(nid, "10.254.0.1", 16)
        ports = {}
        for i in range(100):
            iid = f"{i:026d}"
            ports[iid] = f"10.254.{i // 200}.{i % 200 + 2}"
            net.ensure_port(PortSpec(iid, nid, ports[iid], 16, "10.254.0.1"))
        for n in (10, 100):
            text = render_antispoof(dict(list(ports.items())[:n]))
            load = timed(lambda text=text: net.apply_ruleset("sg", text), runs)  # type: ignore[misc]
            rows.append((f"hub table, {n} ports: load", spread(load)))
        gids = [f"g{i:025d}" for i in range(16)]
        rules = [
            SecurityGroupRule(
                id=rule_id("tcp", str(p), "10.0.0.0/8", None), protocol="tcp", ports=str(p), cidr="10.0.0.0/8"
            )
            for p in range(1000, 1064)
        ]
        members = {g: [f"10.254.{i // 200}.{i % 200 + 2}" for i in range(200)] for g in gids}
        one = next(iter(ports))
        rows.append(
            (
                "instance table, 16 groups x 64 rules: render",
                spread(
                    [t * 1000 for t in timed(lambda: render_ingress([(g, rules) for g in gids], members), runs)], "ms"
                ),
            )
        )
        big = render_ingress([(g, rules) for g in gids], members)
        rows.append(
            (
                "instance table, 16 x 64 rules, 200 members: load",
                spread(timed(lambda: net.apply_ruleset("sg", big, one), runs)),
            )
        )
        small = render_ingress([(gids[0], rules[:2])], {gids[0]: list(ports.values())[:20]})
        twenty = list(ports)[:20]
        rows.append(
            (
                "one group changed: reload 20 instance tables",
                spread(timed(lambda: [net.apply_ruleset("sg", small, i) for i in twenty], runs)),
            )
        )
    finally:
        net.teardown()
    return rows


def cloud_rows(runs: int) -> list[tuple[str, str]]:
    cli = [sys.executable, "-m", "cloudlet.cli.main"]
    with real_cloud_env() as (api, env):
        for name, extra in (("client", []), ("server", ["--secgroup", "web"])):
            if name == "server":
                api.post("/v1/secgroups", json={"name": "web"}).raise_for_status()
            subprocess.run(
                [*cli, "launch", "busybox", name, "--wait", "--memory", "32", "--command", SERVE, *extra],
                env=env,
                check=True,
                capture_output=True,
            )
        client, server = (api.get(f"/v1/instances/{n}").json() for n in ("client", "server"))
        cloud_id = (Path(env["CLOUDLET_HOME"]) / "cloud.id").read_text().strip()
        probe = subprocess.Popen(
            [
                "nsenter",
                f"--net={NETNS_DIR}/cl-{cloud_id}-i-{client['id']}",
                sys.executable,
                "-c",
                PROBE,
                server["ip"],
                "80",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert probe.stdout is not None

        def until(want: bool) -> float:
            """Time of the next transition to `want` the probe reports."""
            while True:
                when, ok = probe.stdout.readline().split()  # type: ignore[union-attr]
                if (ok == "True") == want:
                    return float(when)

        results: dict[str, list[float]] = {k: [] for k in ("attach", "detach", "rule add", "rule delete")}
        try:
            until(False)  # client is in default, server in web: nothing gets in
            for _ in range(runs):
                t = time.time()
                api.post("/v1/secgroups/web/members", json={"instance": "client"}).raise_for_status()
                results["attach"].append(until(True) - t)  # client now a member of web: same group
                t = time.time()
                api.delete("/v1/secgroups/web/members/client").raise_for_status()
                results["detach"].append(until(False) - t)
                t = time.time()
                r = api.post("/v1/secgroups/web/rules", json={"protocol": "tcp", "ports": "80", "cidr": "0.0.0.0/0"})
                r.raise_for_status()
                results["rule add"].append(until(True) - t)
                t = time.time()
                api.delete(f"/v1/secgroups/web/rules/{r.json()['rules'][0]['id']}").raise_for_status()
                results["rule delete"].append(until(False) - t)
        finally:
            probe.kill()
            probe.wait()
    return [(f"real cloud: {k} until the probe sees it", spread(v)) for k, v in results.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="repetitions per row (default 5)")
    args = ap.parse_args()
    rows = driver_rows(args.runs) + cloud_rows(args.runs)
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  median (min–max)")
    for what, value in rows:
        print(f"{what:<{width}}  {value}")


if __name__ == "__main__":
    main()
