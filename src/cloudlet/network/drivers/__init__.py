"""Network driver registry."""

from __future__ import annotations

from typing import Any

from cloudlet.core.drivers import load_driver
from cloudlet.network.drivers.base import NetworkDriver

__all__ = ["DRIVERS", "get_network_driver"]

DRIVERS = {
    "linux": "cloudlet.network.drivers.linux:LinuxNetworkDriver",
    "fake": "cloudlet.network.drivers.fake:FakeNetworkDriver",
}


def get_network_driver(name: str, **kwargs: Any) -> NetworkDriver:
    driver: NetworkDriver = load_driver(DRIVERS, name, "network driver", **kwargs)
    return driver
