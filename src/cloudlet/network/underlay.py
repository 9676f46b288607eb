"""The underlay: the wire between a cloud's hosts when they share one machine.

`cl-<cloud>-ul` holds one bridge, `ul`; the root namespace (cloudletd and host `local`) joins it by a veth
`cl<cloud>ul` at 198.19.N.129, and each added host's namespace `cl-<cloud>-h-<H>` by a veth `ul0` at
198.19.N.(130 + index). N is the index of the cloud's public slice (network/outside.py), so two clouds' underlays
never share an address; 198.19.N.128/25 is free in every slice (its transit links use .0/29). Tenant networks
cross it as VXLAN (one VNI per network, flooded by a multicast group of the cloud's, learned per MAC), agents reach
cloudletd on it and cloudletd their agents. Nothing on it routes anywhere else.

A partition is an nft rule in the underlay's bridge table dropping every frame to or from one host's port: the host
loses its peers and the control plane at once, as a cut cable would do.
"""

from __future__ import annotations

__all__ = ["Underlay", "host_netns"]

import ipaddress
import json
import os
import subprocess
from pathlib import Path

from cloudlet.core.errors import Conflict, NotFound, translate_errors
from cloudlet.network.netns import NETNS_DIR
from cloudlet.network.outside import pool_slice

INDEX_FILE = "underlay.json"  # host name → index, kept by the machine that provisions hosts
MAX_HOSTS = 120  # .130 to .249 of the /25
PARTITION_TABLE = "cl_partition"


def host_netns(cloud_id: str, host: str) -> str:
    """The namespace that stands for an added host's machine; its hub and ports are named `<this>.<what>`."""
    return f"cl-{cloud_id}-h-{host}"


def _run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, input=stdin)


def _exists(ns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, ns))


