"""In-process clouds on the fake drivers: the real store, reconcilers and API, no kernel objects."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cloudlet.core.clock import Clock
from cloudlet.core.config import load_config
from cloudlet.core.context import Cloud
from cloudlet.daemon import bootstrap, build_cloud


def fake_cloud(home: Path, clock: Clock | None = None, db_url: str | None = None, **driver_args: object
               ) -> tuple[Cloud, str]:
    cfg = dataclasses.replace(load_config(), home=home, compute_driver="fake",
                              db_url=db_url or f"sqlite:///{home / 'state.db'}")
    cloud = build_cloud(cfg, clock=clock, **driver_args)
    token = bootstrap(cloud)
    return cloud, token
