"""In-process clouds on the fake drivers: the real store, control plane, agents and API, no kernel objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloudlet.core.clock import Clock
from cloudlet.resilience.sim import SimCloud


def fake_cloud(home: Path, clock: Clock | None = None, db_url: str | None = None, **driver_args: Any) -> SimCloud:
    return SimCloud(home, clock=clock, db_url=db_url, **driver_args)
