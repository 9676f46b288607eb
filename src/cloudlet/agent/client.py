"""How the control plane reaches a host's agent: over HTTP with the key the agent reported in its heartbeat,
or, for in-process (simulated) hosts, by calling the Agent object itself."""

from __future__ import annotations

__all__ = ["HostClient", "HttpHosts", "LocalHosts", "ReplicaClient"]

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cloudlet.agent.http import ApiClient
from cloudlet.compute.hosts import HOST_KIND
from cloudlet.compute.resource import HostStatus
from cloudlet.core.context import SYSTEM_TENANT
from cloudlet.core.errors import NotFound, Unreachable
from cloudlet.core.store import Store


class HostClient:
    def __init__(self, host: str, url: str, key: str) -> None:
        self.host = host
        self.url = url
        self.key = key
        self.api = ApiClient(url, key, f"agent of host {host}")

    def _call(self, method: str, path: str, timeout: float = 30, **kwargs: Any) -> Any:
        return self.api.call(method, path, timeout, **kwargs)

    def exec_instance(self, iid: str, argv: list[str], timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", f"/instances/{iid}/exec", timeout=timeout + 10, json={"command": argv, "timeout": timeout}
        )
        return result

    def console_log(self, iid: str, offset: int | None, limit: int) -> dict[str, Any]:
        params = {"limit": limit} if offset is None else {"offset": offset, "limit": limit}
        result: dict[str, Any] = self._call("GET", f"/instances/{iid}/console", params=params)
        return result

    def stats(self, iid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/instances/{iid}/stats", timeout=5)
        return result

    def chaos_instance(self, iid: str, fault: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/instances/{iid}/chaos", json=fault)
        return result

    def volume_usage(self, vid: str) -> dict[str, int]:
        result: dict[str, int] = self._call("GET", f"/volumes/{vid}/usage")
        return result

    def storage_report(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/storage/usage", timeout=120)
        return result

    def garbage(self, collect: bool) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("POST" if collect else "GET", "/storage/garbage", timeout=300)
        return result

    def repair(self, fix: bool) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST" if fix else "GET", "/repair", timeout=300)
        return result

    def import_image(self, digest: str, tarball: Path) -> None:
        with open(tarball, "rb") as f:
            self._call("PUT", f"/images/{digest}", timeout=3600, content=f)

    def promote_replica(self, volume: str, into: str) -> dict[str, Any]:
        """Recovery on a replica host: a writable clone `into` (disks/<id>, volumes/<id>) of the newest replica of
        the pool volume `volume` (as named on its source host); answers its name and seq."""
        result: dict[str, Any] = self._call("POST", f"/replicas/{volume}/promote", json={"into": into})
        return result

    def ship_replica(self, volume: str, host: str, endpoint: str, token: str) -> dict[str, Any]:
        """Ships one replica of `volume` from this host to `host` now (full, or against the newest seq both hold):
        answers seq, parent, bytes and ms."""
        body = {"host": host, "endpoint": endpoint, "token": token}
        result: dict[str, Any] = self._call("POST", f"/replicas/{volume}/ship", timeout=300, json=body)
        return result

    def promote_replica_over(self, volume: str, into: str) -> dict[str, Any]:
        """promote_replica, replacing an `into` no record of this host owns (left by a move cut short)."""
        result: dict[str, Any] = self._call("POST", f"/replicas/{volume}/promote-over", json={"into": into})
        return result


class ReplicaClient:
    """An agent shipping one pool volume's replicas to its replica host's agent, with the token the control plane
    made for that volume and host (it opens nothing else there)."""

    def __init__(self, host: str, url: str, token: str) -> None:
        self.api = ApiClient(url, token, f"agent of replica host {host}")

    def seqs(self, volume: str) -> list[int]:
        """The replicas the host holds, oldest first."""
        result: list[int] = self.api.call("GET", f"/replicas/{volume}", timeout=5)["seqs"]
        return result

    def put(self, volume: str, seq: int, stream: Iterable[bytes], parent: int | None) -> dict[str, Any]:
        params = {"seq": seq} if parent is None else {"seq": seq, "parent": parent}
        # each read or write may take 30 s (a slow disk), not the whole: a cycle that hangs must end, and say so
        result: dict[str, Any] = self.api.call("PUT", f"/replicas/{volume}", timeout=30, params=params, content=stream)
        return result

    def drop(self, volume: str) -> None:
        self.api.call("DELETE", f"/replicas/{volume}", timeout=10)


class HttpHosts:
    """Finds each host's agent from its Host record (endpoint and key come with its heartbeats)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._clients: dict[str, HostClient] = {}

    def agent(self, host: str) -> HostClient:
        try:
            res = self.store.get(HOST_KIND, SYSTEM_TENANT, host)
        except NotFound:
            raise NotFound(f"host {host} is not registered") from None
        status = HostStatus.of(res)
        url, key = status.endpoint, status.key
        if not url or not key:
            raise Unreachable(f"host {host} has not reported an agent endpoint yet")
        client = self._clients.get(host)
        if client is None or (client.url, client.key) != (url, key):
            client = self._clients[host] = HostClient(host, str(url), str(key))
        return client


class LocalHosts:
    """In-process agents by host name."""

    def __init__(self) -> None:
        self.agents: dict[str, Any] = {}

    def agent(self, host: str) -> Any:
        try:
            return self.agents[host]
        except KeyError:
            raise Unreachable(f"host {host} has no agent") from None
