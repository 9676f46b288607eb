"""Replication RPO: two btrfs pools on loop files (a source host's and a replica host's), a writer appending
--rate MB/s to a file in the source volume for --seconds, and a replication cycle (read-only snapshot, `btrfs send
-p` piped into `btrfs receive`, as storage/replication.py does between agents) every --interval seconds. Per cycle:
bytes sent and the snapshot+send+receive time; the RPO (now minus the time of the newest snapshot the receiver
holds, sampled every 0.5 s from the first replica on): p50 and max. The writer runs one interval before the first
cycle (a steady writer, not one that starts with replication). Two schedules: `fixed` starts a cycle every
interval; `early` (what the agent does, replication.next_cycle_at) starts it early by a margin over the last
cycle's duration, so a replica lands before the one before turns one interval old. Goal: RPO <= 5 s at 10 MB/s.
With --cloud, the same through a real cloud instead: host local (zone-a) and an added host h2 (zone-b), a busybox
instance with `replicas: 1` appending ~10 MiB/s of random data to a file on its root disk, its agent shipping to
h2's agent over HTTP; each replica's taken_at and shipped_at are read from `GET /v1/instances/db` every 0.5 s, and
the RPO at each 0.1 s step is that time minus taken_at of the newest replica shipped by then.
Needs root, btrfs and mkfs.btrfs."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud_env

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
from cloudlet.storage import replication
from cloudlet.storage.pools.btrfs import BtrfsPool

VOLUME = "volumes/bench"


def writer(path: Path, rate_mb: float, stop: threading.Event, written: list[int]) -> None:
    """Appends 1 MiB blocks at rate_mb MiB/s; written[0] is the file's length so far."""
    block = os.urandom(1 << 20)
    start = time.monotonic()
    with open(path, "ab") as f:
        while not stop.is_set():
            f.write(block)
            f.flush()
            written[0] += len(block)
            ahead = start + written[0] / (rate_mb * (1 << 20)) - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)


def run(mode: str, interval: float, seconds: float, rate_mb: float, home: Path) -> dict[str, object]:
    src, dst = BtrfsPool(home / "src", 4 << 30), BtrfsPool(home / "dst", 4 << 30)
    for pool in (src, dst):
        pool.setup()
    try:
        data = src.create_volume(VOLUME) / "log"
        data.touch()
        stop, written = threading.Event(), [0]
        w = threading.Thread(target=writer, args=(data, rate_mb, stop, written), daemon=True)
        landed: list[float] = []  # taken_at of each snapshot the receiver holds, in order
        samples: list[float] = []

        def sample() -> None:
            while not stop.wait(0.5):
                if landed:
                    samples.append(time.time() - landed[-1])

        s = threading.Thread(target=sample, daemon=True)
        cycles: list[tuple[int, int, float, int]] = []  # seq, bytes, seconds, length the replica holds
        w.start()
        time.sleep(interval)
        s.start()
        end, seq, ship_s, d = time.time() + seconds, 0, 0.0, replication.replica_dir(VOLUME)
        next_at = time.time()
        while time.time() < end:
            time.sleep(max(0.0, next_at - time.time()))
            seq += 1
            taken, t0, size = time.time(), time.perf_counter(), written[0]
            src.snapshot(VOLUME, f"{d}/{seq}.partial")
            parent = replication.seqs(src, VOLUME)
            stream = src.send(f"{d}/{seq}.partial", f"{d}/{parent[-1]}" if parent else None)
            replication.receive(dst, VOLUME, seq, stream)
            src.seal(f"{d}/{seq}.partial", f"{d}/{seq}")
            replication.prune(src, VOLUME)
            ship_s = time.perf_counter() - t0
            landed.append(taken)
            held = (dst.path(f"{d}/{seq}") / "log").stat().st_size
            assert held >= size, f"replica {seq} holds {held} bytes, {size} were written before it was taken"
            cycles.append((seq, stream.sent, ship_s, held))
            next_at = replication.next_cycle_at(taken, interval, ship_s) if mode == "early" else taken + interval
        stop.set()
        w.join()
        s.join()
        return {"cycles": cycles, "samples": samples, "written": written[0]}
    finally:
        for pool in (src, dst):
            pool.teardown(purge=True)