class Underlay:
    def __init__(self, cloud_id: str, home: Path) -> None:
        self.cloud_id = cloud_id
        self.home = home
        self.netns = f"cl-{cloud_id}-ul"
        self.root_link = f"cl{cloud_id}ul"
        self.index = pool_slice(home, cloud_id).index
        self.network = ipaddress.IPv4Network(f"198.19.{self.index}.128/25")

    @property
    def control_address(self) -> str:
        """Where the root namespace (cloudletd, host `local`) is on the underlay."""
        return str(self.network.network_address + 1)

    def address(self, slot: int) -> str:
        return str(self.network.network_address + 2 + slot)

    @property
    def vxlan_group(self) -> str:
        return f"239.192.{self.index}.1"

    @property
    def vxlan_port(self) -> int:
        return 20000 + self.index  # per cloud: two clouds' VXLANs in the root namespace never share a socket

    # host slots, kept in a file beside the cloud's state
    def hosts(self) -> dict[str, int]:
        """Each host holding a slot on the underlay -> its slot."""
        try:
            data: dict[str, int] = json.loads((self.home / INDEX_FILE).read_text())
            return data
        except (OSError, ValueError):
            return {}

    def _save(self, slots: dict[str, int]) -> None:
        tmp = self.home / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(slots))
        os.replace(tmp, self.home / INDEX_FILE)

    def slot(self, host: str, assign: bool = False) -> int | None:
        slots = self.hosts()
        if host not in slots and assign:
            free = sorted(set(range(MAX_HOSTS)) - set(slots.values()))
            if not free:
                raise Conflict(f"this machine holds {MAX_HOSTS} hosts already; remove one first")
            slots[host] = free[0]
            self._save(slots)
        return slots.get(host)

    def release(self, host: str) -> None:
        slots = self.hosts()
        if slots.pop(host, None) is not None:
            self._save(slots)

    # the wire
    def _root_guard(self) -> str:
        """The root namespace's table: its underlay address answers only on the underlay link and loopback (the
        weak host model would otherwise take it from the machine's uplink too), and the cloud's VXLAN port only takes
        what comes from the underlay itself: a local user's datagram to it would land frames on tenant networks."""
        return f"""
table inet cl_{self.cloud_id}_ul
delete table inet cl_{self.cloud_id}_ul
table inet cl_{self.cloud_id}_ul {{
    chain input {{
        type filter hook input priority -10; policy accept;
        iifname != {{ "{self.root_link}", "lo" }} ip daddr {self.network} drop
        udp dport {self.vxlan_port} iifname != "{self.root_link}" drop
        udp dport {self.vxlan_port} ip saddr != {self.network} drop
    }}
}}
"""

    def ensure(self) -> None:
        _run("nft", "-f", "-", stdin=self._root_guard())
        if _exists(self.netns) and os.path.exists(f"/sys/class/net/{self.root_link}"):
            return
        with translate_errors(f"creating the underlay {self.netns}"):
            if not _exists(self.netns):
                _run("ip", "netns", "add", self.netns)
                _run("ip", "-n", self.netns, "link", "add", "ul", "type", "bridge", "mcast_snooping", "0")
                _run("ip", "-n", self.netns, "link", "set", "ul", "up")
            if not os.path.exists(f"/sys/class/net/{self.root_link}"):
                _run("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "root", "netns", self.netns)
                _run("ip", "addr", "add", f"{self.control_address}/{self.network.prefixlen}", "dev", self.root_link)
                _run("ip", "link", "set", self.root_link, "up")
                _run("ip", "-n", self.netns, "link", "set", "root", "master", "ul", "up")

    def attach(self, host: str) -> str:
        """Makes host's namespace and its link to the underlay (idempotent); returns the namespace."""
        self.ensure()
        slot = self.slot(host, assign=True)
        assert slot is not None
        ns, port = host_netns(self.cloud_id, host), f"h{slot}"
        with translate_errors(f"joining host {host} to the underlay"):
            if not _exists(ns):
                _run("ip", "netns", "add", ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            if subprocess.run(["ip", "-n", ns, "link", "show", "ul0"], capture_output=True).returncode != 0:
                subprocess.run(["ip", "-n", self.netns, "link", "del", port], capture_output=True)
                _run("ip", "-n", self.netns, "link", "add", port, "type", "veth", "peer", "name", "ul0", "netns", ns)
                _run("ip", "-n", ns, "addr", "add", f"{self.address(slot)}/{self.network.prefixlen}", "dev", "ul0")
                _run("ip", "-n", ns, "link", "set", "ul0", "up")
                _run("ip", "-n", self.netns, "link", "set", port, "master", "ul", "up")
        return ns

    def detach(self, host: str, keep_slot: bool = False) -> None:
        """Removes host's namespace and link (whatever else lived in the namespace goes with it); keep_slot: the
        host comes back at the same address (`cloudlet down` then `up`)."""
        slot = self.slot(host)
        ns = host_netns(self.cloud_id, host)
        with translate_errors(f"removing host {host} from the underlay"):
            if slot is not None and _exists(self.netns):
                subprocess.run(["ip", "-n", self.netns, "link", "del", f"h{slot}"], capture_output=True)
            if _exists(ns):
                _run("ip", "netns", "del", ns)
        if slot is not None:
            self.partition(host, False)
        if not keep_slot:
            self.release(host)

    def partition(self, host: str, cut: bool) -> None:
        """Cuts (or restores) every frame to and from host's port on the underlay."""
        if not _exists(self.netns):
            return
        slot = self.slot(host)
        if slot is None:
            raise NotFound(f"host {host} is not on this machine's underlay (see 'cloudlet host list')")
        cuts = set(self._partitioned())
        (cuts.add if cut else cuts.discard)(f"h{slot}")
        ports = ", ".join(f'"{p}"' for p in sorted(cuts))
        rules = f"iifname {{ {ports} }} drop\n        oifname {{ {ports} }} drop" if cuts else ""
        text = f"""
table bridge {PARTITION_TABLE}
delete table bridge {PARTITION_TABLE}
table bridge {PARTITION_TABLE} {{
    chain forward {{
        type filter hook forward priority -200; policy accept;
        {rules}
    }}
}}
"""
        with translate_errors(f"{'partitioning' if cut else 'reconnecting'} host {host}"):
            _run("ip", "netns", "exec", self.netns, "nft", "-f", "-", stdin=text)

    def _partitioned(self) -> list[str]:
        out = subprocess.run(
            ["ip", "netns", "exec", self.netns, "nft", "-j", "list", "table", "bridge", PARTITION_TABLE],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            return []
        ports: list[str] = []
        for item in json.loads(out.stdout).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                right = expr.get("match", {}).get("right")
                if isinstance(right, dict) and "set" in right:
                    ports = [p for p in right["set"] if isinstance(p, str)]
        return ports

    def teardown(self, keep_slots: bool = False) -> None:
        with translate_errors(f"removing the underlay {self.netns}"):
            for host in list(self.hosts()):
                self.detach(host, keep_slot=keep_slots)
            if os.path.exists(f"/sys/class/net/{self.root_link}"):
                _run("ip", "link", "del", self.root_link)
            if _exists(self.netns):
                _run("ip", "netns", "del", self.netns)
            subprocess.run(["nft", "delete", "table", "inet", f"cl_{self.cloud_id}_ul"], capture_output=True)
