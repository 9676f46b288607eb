"""GET /v1/instances with 10,000 instance records (fake driver, SQLite), through the real API app."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parents[1]))
from cloudlet.api.app import create_app
from cloudlet.core.records import Resource
from tests.helpers import fake_cloud


def main(n: int = 10_000) -> None:
    sim = fake_cloud(Path(tempfile.mkdtemp(prefix="cloudlet-bench-")))
    cloud, token = sim.cloud, sim.token
    spec = {
        "image": "busybox",
        "image_id": "x",
        "network": "default",
        "network_id": "x",
        "cpus": 1.0,
        "memory_mib": 64,
        "restart": "always",
        "command": None,
        "zone": None,
        "state": "running",
        "run_nonce": 1,
    }
    from cloudlet.core.tables import resources

    rows = []
    for i in range(n):
        r = Resource(
            kind="Instance",
            tenant="admin",
            name=f"vm-{i}",
            spec=spec,
            host="local",
            zone="zone-a",
            status={"state": "running", "ip": f"10.{240 + i // 65536}.{i // 256 % 256}.{i % 256}"},
        )
        rows.append(r.__dict__)
    with cloud.store.engine.begin() as conn:
        conn.execute(resources.insert(), rows)
    client = TestClient(create_app(cloud))
    headers = {"Authorization": f"Bearer {token}"}
    print("| GET /v1/instances, 10,000 records (fake driver, SQLite) | items returned | median | best |")
    print("|---|---|---|---|")
    t = time.perf_counter()
    assert client.get("/v1/instances?limit=10000", headers=headers).json()["count"] == n
    cold = (time.perf_counter() - t) * 1000
    print(f"| everything, first request (cold render cache) | {n} | {cold:.0f} ms | - |")
    for label, query, want in (
        ("default page (limit 1000)", "", 1000),
        ("everything (limit 10000)", "?limit=10000", n),
    ):
        times = []
        for _ in range(7):
            t = time.perf_counter()
            r = client.get("/v1/instances" + query, headers=headers)
            times.append(time.perf_counter() - t)
            assert r.json()["count"] == want
        print(f"| {label} | {want} | {statistics.median(times) * 1000:.0f} ms | {min(times) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
