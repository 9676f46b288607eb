"""Snapshot and clone latency of a 1 GiB and a 10 GiB volume on the btrfs pool (goal: O(1), ≤ 50 ms, the same
for both sizes), beside a plain copy of the 1 GiB volume as the reference."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
from cloudlet.storage.pools.btrfs import BtrfsPool


def timed(fn: object, *args: object) -> float:
    t = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return (time.perf_counter() - t) * 1000


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="cloudlet-bench-"))
    pool = BtrfsPool(home, size_bytes=32 << 30)
    pool.setup()
    try:
        print("| btrfs pool | volume data | snapshot (median of 5) | clone (median of 5) |")
        print("|---|---|---|---|")
        for gib in (1, 10):
            vol = f"volumes/v{gib}"
            path = pool.create_volume(vol)
            subprocess.run(
                ["dd", "if=/dev/urandom", f"of={path}/data", "bs=4M", f"count={gib * 256}", "status=none"], check=True
            )
            subprocess.run(["sync"], check=True)
            snaps = [timed(pool.snapshot, vol, f"snapshots/s{gib}-{i}") for i in range(5)]
            clones = [timed(pool.snapshot, f"snapshots/s{gib}-0", f"volumes/c{gib}-{i}", False) for i in range(5)]
            print(f"| | {gib} GiB | {statistics.median(snaps):.1f} ms | {statistics.median(clones):.1f} ms |")
        t = time.perf_counter()
        shutil.copyfile(pool.path("volumes/v1") / "data", home / "copy-1g")
        print(f"| reference: plain copy of the 1 GiB file | 1 GiB | {(time.perf_counter() - t) * 1000:.0f} ms | |")
    finally:
        pool.teardown(purge=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
