"""Running code inside a network namespace the project created (DNS servers listen inside the hub this way)."""

from __future__ import annotations

__all__ = ["run_in_netns", "NETNS_DIR"]

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def run_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Runs fn in a fresh thread switched into netns `name`; sockets it creates stay in that netns."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            with open(os.path.join(NETNS_DIR, name)) as f:
                if _libc().setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {name} failed")
            out["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread
            out["error"] = exc

    t = threading.Thread(target=target, name=f"netns-{name}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]
