"""The network plumbing interface: networks (a bridge each) and ports (an instance's netns and its link).

Drivers: `linux` (kernel bridges, veths and namespaces through pyroute2, nftables) and `fake` (in memory, for
simulations). Artefacts are named from resource ids, so repair can match them to records.
"""

from __future__ import annotations

__all__ = ["PortSpec", "PublicPlan", "NetworkDriver", "short"]

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class PortSpec:
    instance_id: str
    network_id: str
    address: str
    prefixlen: int
    gateway: str


@dataclass(frozen=True)
class PublicPlan:
    """This host's public side: each elastic IP's (public, private) address pair, and the subnets of networks
    with egress NAT."""

    eips: tuple[tuple[str, str], ...] = ()
    egress_subnets: tuple[str, ...] = ()


class NetworkDriver(ABC):
    """Networks (bridges) and ports (an instance's netns and its link to the bridge)."""

    @abstractmethod
    def ensure_network(self, network_id: str, gateway: str, prefixlen: int) -> None: ...

    @abstractmethod
    def delete_network(self, network_id: str) -> None: ...

    @abstractmethod
    def list_networks(self) -> set[str]:
        """Short ids (bridge suffixes) of the networks that exist as artefacts."""

    @abstractmethod
    def ensure_port(self, port: PortSpec, pid: int | None = None) -> str:
        """Creates the instance's netns and link if missing; returns the netns path. With pid, the netns is that
        process's (made by the runtime inside the instance's user namespace) and a stale one is replaced."""

    @abstractmethod
    def delete_port(self, instance_id: str) -> None: ...

    @abstractmethod
    def port_exists(self, instance_id: str) -> bool: ...

    @abstractmethod
    def list_ports(self) -> set[str]:
        """Instance ids that have a netns."""

    def hub_netns(self) -> str | None:
        """The namespace holding this host's bridges, where the agent serves DNS; None if there is none."""
        return None

    def ensure_hub(self) -> None:
        """Creates the hub namespace if the driver has one (idempotent)."""

    def apply_ruleset(self, name: str, text: str, instance_id: str | None = None) -> None:
        """Loads an nft ruleset in one transaction (`nft -f`): in the hub namespace, or with instance_id in that
        instance's netns (skipped if it has none). The text deletes and recreates its own table, so a reload
        replaces it atomically; `name` identifies it (the fake records it under that name)."""
        raise NotImplementedError("apply_ruleset not implemented for this driver")

    def port_mac(self, instance_id: str) -> str | None:
        """The MAC address of the instance's interface, None if it has no port (or the driver none to tell)."""
        return None

    def set_public(self, plan: PublicPlan) -> None:
        """Points the elastic IPs and egress NAT at the plan, all at once (drivers without a public side: no-op)."""

    def teardown(self) -> None:
        """Removes everything the driver ever created for this cloud."""


def short(rid: str) -> str:
    return rid[-10:]
