"""Network driver registry: names map to "module:Class", imported only when chosen."""

from __future__ import annotations

__all__ = ["DRIVERS", "get_network_driver"]

import importlib
from typing import Any

from cloudlet.core.errors import InvalidSpec
from cloudlet.network.drivers.base import NetworkDriver

DRIVERS = {
    "linux": "cloudlet.network.drivers.linux:LinuxNetworkDriver",
    "fake": "cloudlet.network.drivers.fake:FakeNetworkDriver",
}


def get_network_driver(name: str, **kwargs: Any) -> NetworkDriver:
    try:
        module, cls = DRIVERS[name].split(":")
    except KeyError:
        raise InvalidSpec(f"unknown network driver {name!r}; choose one of {', '.join(DRIVERS)}") from None
    driver: NetworkDriver = getattr(importlib.import_module(module), cls)(**kwargs)
    return driver
