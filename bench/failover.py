"""Failover, for real, in one run: a web layer of three HA busybox instances behind an HAProxy LB holding an EIP,
and a "database" (an HA busybox instance with a replicated root disk whose CGI increments a counter file), over
four hosts in two zones (local and h2 in zone-a, h3 and h4 in zone-b), while two loops run:

- a request loop from the outside namespace to the LB's EIP (GET every 20 ms, 1 s timeout), and
- a writer in the LB's namespace (on host local) calling the database's /cgi-bin/inc every 50 ms: an answer is an
  acknowledged write; after the last failure the counter must still hold every acknowledged value but for those
  written after its newest replica (the writes lost).

Faults, one after another: kill -9 of a web instance's init; a network partition of a host holding a web
instance (its underlay cut: peers and control plane); a whole host killed (every process of its namespaces); the
database's host killed. For each: detection (fault -> the cloud noticed: an Exited event, or the host suspected),
serving again (fault -> the affected instance answers again, elsewhere if it moved), the success rate of the EIP
loop over the 30 s after the fault, and for the database the acknowledged writes lost.

    sudo .venv/bin/python bench/failover.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._cloud import real_cloud_env
from cloudlet.network.netns import run_in_netns
from cloudlet.resilience.fence import NetnsFence

WEB = "mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 80 -h /w"
DB = (
    "mkdir -p /w/cgi-bin && printf '#!/bin/sh\\nn=$(cat /n 2>/dev/null || echo 0)\\nn=$((n+1))\\n"
    'echo $n > /n.tmp && mv /n.tmp /n\\necho "Content-Type: text/plain"\\necho\\necho $n\\n'
    "' > /w/cgi-bin/inc && chmod +x /w/cgi-bin/inc && exec httpd -f -p 80 -h /w"
)
LOOP = """
import json, socket, sys, time
address, path, every = sys.argv[1], sys.argv[2], float(sys.argv[3])
while True:
    t = time.time()
    body = None
    try:
        s = socket.create_connection((address, 80), timeout=1)
        s.settimeout(1)
        s.sendall(f"GET {path} HTTP/1.0\\r\\n\\r\\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        status = data.split(b"\\r\\n", 1)[0].split()
        text = data.decode(errors="replace").strip().splitlines()
        body = text[-1].strip() if len(status) > 1 and status[1] == b"200" and text else None
    except OSError:
        pass
    print(json.dumps([t, body]), flush=True)
    time.sleep(max(0.0, every - (time.time() - t)))
"""
WINDOW = 30.0  # seconds after a fault over which the EIP loop's success rate is counted


def cli(env: dict[str, str], *args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "cloudlet.cli.main", *args, "-o", "json"], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"cloudlet {' '.join(args)}: {proc.stderr}{proc.stdout}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def loop(netns: str, address: str, path: str, every: float, out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as f:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", LOOP, address, path, str(every)],
            stdout=f,
            stderr=subprocess.DEVNULL,
        )


def lines(path: Path) -> list[tuple[float, str | None]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            t, body = json.loads(line)
            out.append((t, body))
        except ValueError:
            continue
    return out


def wait(what: str, check: Any, timeout: float = 120.0, show: Any = None) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return time.time()
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}" + (f": {show()}" if show else ""))


def answers(netns: str, ip: str) -> bool:
    def connect() -> bool:
        try:
            socket.create_connection((ip, 80), timeout=0.5).close()
            return True
        except OSError:
            return False

    return run_in_netns(netns, connect)


def main() -> None:
    with real_cloud_env() as (api, env):
        cid = (Path(env["CLOUDLET_HOME"]) / "cloud.id").read_text().strip()
        outside = f"cl-{cid}-out"
        for name, zone in (("h2", "zone-a"), ("h3", "zone-b"), ("h4", "zone-b")):
            cli(env, "host", "add", name, "--zone", zone)

        def inst(name: str) -> dict[str, Any]:
            data: dict[str, Any] = api.get(f"/v1/instances/{name}").json()
            return data

        def hosts() -> dict[str, str]:
            return {h["name"]: h["state"] for h in api.get("/v1/hosts").json()["items"]}

        def only(host: str, fn: Any) -> Any:
            others = [h for h in hosts() if h != host]
            for h in others:
                cli(env, "host", "cordon", h)
            try:
                return fn()
            finally:
                for h in others:
                    cli(env, "host", "uncordon", h)

        # the probes and the writer come from the LB's address, not a member of the db's group
        cli(env, "secgroup", "rule", "add", "default", "tcp", "80", "--cidr", "10.240.0.0/12")
        for name, host in (("web-1", "local"), ("web-2", "h3"), ("web-3", "h4")):
            only(host, lambda n=name: cli(env, "launch", "busybox", n, "--ha", "--memory", "32", "--command", WEB))
        only(
            "h2",
            lambda: cli(env, "launch", "busybox", "db", "--ha", "--replicas", "1", "--memory", "32", "--command", DB),
        )
        for name in ("web-1", "web-2", "web-3", "db"):
            wait(f"{name} running", lambda n=name: inst(n)["state"] == "running")
        only(
            "local",
            lambda: cli(env, "lb", "create", "web", "--members", "web-1,web-2,web-3", "--health-check", "http:/"),
        )
        # probes and the writer run in the LB's netns (on local, with its own address on the network): a hub's
        # gateway address is on every host (distributed), so a remote instance's answer to it stays on its host
        hub = f"cl-{cid}-i-{cli(env, 'lb', 'show', 'web')['id']}"
        eip = cli(env, "eip", "allocate", "web")
        address = eip.get("address") or eip.get("ip")
        cli(env, "eip", "associate", "web", "--lb", "web")
        wait("the db's first replica", lambda: (inst("db").get("replica") or {}).get("seq") is not None)
        tmp = Path(env["CLOUDLET_HOME"])
        web_log, db_log = tmp / "web.jsonl", tmp / "db.jsonl"
        loops = [
            loop(outside, address, "/", 0.02, web_log),
            loop(hub, inst("db")["ip"], "/cgi-bin/inc", 0.05, db_log),
        ]
        rows: list[dict[str, Any]] = []
        try:
            wait("the LB answering", lambda: any(b for _, b in lines(web_log)[-5:]))
            time.sleep(3)

            def measure(fault: str, victim: str, do: Any, noticed: Any) -> None:
                before = inst(victim)
                t0 = time.time()
                do(before)
                detected = wait(f"{fault} detected", lambda: noticed(before, t0))
                back = wait(
                    f"{victim} serving again",
                    lambda: (
                        (v := inst(victim))["state"] == "running"
                        and v.get("pid") != before.get("pid")
                        and answers(hub, v["ip"])
                    ),
                    show=lambda: {k: inst(victim).get(k) for k in ("host", "state", "pid", "ip", "message")},
                )
                print(f"{fault}: detected {detected - t0:.2f} s, serving again {back - t0:.2f} s", flush=True)
                events = api.get("/v1/events", params={"name": victim, "limit": 30}).json()["items"]
                steps = [f"{e['reason']}@{e['time'] - t0:+.2f}" for e in events if e["time"] >= t0 - 1]
                print("   " + " ".join(steps), flush=True)
                time.sleep(max(0.0, t0 + WINDOW - time.time()))
                window = [b for t, b in lines(web_log) if t0 <= t < t0 + WINDOW]
                rows.append(
                    {
                        "fault": fault,
                        "victim": f"{victim} on {before['host']} -> {inst(victim)['host']}",
                        "detect_s": round(detected - t0, 2),
                        "serving_again_s": round(back - t0, 2),
                        "eip_success": f"{sum(1 for b in window if b) / max(1, len(window)) * 100:.2f} % of {len(window)}",
                    }
                )

            def exited(before: dict[str, Any], t0: float) -> bool:
                events = api.get("/v1/events", params={"name": "web-2", "limit": 50}).json()["items"]
                return any(e["reason"] == "Exited" and e["name"] == "web-2" and e["time"] >= t0 for e in events)

            def suspected(host: str) -> Any:
                return lambda before, t0: hosts().get(host) != "up"

            measure("kill -9 init", "web-2", lambda b: os.kill(b["pid"], signal.SIGKILL), exited)
            measure("partition host", "web-3", lambda b: cli(env, "host", "partition", "h4"), suspected("h4"))
            measure("kill host", "web-2", lambda b: NetnsFence(cid).fence("h3"), suspected("h3"))
            wait("a fresh db replica", lambda: ((inst("db").get("replica") or {}).get("age_s") or 99) < 6)
            measure("kill the db's host", "db", lambda b: NetnsFence(cid).fence("h2"), suspected("h2"))
            time.sleep(2)
        finally:
            for p in loops:
                p.terminate()
        acked = [int(b) for _, b in lines(db_log) if b and b.isdigit()]
        now = int(api.post("/v1/instances/db/exec", json={"command": ["cat", "/n"], "timeout": 10}).json()["stdout"])
        # after the recovery the counter went on from the replica's value: the acknowledged values it skipped are
        # the writes lost (a value acknowledged twice means one was lost and written again)
        lost = len(acked) - len(set(acked))
        rows[-1]["db_writes_lost"] = f"{lost} of {len(acked)} acknowledged (counter now {now})"
        print(f"{'fault':22} {'victim':26} {'detect':>7} {'serving again':>14} {'EIP loop success':>24}  db")
        for r in rows:
            print(
                f"{r['fault']:22} {r['victim']:26} {r['detect_s']:>6}s {r['serving_again_s']:>13}s "
                f"{r['eip_success']:>24}  {r.get('db_writes_lost', '')}"
            )


if __name__ == "__main__":
    main()
