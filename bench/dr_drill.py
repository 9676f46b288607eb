"""A DR drill of the shop stack, for real: examples/shop.yaml (an HAProxy LB holding an EIP, two Debian web
instances, PostgreSQL with its root disk and volume replicated, `replicas: 1`) on host local and h2 (zone-a), then
`cloudlet dr drill shop --to-zone zone-b --failback` onto h3 (zone-b) and back, from replicas, then again from
offsite backups (a moto S3 server on this machine's underlay address: the database's volume from its newest
backup, root disks from images), while GET / runs every 50 ms through the EIP from the outside namespace. Prints
each leg's steps, RTO and RPO (the drill's own measure), and the longest run of failed GETs the client saw.

    sudo .venv/bin/python bench/dr_drill.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._cloud import real_cloud_env
from bench.failover import cli, lines, loop, shop_stack, wait
from tests.s3 import s3_server

RTO_GOAL = 60.0  # seconds, from replicas (issue 11)


def longest_outage(samples: list[tuple[float, str | None]], t0: float, t1: float) -> float:
    """The longest stretch between t0 and t1 from a failed GET to the next answered one."""
    worst, down = 0.0, None
    for t, body in samples:
        if not t0 <= t <= t1:
            continue
        if body is None and down is None:
            down = t
        elif body is not None and down is not None:
            worst, down = max(worst, t - down), None
    return max(worst, t1 - down) if down is not None else worst


def drill(env: dict[str, str], report: Path, log: Path, what: str, *args: str) -> None:
    """`dr drill shop --to-zone zone-b --failback`, its output and each leg's figures with the client's view."""
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "cloudlet.cli.main", "dr", "drill", "shop", "--to-zone", "zone-b", "--failback",
         "--report", str(report), *args],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    t1 = time.time()
    print(proc.stdout + proc.stderr)
    time.sleep(1)
    view = json.loads(report.read_text())
    samples = lines(log)
    for leg in view["legs"]:
        start = leg["started_at"]
        outage = longest_outage(samples, start, start + (leg["rto_s"] or 0.0) + 1.0)
        print(
            f"{what}: {leg['leg']} to {leg['to_zone']}: RTO {leg['rto_s']} s, RPO {leg['rpo_s']} s; "
            f"GET / through the EIP: longest outage {outage:.1f} s"
        )
        for step in leg["steps"]:  # what a long step waited for, each change of it
            for w in step.get("waits", []) if step["took_s"] is None or step["took_s"] > 5 else []:
                print(f"    {step['step']} at {w['at_s']:6.2f} s waiting: {w['for']}")
    answered = sum(b is not None for t, b in samples if t0 <= t <= t1)
    total = sum(1 for t, _ in samples if t0 <= t <= t1)
    goal = RTO_GOAL * (2 if args else 1)
    print(f"{what}: GETs answered during the whole drill: {answered}/{total}; {view['verdict']} (goal {goal:g} s)\n")


def apply(env: dict[str, str], path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "cloudlet.cli.main", "stack", "apply", str(path), "--wait", "--timeout", "1500"],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> None:
    with real_cloud_env() as (api, env):
        home = Path(env["CLOUDLET_HOME"])
        outside = f"cl-{(home / 'cloud.id').read_text().strip()}-out"
        for name, zone in (("h2", "zone-a"), ("h3", "zone-b")):
            cli(env, "host", "add", name, "--zone", zone)
        shop_stack(home / "shop.yaml", 2, 1)
        doc = (home / "shop.yaml").read_text()
        t = time.time()
        # the shop placed in zone-a (h3 still builds its copy of the images), without replicas: a replica host
        # chosen now would be h2 and kept; once h3 takes work, replicas: 1 ships them there (another zone first)
        cli(env, "host", "cordon", "h3")
        (home / "shop.yaml").write_text(doc.replace("replicas: 1", "replicas: 0"))
        apply(env, home / "shop.yaml")
        cli(env, "host", "uncordon", "h3")
        (home / "shop.yaml").write_text(doc)
        apply(env, home / "shop.yaml")
        print(f"shop stack applied in {time.time() - t:.1f} s (Debian images built by debootstrap on every host)")
        wait(
            "the db's replica on h3",
            lambda: (api.get("/v1/instances/db-1").json().get("replica") or {}).get("host") == "h3",
            300,
        )
        address = next(e["address"] for e in cli(env, "eip", "list") if e.get("address"))
        log = Path(tempfile.mkdtemp()) / "get.jsonl"
        probe = loop(outside, address, "GET", "/", 0.05, log)
        try:
            wait("the shop answering", lambda: any(b for _, b in lines(log)[-5:]))
            time.sleep(2)
            drill(env, home / "drill.json", log, "from replicas")
            # from offsite backups: a moto S3 on this machine's underlay address, which every host's agent reaches
            underlay = urlparse(json.loads((home / "endpoint.json").read_text())["underlay_url"]).hostname
            with s3_server(str(underlay)) as url:
                cli(env, "backup", "target", "add", "offsite", "--endpoint", url, "--bucket", "shop-dr",
                    "--access-key", "test", "--secret-key", "test")  # fmt: skip
                cli(env, "backup", "create", "db-1-data", "--name", "db-1-data-offsite")
                drill(env, home / "backups.json", log, "from backups", "--from-backups")
        finally:
            probe.terminate()
            probe.wait()


if __name__ == "__main__":
    main()
