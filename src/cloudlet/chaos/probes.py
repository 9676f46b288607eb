"""cloudlet's chaos probes: what a steady-state hypothesis or a safeguard checks, through the API as the CLI does
(see actions.py for how they find the cloud). Outputs are plain JSON values for tolerances:

| probe | output | a tolerance |
|---|---|---|
| instance_state(name) | "running", "stopped", ... | "running" |
| running_count(name or selector) | instances running among the targets | [2, 3] |
| http_status(address, port, path) | {status, body, error, ms}: a GET sent from the project's outside namespace | 200 |
| http_load(address, seconds, port, path) | {requests, ok, errors, error_rate, p50_ms, max_ms}: GETs one after another | (a background load) |
| lb_member_states(lb) | {member: HAProxy's state} | {type: jsonpath, path: ...} |
| lb_up_count(lb) | members HAProxy reports up | [1, 10] |
| stack_healthy_count(stack, layer?) | instances of the stack (layer) running and healthy (or running, unchecked) | [2, 2] |

`http_status` never dials from the machine's own namespaces: the request leaves from the cloud's outside namespace
(`cl-<cloud>-out`, the project's stand-in for the internet), where EIPs and load balancer front ends
(198.18.0.0/15) are reachable, so a probe reaches exactly what a client of the cloud would. It needs root.
"""

from __future__ import annotations

__all__ = [
    "instance_state",
    "running_count",
    "http_status",
    "http_load",
    "lb_member_states",
    "lb_up_count",
    "stack_healthy_count",
]

import socket
import time
from typing import Any

from cloudlet.chaos.actions import Names, targets
from cloudlet.cli.client import connect

BODY_MAX = 4096


def instance_state(name: str) -> str:
    return str(connect().get(f"/v1/instances/{name}")["state"])


def running_count(name: Names = None, selector: dict[str, Any] | None = None) -> int:
    client = connect()
    return sum(client.get(f"/v1/instances/{n}")["state"] == "running" for n in targets(client, name, selector))


def _get(address: str, port: int, path: str, timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
            data = b""
            while len(data) < BODY_MAX and (chunk := s.recv(BODY_MAX)):
                data += chunk
    except OSError as exc:
        return {"status": None, "body": "", "error": str(exc), "ms": round((time.monotonic() - t0) * 1000, 1)}
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return {
        "status": status,
        "body": body.decode(errors="replace")[:BODY_MAX],
        "error": None if status else "no HTTP status line",
        "ms": round((time.monotonic() - t0) * 1000, 1),
    }


def _outside(path: str) -> str:
    """The cloud's outside namespace, where its public addresses are; checks the path that goes on the wire."""
    if not path.startswith("/") or any(c in path for c in "\r\n "):
        raise ValueError(f"path {path!r} must start with / and hold no spaces or line breaks")
    return f"cl-{connect().get('/v1/info')['cloud_id']}-out"


def http_status(address: str, port: int = 80, path: str = "/", timeout: float = 2.0) -> dict[str, Any]:
    """One HTTP/1.0 GET of http://ADDRESS:PORT/PATH from the cloud's outside namespace."""
    from cloudlet.network.netns import run_in_netns

    return run_in_netns(_outside(path), lambda: _get(address, int(port), path, float(timeout)))


def http_load(
    address: str, seconds: float = 10.0, port: int = 80, path: str = "/", timeout: float = 2.0
) -> dict[str, Any]:
    """GETs sent one after another for `seconds` from the outside namespace (the load an experiment runs under,
    as a background activity); a reply other than 2xx or 3xx, or none, is an error."""
    from cloudlet.network.netns import run_in_netns

    netns = _outside(path)
    if not 0 < seconds <= 3600:
        raise ValueError("http_load: seconds in (0, 3600]")

    def load() -> list[dict[str, Any]]:
        replies, until = [], time.monotonic() + seconds
        while time.monotonic() < until:
            replies.append(_get(address, int(port), path, float(timeout)))
        return replies

    replies = run_in_netns(netns, load)
    ok = [r for r in replies if r["status"] is not None and 200 <= r["status"] < 400]
    ms = sorted(r["ms"] for r in replies)
    return {
        "requests": len(replies),
        "ok": len(ok),
        "errors": len(replies) - len(ok),
        "error_rate": round((len(replies) - len(ok)) / max(1, len(replies)), 4),
        "p50_ms": ms[len(ms) // 2] if ms else None,
        "max_ms": ms[-1] if ms else None,
    }


def lb_member_states(lb: str) -> dict[str, str]:
    view = connect().get(f"/v1/loadbalancers/{lb}")
    return {m["name"]: m["state"] for m in view["member_status"]}


def lb_up_count(lb: str) -> int:
    return sum(state == "up" for state in lb_member_states(lb).values())


def stack_healthy_count(stack: str, layer: str | None = None) -> int:
    selector = f"cloudlet.io/stack={stack}" + (f",cloudlet.io/layer={layer}" if layer else "")
    items = connect().get("/v1/instances", {"selector": selector, "limit": 100_000})["items"]
    return sum(
        i["state"] == "running" and (not i.get("health_check") or (i.get("health") or {}).get("state") == "healthy")
        for i in items
    )
