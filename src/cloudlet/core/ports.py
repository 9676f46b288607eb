"""Choosing listening ports: the one recorded last time (so agents and users find a restarted process where it
was), else the configured one, else (for defaults only) any free one; an explicitly chosen port that is taken is
an error that says how to choose another."""

from __future__ import annotations

__all__ = ["choose_port"]

import socket

from cloudlet.core.errors import Conflict


def _free(port: int, udp: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def choose_port(recorded: int | None, configured: int, explicit: bool, what: str, env: str, udp: bool = False) -> int:
    """A port to bind on 127.0.0.1; 0 means "let the kernel pick"."""
    if recorded and _free(recorded, udp):
        return recorded
    if configured == 0 or _free(configured, udp):
        return configured
    if explicit:
        raise Conflict(f"{what} port {configured} is taken; set {env} to another port (0 picks a free one)")
    return 0
