"""Compute driver registry: names map to "module:Class", imported only when chosen."""

from __future__ import annotations

import importlib
from typing import Any

from cloudlet.compute.drivers.base import ComputeDriver
from cloudlet.core.errors import InvalidSpec

__all__ = ["DRIVERS", "get_driver"]

DRIVERS = {
    "runc": "cloudlet.compute.drivers.runc:RuncDriver",
    "fake": "cloudlet.compute.drivers.fake:FakeDriver",
}


def get_driver(name: str, **kwargs: Any) -> ComputeDriver:
    try:
        module, cls = DRIVERS[name].split(":")
    except KeyError:
        raise InvalidSpec(f"unknown compute driver {name!r}; choose one of {', '.join(DRIVERS)}") from None
    driver: ComputeDriver = getattr(importlib.import_module(module), cls)(**kwargs)
    return driver
