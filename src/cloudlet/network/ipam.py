"""Address management inside the tenant space 10.240.0.0/12: subnets for networks, hosts for instances."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from cloudlet.core.config import TENANT_SPACE
from cloudlet.core.errors import Conflict, InvalidSpec

__all__ = ["parse_subnet", "pick_subnet", "gateway_of", "host_addresses"]

SPACE = ipaddress.IPv4Network(TENANT_SPACE)


def parse_subnet(cidr: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise InvalidSpec(f"subnet {cidr!r} is not a valid CIDR network (e.g. 10.240.5.0/24): {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(SPACE):
        raise InvalidSpec(f"subnet {cidr} must lie inside the tenant space {TENANT_SPACE}")
    if net.prefixlen > 29 or net.prefixlen < 16:
        raise InvalidSpec(f"subnet {cidr} must have a prefix between /16 and /29")
    return net


def check_free(net: ipaddress.IPv4Network, taken: Iterable[str]) -> None:
    for other in taken:
        if net.overlaps(ipaddress.ip_network(other)):
            raise Conflict(f"subnet {net} overlaps {other}, already used by another network; pick a free range")


def pick_subnet(taken: Iterable[str], prefix: int = 24) -> ipaddress.IPv4Network:
    used = [ipaddress.IPv4Network(t) for t in taken]
    for cand in SPACE.subnets(new_prefix=prefix):
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise Conflict(f"the tenant space {TENANT_SPACE} has no free /{prefix} left; delete unused networks")


def gateway_of(net: ipaddress.IPv4Network) -> str:
    return str(net.network_address + 1)


def host_addresses(cidr: str) -> Iterator[str]:
    """Candidate instance addresses: everything but network, gateway and broadcast."""
    net = ipaddress.ip_network(cidr)
    gw = net.network_address + 1
    for addr in net.hosts():
        if addr != gw:
            yield str(addr)
