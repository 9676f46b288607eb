"""The latency-aware balancing experiment: 11 members, one of them answers in 2 s for the middle 30 s of a 60 s
run; open-loop load with a 1 s client timeout; HAProxy roundrobin, HAProxy leastconn and cloudlet's latency
controller, plus an all-healthy run for the baseline p99. Prints one table.

    sudo .venv/bin/python bench/lb_slow_backend.py [--seconds 60] [--rate 150]

Every LB has the same config but its balance: server timeout 400 ms, `retry-on` (idempotent requests) with
redispatch, health checks every 500 ms. The slow member stays healthy for its health check (a static file): a
gray failure that checks miss, the case latency-aware balancing is for. The load runs in the project's outside
namespace (`cl-<cloud>-out`) against the LB's elastic IP; with no outside namespace, from the hub netns
against the LB's own address. Goal: success >= 99.95 % and p99 <= 2x the all-healthy p99.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._cloud import percentile, real_cloud_env

MEMBERS = 11
CLIENT_TIMEOUT = 1.0
SERVER_TIMEOUT = 0.4  # every LB's: a request sent to the slow member is retried elsewhere after it
SLOW_SECONDS = 2
APP = (
    "mkdir -p /www/cgi-bin && echo ok > /www/health && "
    "printf '#!/bin/sh\\n[ -f /tmp/slow ] && sleep $(cat /tmp/slow)\\n"
    'echo "Content-Type: text/plain"\\necho\\necho "$(hostname)"\\n'
    "' > /www/cgi-bin/app && chmod +x /www/cgi-bin/app && exec httpd -f -p 80 -h /www"
)


def cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "cloudlet.cli.main", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cloudlet {' '.join(args)}: {proc.stderr}{proc.stdout}")
    return proc.stdout


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "-o", "json"))


async def one(ip: str, results: list[tuple[bool, float]]) -> None:
    started = time.monotonic()
    ok = False
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            reader, writer = await asyncio.open_connection(ip, 80)
            writer.write(f"GET /cgi-bin/app HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            status = await reader.readline()
            await reader.read()
            writer.close()
            ok = status.split()[1:2] == [b"200"]
    except (OSError, TimeoutError, IndexError):
        pass
    results.append((ok, time.monotonic() - started))


async def open_loop(ip: str, rate: float, seconds: float) -> list[tuple[bool, float]]:
    """A request every 1/rate s whatever the answers (open loop), at most 1,000 in flight (bounded)."""
    results: list[tuple[bool, float]] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) - start < seconds:
        due = start + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        n += 1
        if len(tasks) >= 1000:
            results.append((False, 0.0))
            continue
        task = asyncio.create_task(one(ip, results))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return results


def slow_window(env: dict[str, str], seconds: float) -> None:
    """m1 answers in SLOW_SECONDS from a quarter to three quarters of the run."""
    start = time.monotonic()
    time.sleep(seconds / 4)
    cli(env, "exec", "m1", "--", "sh", "-c", f"echo {SLOW_SECONDS} > /tmp/slow")
    time.sleep(max(0.0, start + 3 * seconds / 4 - time.monotonic()))
    cli(env, "exec", "m1", "--", "rm", "-f", "/tmp/slow")


def in_netns(netns: str, fn: Any) -> Any:
    out: dict[str, Any] = {}

    def run() -> None:
        with open(f"/run/netns/{netns}") as f:
            if ctypes.CDLL(None, use_errno=True).setns(f.fileno(), 0x40000000) != 0:
                raise OSError(f"setns into {netns} failed")
        out["v"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["v"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seconds", type=float, default=60.0, help="length of each run (the slow window is its middle half)"
    )
    ap.add_argument("--rate", type=float, default=150.0, help="requests per second")
    ap.add_argument("--modes", default="roundrobin,leastconn,latency", help="balance modes to run, in order")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, runc)")
    with real_cloud_env() as (_, env):
        cid = Path(env["CLOUDLET_HOME"], "cloud.id").read_text().strip()
        names = [f"m{i}" for i in range(1, MEMBERS + 1)]
        for name in names:
            cli(env, "launch", "busybox", name, "--memory", "32", "--cpus", "0.5", "--command", APP)
        for name in names:
            while cli_json(env, "show", name)["state"] != "running":
                time.sleep(0.2)
        modes = args.modes.split(",")
        for mode in modes:
            cli(
                env,
                "lb",
                "create",
                mode,
                "--members",
                ",".join(names),
                "--balance",
                mode,
                "--timeout-ms",
                str(int(SERVER_TIMEOUT * 1000)),
            )
        for mode in modes:
            while not (
                (v := cli_json(env, "lb", "show", mode))["state"] == "running"
                and sum(m["state"].startswith("up") for m in v["member_status"]) == MEMBERS
            ):
                time.sleep(0.5)
        outside = f"cl-{cid}-out"
        use_eip = os.path.exists(f"/run/netns/{outside}")
        if use_eip:
            eip = cli_json(env, "eip", "allocate", "bench")
            address = eip.get("address") or eip.get("ip")
        rows = []
        for label, mode, slow in [("all healthy (latency)", "latency", False)] + [(m, m, True) for m in modes]:
            if use_eip:
                cli(env, "eip", "associate", "bench", "--lb", mode)
                target, netns = address, outside
            else:
                target, netns = cli_json(env, "lb", "show", mode)["ip"], f"cl-{cid}-hub"
            time.sleep(2.0)
            # toggled from a thread of the root netns (a thread started in the outside netns would stay there)
            toggler = threading.Thread(target=slow_window, args=(env, args.seconds)) if slow else None
            if toggler:
                toggler.start()
            results = in_netns(netns, lambda t=target: asyncio.run(open_loop(t, args.rate, args.seconds)))
            if toggler:
                toggler.join()
            ok = [d for good, d in results if good]
            every = [d if good else CLIENT_TIMEOUT for good, d in results]
            rows.append(
                (
                    label,
                    len(results),
                    100.0 * len(ok) / max(1, len(results)),
                    1000 * percentile(ok, 50) if ok else float("nan"),
                    1000 * percentile(every, 99),
                    sum(d >= SERVER_TIMEOUT for d in every),  # waited for a server timeout: sent to the slow member
                    os.getloadavg()[0],
                )
            )
            time.sleep(3.0)  # the slow member's penalty decays before the next run
        where = f"outside netns {outside} -> EIP {address}" if use_eip else "hub netns -> LB address (no outside netns)"
        print(
            f"\n{MEMBERS} members, m1 answers in {SLOW_SECONDS} s for the middle half of each {args.seconds:g} s run; "
            f"{args.rate:g} req/s open loop, client timeout {CLIENT_TIMEOUT:g} s; load from {where}"
        )
        print(f"{'mode':<24}{'requests':>10}{'success %':>12}{'p50 ms':>9}{'p99 ms':>9}{'>=400ms':>9}{'load':>6}")
        for label, n, success, p50, p99, slow_hits, load in rows:
            print(f"{label:<24}{n:>10}{success:>12.3f}{p50:>9.1f}{p99:>9.1f}{slow_hits:>9}{load:>6.1f}")
        base = rows[0][4]
        lat = rows[-1]
        print(
            f"goal: success >= 99.95 % and p99 <= 2 x {base:.1f} ms = {2 * base:.1f} ms; controller: "
            f"{'met' if lat[2] >= 99.95 and lat[4] <= 2 * base else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
