"""Driver registries: names map to "module:Class", imported only when chosen (libcloud's lazy registry)."""

from __future__ import annotations

__all__ = ["load_driver"]

import importlib
from typing import Any

from cloudlet.core.errors import InvalidSpec


def load_driver(registry: dict[str, str], name: str, what: str, **kwargs: Any) -> Any:
    try:
        module, cls = registry[name].split(":")
    except KeyError:
        raise InvalidSpec(f"unknown {what} {name!r}; choose one of {', '.join(registry)}") from None
    return getattr(importlib.import_module(module), cls)(**kwargs)
