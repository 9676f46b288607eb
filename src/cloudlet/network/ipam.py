"""Address management inside the tenant space 10.240.0.0/12: subnets for networks, hosts for instances."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from cloudlet.core.config import TENANT_SPACE
from cloudlet.core.errors import Conflict, Forbidden, InvalidSpec

__all__ = [
    "SPACE",
    "TENANT_MIN_PREFIX",
    "ADMIN_MIN_PREFIX",
    "MAX_PREFIX",
    "MAX_TENANT_NETWORKS",
    "parse_subnet",
    "pick_subnet",
    "gateway_of",
    "host_addresses",
]

SPACE = ipaddress.IPv4Network(TENANT_SPACE)
# A tenant's network is at most a /20 (4,096 addresses), the admin's a /16. SPACE, a /12, holds 256 /20s: a tenant
# at its default networks quota (5, network/networks.py) holds at most 5 x 4,096 = 20,480 addresses, 2% of the
# space, and the largest networks quota the admin may give (MAX_TENANT_NETWORKS, 128 /20s) is half of it: one
# tenant can never exhaust the space the others launch in.
TENANT_MIN_PREFIX = 20
ADMIN_MIN_PREFIX = 16
MAX_PREFIX = 29
MAX_TENANT_NETWORKS = SPACE.num_addresses // 2 // (1 << (32 - TENANT_MIN_PREFIX))


def parse_subnet(cidr: str, min_prefix: int = TENANT_MIN_PREFIX) -> ipaddress.IPv4Network:
    """`min_prefix`: the largest network the caller may make (ADMIN_MIN_PREFIX for the admin)."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise InvalidSpec(f"subnet {cidr!r} is not a valid CIDR network (e.g. 10.240.5.0/24): {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(SPACE):
        raise InvalidSpec(f"subnet {cidr} must lie inside the tenant space {TENANT_SPACE}")
    if net.prefixlen > MAX_PREFIX or net.prefixlen < ADMIN_MIN_PREFIX:
        raise InvalidSpec(f"subnet {cidr} must have a prefix between /{ADMIN_MIN_PREFIX} and /{MAX_PREFIX}")
    if net.prefixlen < min_prefix:  # the schema allows it: it is a limit on who asks, not a malformed value
        raise Forbidden(f"subnet {cidr}: tenants' networks have a prefix from /{min_prefix}; ask the admin for more")
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
