"""Backup and restore throughput of a 1 GiB volume to a local S3-compatible server (moto_server), beside
`tar | zstd` of the same data to a local file in the same run as the reference. Data: random (incompressible)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from _cloud import real_cloud

from tests.s3 import s3_server

MIB = 1024


def wait(api: object, path: str, name: str) -> dict[str, object]:
    while True:
        view: dict[str, object] = api.get(f"{path}/{name}").json()  # type: ignore[attr-defined]
        if view["state"] in ("ready", "failed"):
            return view
        time.sleep(0.1)


def main() -> None:
    with s3_server() as url, real_cloud() as api:
        api.post(
            "/v1/backup-targets",
            json={"name": "s3", "endpoint": url, "bucket": "bench", "access_key": "k", "secret_key": "s"},
        ).raise_for_status()
        api.post("/v1/volumes", json={"name": "gig", "size_gib": 2}).raise_for_status()
        vol = wait(api, "/v1/volumes", "gig")
        path = Path(str(api.get("/v1/info").json()["home"])) / "pool" / "volumes" / str(vol["id"])
        subprocess.run(
            ["dd", "if=/dev/urandom", f"of={path}/data", "bs=4M", f"count={MIB // 4}", "status=none"], check=True
        )
        subprocess.run(["sync"], check=True)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            subprocess.run(f"tar -C {path} -cf - . | zstd -q -3 -T0 -c > {tmp}/ref.tar.zst", shell=True, check=True)
            ref = time.perf_counter() - t
        t = time.perf_counter()
        api.post("/v1/backups", json={"source": "gig", "name": "gig-1"}).raise_for_status()
        backup = wait(api, "/v1/backups", "gig-1")
        total_backup = time.perf_counter() - t
        t = time.perf_counter()
        api.post("/v1/backups/gig-1/restore", json={"name": "gig-back"}).raise_for_status()
        restored = wait(api, "/v1/volumes", "gig-back")
        restore = time.perf_counter() - t
    assert backup["state"] == "ready" and restored["state"] == "ready"
    print("| 1 GiB volume, random data | seconds | MB/s |")
    print("|---|---|---|")
    print(f"| reference: tar \\| zstd -3 to a local file | {ref:.1f} | {MIB * 1.048576 / ref:.0f} |")
    print(
        f"| backup to local S3 (snapshot + upload, end to end) | {total_backup:.1f} | "
        f"{MIB * 1.048576 / total_backup:.0f} |"
    )
    print(f"| restore from local S3 (download, verify, unpack) | {restore:.1f} | {MIB * 1.048576 / restore:.0f} |")


if __name__ == "__main__":
    main()
