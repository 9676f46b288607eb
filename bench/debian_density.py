"""Launch 50 instances of one Debian image: extra pool bytes each (goal ≤ 5 MiB), read from btrfs itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import real_cloud

N = 50


def pool_used(api: object) -> int:
    return int(api.get("/v1/storage/usage").json()["physical_bytes"])  # type: ignore[attr-defined]


def main() -> None:
    with real_cloud() as api:
        api.post("/v1/images", json={"name": "debian-12", "packages": []}).raise_for_status()
        while api.get("/v1/images/debian-12").json()["state"] not in ("ready", "failed"):
            time.sleep(1)
        image = api.get("/v1/images/debian-12").json()
        subprocess.run(["sync"], check=True)
        before = pool_used(api)
        for i in range(N):
            api.post(
                "/v1/instances", json={"name": f"d-{i}", "image": "debian-12", "memory_mib": 32}
            ).raise_for_status()
        while sum(i["state"] == "running" for i in api.get("/v1/instances").json()["items"]) < N:
            time.sleep(0.5)
        time.sleep(2)
        subprocess.run(["sync"], check=True)
        after = pool_used(api)
        disks = [v for v in api.get("/v1/storage/usage").json()["volumes"] if v["kind"] == "Instance"]
    per = (after - before) / N
    excl = sum(d["exclusive_bytes"] for d in disks) / len(disks)
    print(json.dumps({"image_mib": image["size_mib"]}))
    print("| 50 Debian 12 instances from one image | per instance |")
    print("|---|---|")
    print(f"| image size (logical) | {image['size_mib']} MiB |")
    print(f"| pool bytes used, growth / 50 | {per / 2**20:.2f} MiB |")
    print(f"| root disk exclusive bytes (btrfs qgroup) | {excl / 2**20:.2f} MiB |")


if __name__ == "__main__":
    main()
