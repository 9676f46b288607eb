"""A throw-away real cloud for benchmarks: own home, ephemeral ports, purged at the end."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def real_cloud_env() -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """A real cloud, its API client and the environment a `cloudlet` command needs to reach it."""
    home = Path(tempfile.mkdtemp(prefix="cloudlet-bench-"))
    env = {**os.environ, "CLOUDLET_HOME": str(home), "CLOUDLET_API_PORT": "0", "CLOUDLET_DNS_PORT": "0"}
    cli = [sys.executable, "-m", "cloudlet.cli.main"]
    subprocess.run([*cli, "up"], env=env, check=True, capture_output=True)
    try:
        url = json.loads((home / "endpoint.json").read_text())["url"]
        token = (home / "admin.token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            yield client, env
    finally:
        subprocess.run([*cli, "down", "--purge"], env=env, capture_output=True)


@contextmanager
def real_cloud() -> Iterator[httpx.Client]:
    with real_cloud_env() as (client, _):
        yield client


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def spread(values: list[float], unit: str = "s", digits: int = 3) -> str:
    """`median unit (min–max)` of the values of repeated runs."""
    return f"{statistics.median(values):.{digits}f} {unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"
