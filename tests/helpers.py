"""In-process clouds on the fake drivers: the real store, control plane, agents and API, no kernel objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloudlet.core.clock import Clock
from cloudlet.resilience.sim import SimCloud


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
