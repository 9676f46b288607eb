"""Compute driver registry."""

from __future__ import annotations

from typing import Any

from cloudlet.compute.drivers.base import ComputeDriver
from cloudlet.core.drivers import load_driver

__all__ = ["DRIVERS", "get_driver"]

DRIVERS = {
    "runc": "cloudlet.compute.drivers.runc:RuncDriver",
    "fake": "cloudlet.compute.drivers.fake:FakeDriver",
}


def get_driver(name: str, **kwargs: Any) -> ComputeDriver:
    driver: ComputeDriver = load_driver(DRIVERS, name, "compute driver", **kwargs)
    return driver
