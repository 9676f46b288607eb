"""What tests share beyond the fixtures: in-process clouds on the fake drivers (the real store, control plane, agents
and API, no kernel objects); for real clouds, waiting, what a host runs and holds, HA marks and socket probes."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudlet.compute.resource import INSTANCE, InstanceSpec
from cloudlet.core.clock import Clock
from cloudlet.core.store import Store
from cloudlet.resilience.sim import SimCloud

if TYPE_CHECKING:
    from tests.conftest import CloudCLI


def fake_cloud(home: Path, clock: Clock | None = None, db_url: str | None = None, **driver_args: Any) -> SimCloud:
    return SimCloud(home, clock=clock, db_url=db_url, **driver_args)


# A request loop, run with `python -c REQUEST_LOOP ADDRESS [SECONDS]` inside a namespace: one HTTP/1.0 GET of port
# 80 every 10 ms, a JSON line [time, body or null] each (test_eips and bench/eip_move.py time EIP moves with it).
REQUEST_LOOP = """
import json, socket, sys, time
address = sys.argv[1]
until = time.time() + float(sys.argv[2]) if len(sys.argv) > 2 else float("inf")
while time.time() < until:
    t = time.time()
    try:
        s = socket.create_connection((address, 80), timeout=0.2)
        s.settimeout(0.2)
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        body = data.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip()
    except OSError:
        body = None
    print(json.dumps([t, body]), flush=True)
    time.sleep(0.01)
"""


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until cond() holds; fails naming what after timeout."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def alive(pid: int) -> bool:
    """Neither gone nor a zombie (killed children of a killed shell wait for init to reap them)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def host_states(cli: CloudCLI) -> dict[str, str]:
    return {h["name"]: h["state"] for h in cli.json("host", "list")}


def host_home(cli: CloudCLI, host: str) -> Path:
    """Where a host keeps its pool and runc state: the cloud's home for local, its agent's folder for added ones."""
    return cli.home if host == "local" else cli.home / "agents" / host


def runc_running(cli: CloudCLI, host: str) -> dict[str, int]:
    """Container id -> init pid of what runc runs under a host's root (asked of runc: cloudletd may be down)."""
    root = host_home(cli, host) / "runc"
    argv = ["runc", "--root", str(root), "list", "--format", "json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    listing = json.loads(proc.stdout or "null") or []  # none: null
    return {c["id"]: c["pid"] for c in listing if c["status"] == "running"}


def mark_ha(cli: CloudCLI, name: str) -> str:
    """Makes instance name HA-managed, as a stack marks its layers' instances (written beside cloudletd: the agents'
    watch sees it in the change log); returns its id."""
    store = Store(f"sqlite:///{cli.home / 'state.db'}")
    try:
        res = next(r for r in store.list(INSTANCE) if r.name == name)
        rid: str = res.id
        store.update_spec(rid, InstanceSpec.of(res).model_copy(update={"ha": True}).dump())
        return rid
    finally:
        store.close()


def agent_sees_ha(cli: CloudCLI, host: str, name: str) -> bool:
    """Whether host's agent has name as HA-managed in its disk cache (saved within a second of a change)."""
    path = cli.home / "agents" / host / "cache.json"
    cache = json.loads(path.read_text()) if path.exists() else {"items": []}
    return any(i.get("name") == name and i.get("spec", {}).get("ha") for i in cache["items"])


@contextmanager
def extra_address(netns: str, address: str) -> Iterator[None]:
    """`address` also on eth0 of `netns` (root in an instance's namespace could do this, or forge it raw)."""
    subprocess.run(["ip", "-n", netns, "addr", "add", f"{address}/32", "dev", "eth0"], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "-n", netns, "addr", "del", f"{address}/32", "dev", "eth0"], check=False)


def closed_by_server(conn: socket.socket, within: float) -> bool:
    """Whether the other end closes conn (or resets it) within that many seconds."""
    conn.settimeout(within)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