# ~10 MiB/s: a 1 MiB block of random data, then 0.09 s of sleep (the dd takes the rest of the 0.1 s)
INSTANCE_WRITER = "while :; do dd if=/dev/urandom bs=1048576 count=1 2>/dev/null >> /log; usleep 90000; done"


def run_cloud(interval: float, seconds: float) -> None:
    with real_cloud_env() as (api, env):
        cli = [sys.executable, "-m", "cloudlet.cli.main"]
        subprocess.run([*cli, "host", "add", "h2", "--zone", "zone-b"], env=env, check=True, capture_output=True)
        body = {
            "name": "db",
            "image": "busybox",
            "memory_mib": 64,
            "zone": "zone-a",
            "disk_gib": 4,
            "replicas": 1,
            "replica_interval_s": interval,
            "command": ["sh", "-c", INSTANCE_WRITER],
        }
        api.post("/v1/instances", json=body).raise_for_status()
        seen: dict[int, tuple[float, float, int]] = {}  # seq -> taken_at, shipped_at, bytes
        start = time.time()
        while time.time() < start + interval + seconds:  # one interval to start and ship a first (full) replica
            rep = api.get("/v1/instances/db").json().get("replica") or {}
            if rep.get("seq") and rep["seq"] not in seen:
                seen[rep["seq"]] = (rep["taken_at"], rep["shipped_at"], 0)
            time.sleep(0.5)
        home = Path(env["CLOUDLET_HOME"])
        iid = api.get("/v1/instances/db").json()["id"]
        written = (home / "pool" / "disks" / iid / "log").stat().st_size
    cycles = sorted(seen.items())
    if len(cycles) < 3:
        raise SystemExit(f"only {len(cycles)} replicas shipped: {cycles}")
    print(
        f"\ncloud: interval {interval:g} s, instance wrote {written / (1 << 20):.0f} MiB in {interval + seconds:.0f} s"
    )
    print(f"{'seq':>5} {'taken→shipped s':>16}")
    for seq, (taken, shipped, _) in cycles:
        print(f"{seq:>5} {shipped - taken:>16.3f}")
    t, rpo = cycles[1][1][1], []  # from the second replica on: the first is the full send
    while t < cycles[-1][1][1]:
        newest = max(taken for _, (taken, shipped, _) in cycles if shipped <= t)
        rpo.append(t - newest)
        t += 0.1
    took = [shipped - taken for _, (taken, shipped, _) in cycles[1:]]
    print(f"\nRPO p50 {percentile(rpo, 50):.2f} s, max {max(rpo):.2f} s; cycle p50 {statistics.median(took):.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=10.0, help="MiB/s the writer appends")
    ap.add_argument("--mode", choices=("early", "fixed", "both"), default="both")
    ap.add_argument("--cloud", action="store_true", help="through a real cloud's agents (instance writer ~10 MiB/s)")
    args = ap.parse_args()
    if args.cloud:
        run_cloud(args.interval, args.seconds)
        return
    home = Path(tempfile.mkdtemp(prefix="cloudlet-bench-repl-"))
    summary = []
    try:
        for mode in ("early", "fixed") if args.mode == "both" else (args.mode,):
            r = run(mode, args.interval, args.seconds, args.rate, home / mode)
            print(f"\nschedule {mode}: interval {args.interval:g} s, writer {args.rate:g} MiB/s for {args.seconds:g} s")
            print(f"{'cycle':>5} {'sent MiB':>9} {'snap+send+recv s':>17}")
            for seq, sent, took, _ in r["cycles"]:  # type: ignore[attr-defined]
                print(f"{seq:>5} {sent / (1 << 20):>9.1f} {took:>17.3f}")
            samples: list[float] = r["samples"]  # type: ignore[assignment]
            took = [c[2] for c in r["cycles"][1:]]  # type: ignore[index]  # the first is a full send
            summary.append((mode, percentile(samples, 50), max(samples), statistics.median(took), max(took)))
        print(f"\n{'schedule':<9} {'RPO p50 s':>10} {'RPO max s':>10} {'cycle p50 s':>12} {'cycle max s':>12}")
        for mode, p50, mx, c50, cmax in summary:
            print(f"{mode:<9} {p50:>10.2f} {mx:>10.2f} {c50:>12.3f} {cmax:>12.3f}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
