"""Unreachable routes on the host for what the project's namespaces hold: the public range and each tenant
network's subnet. Without them a packet the host sends to such an address when nothing of the cloud routes it
(an instance's private address, another cloud's slice) would follow the default route out of the machine's real
uplink. A prefix the host itself uses (a route of its own, its resolver) is never guarded: that would cut the host
off from it."""

from __future__ import annotations

__all__ = ["guard", "unguard", "GUARD_METRIC"]

import ipaddress
import json
import logging
import re
import subprocess
from pathlib import Path

log = logging.getLogger("cloudlet.network")
GUARD_METRIC = "4242"  # marks our unreachable routes; a real route of the same prefix (any other metric) wins


def _in_use(net: ipaddress.IPv4Network) -> str | None:
    """What of the host's own lies inside net, if anything."""
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = ""
    for address in re.findall(r"^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)", resolv, re.MULTILINE):
        if ipaddress.IPv4Address(address) in net:
            return f"the host's resolver {address}"
    out = subprocess.run(["ip", "-j", "-4", "route", "show"], capture_output=True, text=True).stdout
    for route in json.loads(out or "[]"):
        dst, dev = route.get("dst", ""), route.get("dev", "")
        if route.get("type") == "unreachable" or dst in ("", "default") or dev.startswith("cl"):
            continue  # ours (guards, and the links to clouds' outside namespaces)
        if ipaddress.ip_network(dst if "/" in dst else f"{dst}/32").overlaps(net):
            return f"the host's route to {dst}"
    return None


def guard(net: ipaddress.IPv4Network) -> None:
    if reason := _in_use(net):
        log.warning("not guarding %s on the host: it holds %s", net, reason)
        return
    subprocess.run(
        ["ip", "route", "replace", "unreachable", str(net), "metric", GUARD_METRIC], check=True, capture_output=True
    )


def unguard(net: ipaddress.IPv4Network) -> None:
    subprocess.run(["ip", "route", "del", "unreachable", str(net), "metric", GUARD_METRIC], capture_output=True)
