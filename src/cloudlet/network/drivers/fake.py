"""In-memory network plumbing for simulations: the same contract, no kernel objects."""

from __future__ import annotations

__all__ = ["FakeNetworkDriver"]

from cloudlet.network.drivers.base import NetworkDriver, PortSpec, PublicPlan, short


class FakeNetworkDriver(NetworkDriver):
    """In-memory plumbing for simulations: same contract, no kernel objects."""

    def __init__(self) -> None:
        self.networks: set[str] = set()
        self.ports: dict[str, PortSpec] = {}
        self.public = PublicPlan()
        self.rulesets: dict[tuple[str, str | None], str] = {}  # (name, instance id or None for the hub) -> text

    def ensure_network(self, network_id: str, gateway: str, prefixlen: int) -> None:
        self.networks.add(short(network_id))

    def delete_network(self, network_id: str) -> None:
        self.networks.discard(short(network_id))

    def list_networks(self) -> set[str]:
        return set(self.networks)

    def ensure_port(self, port: PortSpec, pid: int | None = None) -> str:
        self.ports[port.instance_id] = port
        return f"fake://{port.instance_id}"

    def delete_port(self, instance_id: str) -> None:
        self.ports.pop(instance_id, None)

    def port_exists(self, instance_id: str) -> bool:
        return instance_id in self.ports

    def list_ports(self) -> set[str]:
        return set(self.ports)

    def port_mac(self, instance_id: str) -> str | None:
        if instance_id not in self.ports:
            return None
        return "02:" + ":".join(f"{b:02x}" for b in instance_id[-5:].encode())

    def apply_ruleset(self, name: str, text: str, instance_id: str | None = None) -> None:
        if instance_id is None or instance_id in self.ports:
            self.rulesets[(name, instance_id)] = text

    def set_public(self, plan: PublicPlan) -> None:
        self.public = plan

    def teardown(self) -> None:
        self.public = PublicPlan()
        self.networks.clear()
        self.ports.clear()
        self.rulesets.clear()
