"""The metadata service and boot-time user-data on a real cloud: request latency at 169.254.169.254 from inside an
instance's network namespace (a new connection per request, and keep-alive), and what --user-data adds to
create→running (the runner's mount; the runner's sh itself runs after `running`).

Each request goes instance netns → its gateway (nft redirect in the hub) → the agent's server, which identifies
the instance and builds the document from its cache. Traffic stays inside the cloud's own namespaces.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud_env

from cloudlet.network.netns import run_in_netns

PATH = "/latest/meta-data/instance-id"
SCRIPT = "#!/bin/sh\ntouch /tmp/user-data-done\n"


def wait_running(api: httpx.Client, name: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = api.get(f"/v1/instances/{name}").json()
        if view["state"] == "running":
            return dict(view)
        time.sleep(0.05)
    raise RuntimeError(f"{name} never ran")


def request(conn: socket.socket, keep: bool) -> bytes:
    close = "" if keep else "Connection: close\r\n"
    conn.sendall(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n{close}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 26:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def latencies(netns: str, ip: str, n: int, keep: bool) -> list[float]:
    def connect() -> socket.socket:
        return socket.create_connection(("169.254.169.254", 80), timeout=5, source_address=(ip, 0))

    out = []
    conn = run_in_netns(netns, connect) if keep else None
    for _ in range(n):
        started = time.perf_counter()
        if keep:
            assert conn is not None
            reply = request(conn, True)
        else:
            with run_in_netns(netns, connect) as c:
                reply = request(c, False)
        if not reply.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"metadata answered {reply[:80]!r}")
        out.append(time.perf_counter() - started)
    if conn is not None:
        conn.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--instances", type=int, default=10, help="launched with and without user-data each")
    args = ap.parse_args()
    with real_cloud_env() as (api, env):
        cloud_id = (Path(env["CLOUDLET_HOME"]) / "cloud.id").read_text().strip()
        api.post("/v1/instances", json={"name": "md", "image": "busybox", "memory_mib": 32}).raise_for_status()
        view = wait_running(api, "md")
        netns = f"cl-{cloud_id}-i-{view['id']}"
        print("| metadata GET instance-id from an instance | n | p50 | p99 |")
        print("|---|---|---|---|")
        for label, keep in (("new connection each", False), ("keep-alive", True)):
            vals = latencies(netns, str(view["ip"]), args.requests, keep)
            print(
                f"| {label} | {len(vals)} | {percentile(vals, 50) * 1000:.2f} ms | {percentile(vals, 99) * 1000:.2f} ms |"
            )
        rows: dict[str, list[float]] = {"without user-data": [], "with user-data": []}
        for i in range(args.instances):
            for label, vals in rows.items():
                body: dict[str, object] = {
                    "name": f"{'u' if label == 'with user-data' else 'n'}-{i}",
                    "image": "busybox",
                    "memory_mib": 32,
                }
                if label == "with user-data":
                    body["user_data"] = SCRIPT
                api.post("/v1/instances", json=body).raise_for_status()
                v = wait_running(api, str(body["name"]))
                vals.append(float(str(v["started_at"])) - float(str(v["created_at"])))
        print()
        print("| create→running (busybox) | n | p50 | p99 |")
        print("|---|---|---|---|")
        for label, vals in rows.items():
            print(f"| {label} | {len(vals)} | {percentile(vals, 50):.3f} s | {percentile(vals, 99):.3f} s |")


if __name__ == "__main__":
    main()
