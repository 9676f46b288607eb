"""How long a backup policy's verification takes (storage/verify.py): restore from a local S3-compatible server
(moto_server), boot a scratch instance, check it, delete it. A volume of random data read back in a busybox
instance, at several sizes, and a busybox instance with an http health check booted from its restored root disk.
Each row: the policy's own measure (`last_verify.seconds`, from the backups being queued to the result, so the
upload is in it), and the backup's upload time beside it."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from _cloud import real_cloud

from tests.s3 import s3_server


def wait(api: Any, path: str, name: str, done: Any, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = api.get(f"{path}/{name}").json()
        if done(view):
            return view
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {name}: {view}")
        time.sleep(0.1)


def verified(api: Any, policy: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The policy's result once it verified, and its backup's upload time."""
    api.post("/v1/backup-policies", json={"interval_seconds": 86400, "verify": True, **policy}).raise_for_status()
    view = wait(api, "/v1/backup-policies", policy["name"], lambda v: v["last_verify"] and not v["verifying"])
    backup = next(b for b in api.get("/v1/backups").json()["items"] if b["name"].startswith(policy["name"] + "-"))
    api.delete(f"/v1/backup-policies/{policy['name']}").raise_for_status()
    return view["last_verify"], float(backup["seconds"] or 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, nargs="+", default=[1, 64, 256])
    args = parser.parse_args()
    rows = []
    with s3_server() as url, real_cloud() as api:
        api.post(
            "/v1/backup-targets",
            json={"name": "s3", "endpoint": url, "bucket": "bench", "access_key": "k", "secret_key": "s"},
        ).raise_for_status()
        home = Path(str(api.get("/v1/info").json()["home"]))
        for mib in args.mib:
            name = f"v{mib}"
            api.post("/v1/volumes", json={"name": name, "size_gib": 1}).raise_for_status()
            vol = wait(api, "/v1/volumes", name, lambda v: v["state"] in ("ready", "failed"))
            data = home / "pool" / "volumes" / str(vol["id"]) / "data"
            subprocess.run(["dd", "if=/dev/urandom", f"of={data}", "bs=1M", f"count={mib}", "status=none"], check=True)
            result, upload = verified(api, {"name": f"p{mib}", "volumes": [name]})
            rows.append((f"volume, {mib} MiB random data, read back", result, upload))
        health = {"type": "http", "port": 80, "interval_s": 0.5, "timeout_s": 0.4}
        api.post("/v1/instances", json={"name": "web", "image": "busybox", "health": health}).raise_for_status()
        wait(api, "/v1/instances", "web", lambda v: v["state"] == "running")
        result, upload = verified(api, {"name": "pweb", "instances": ["web"]})
        rows.append(("busybox instance, http health check (rise 2, every 0.5 s)", result, upload))
    print("| verified backup | result | verification, s | of which upload, s |")
    print("|---|---|---|---|")
    for what, result, upload in rows:
        print(f"| {what} | {'ok' if result['ok'] else result['message']} | {result['seconds']:.1f} | {upload:.1f} |")


if __name__ == "__main__":
    main()
