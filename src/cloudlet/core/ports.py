"""Choosing listening ports: the one recorded last time (so agents and users find a restarted process where it
was), else the configured one, else (for defaults only) any free one; an explicitly chosen port that is taken is
an error that says how to choose another."""

from __future__ import annotations

__all__ = ["choose_port", "listening_socket"]

import socket

from cloudlet.core.errors import Conflict

IP_FREEBIND = 15  # linux/in.h; Python's socket module does not name it


def _free(port: int, udp: bool, host: str = "127.0.0.1") -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def choose_port(
    recorded: object,
    configured: int,
    what: str,
    env: str | None = None,
    explicit: frozenset[str] = frozenset(),
    udp: bool = False,
    host: str = "127.0.0.1",
) -> int:
    """A port to bind on host (127.0.0.1); 0 means "let the kernel pick". `recorded` is what an endpoint file says
    (may be missing); `env` is the variable that configures it, explicit when it is in `explicit`."""
    last = int(str(recorded or 0))
    if last and _free(last, udp, host):
        return last
    if configured == 0 or _free(configured, udp, host):
        return configured
    if env in explicit:
        raise Conflict(f"{what} port {configured} is taken; set {env} to another port (0 picks a free one)")
    return 0


def listening_socket(port: int, host: str = "127.0.0.1", freebind: bool = False) -> socket.socket:
    """A TCP socket bound on host for uvicorn (freebind: the address need not exist yet). Made with IPPROTO_TCP because asyncio sets TCP_NODELAY only
    then: without it a kept-alive connection waits ~40 ms per request for a delayed ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if freebind:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    sock.bind((host, port))
    return sock
