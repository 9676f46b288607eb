"""Linux network plumbing: kernel bridges, veths and namespaces (pyroute2) and nftables.

The Linux driver keeps every cloudlet interface inside one "hub" network namespace per cloud
(`cl-<cloud>-hub`): one bridge per network holding the gateway address, no uplink, and an nft table that drops
forwarded packets (but those to and from the outside namespace, network/outside.py) and packets for a gateway
address of another bridge than they came in on. So instances reach their own network, the gateway (DNS) and, with
an EIP or egress, the outside's range, and nothing else: not other networks, not the machine's uplink. Each instance gets its own netns `cl-<cloud>-i-<id>` with
a veth `eth0` whose peer sits on the network's bridge.

An added host (network/underlay.py) names its hub `cl-<cloud>-h-<H>.hub` and its ports `cl-<cloud>-h-<H>.i-<id>`.
Where the agent's namespace has an underlay link, each bridge also holds a VXLAN port `vx.<short id>` (VNI from the
network's subnet, the cloud's multicast group floods, MACs are learned), so a network is one L2 segment across hosts.
Every host's bridge holds the same gateway address and MAC (a distributed gateway: DNS and metadata answer on the
instance's own host); the hub's `bridge cl_vx` table keeps the gateway's own frames and ARP for it off the VXLAN.
"""

from __future__ import annotations

__all__ = ["LinuxNetworkDriver"]

import hashlib
import ipaddress
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute

from cloudlet.core.errors import translate_errors
from cloudlet.network.drivers.base import NetworkDriver, PortSpec, PublicPlan, short
from cloudlet.network.hostguard import guard, unguard
from cloudlet.network.netns import NETNS_DIR, run_in_netns
from cloudlet.network.nft_secgroups import DENY_INGRESS
from cloudlet.network.outside import ADDED_LINKS, HUB_LINK, PUBLIC_MARK, Outside, OutsideLink
from cloudlet.network.underlay import Underlay

T = TypeVar("T")

HUB_NFT = f"""
table inet cloudlet
delete table inet cloudlet
table inet cloudlet {{
    chain input {{
        type filter hook input priority 0; policy accept;
        fib daddr . iif type != local drop
    }}
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "{HUB_LINK}" ct status dnat accept
        oifname "{HUB_LINK}" meta mark {PUBLIC_MARK:#x} accept
    }}
}}
"""


def _mac(key: str) -> str:
    """A fixed locally administered unicast MAC for `key`. A bridge otherwise takes the lowest MAC of its ports and a
    veth a random one at every start: an instance's restart then changed the gateway's (or its own) MAC under
    every neighbour's ARP cache, and DNS and traffic to it stopped for up to ~30 s until the entries expired."""
    b = bytearray(hashlib.sha256(key.encode()).digest()[:6])
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


VXLAN_NFT = """
table bridge cl_vx
delete table bridge cl_vx
table bridge cl_vx {
    set gw_macs { type ether_addr; }
    set gw_ips { type ipv4_addr; }
    chain output {
        type filter hook output priority 0; policy accept;
        oifname "vx.*" ether saddr @gw_macs drop
    }
    chain forward {
        type filter hook forward priority 0; policy accept;
        oifname "vx.*" arp daddr ip @gw_ips drop
        iifname "vx.*" arp daddr ip @gw_ips drop
        iifname "vx.*" arp saddr ip @gw_ips drop
    }
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "vx.*" arp saddr ip @gw_ips drop
    }
}
"""
# An instance's port is `v<short id>`, and an id may go on with "x": without the dot the cl_vx rules took such an
# instance for a VXLAN port and cut it off its gateway (its ARP and the hub's frames to it were dropped).
VX_PREFIX = "vx."


def _vx(network_id: str) -> str:
    return f"{VX_PREFIX}{short(network_id)}"


TENANT_BASE = int(ipaddress.IPv4Address("10.240.0.0"))


def vni_of(subnet: ipaddress.IPv4Network) -> int:
    """Subnets of one cloud never overlap and are /29 or larger: their network addresses over 8 are distinct."""
    return ((int(subnet.network_address) - TENANT_BASE) >> 3) + 1


def _announce(address: str) -> None:
    """A gratuitous ARP from eth0 (in the caller's netns): every bridge on the network, across hosts, learns where
    the port is now. A restarted or moved instance keeps its MAC, and without this the bridges and VXLAN ports went
    on sending its frames to the host it left until their entries aged out or a neighbour's ARP entry went stale
    (~30 s of silence after a failover)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("eth0", 0))
        mac = s.getsockname()[4]
        ip = socket.inet_aton(address)
        arp = b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + ip + b"\x00" * 6 + ip
        s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)


class LinuxNetworkDriver(NetworkDriver):
    def __init__(self, cloud_id: str, home: Path | None = None, host_ns: str | None = None) -> None:
        """host_ns: the namespace of an added host (network/underlay.py) whose agent this is; None for the machine's
        own host, whose names carry only the cloud id."""
        self.cloud_id = cloud_id
        self.hub = f"{host_ns}.hub" if host_ns else f"cl-{cloud_id}-hub"
        self.port_prefix = f"{host_ns}.i-" if host_ns else f"cl-{cloud_id}-i-"
        self.underlay = Underlay(cloud_id, home) if home is not None else None
        # the outside namespace needs the cloud's home (its public slice is kept there); host local's agent makes
        # it, an added host joins it by a link of its own (the first ADDED_LINKS of them)
        self.outside: Outside | None = None
        if home is not None and not host_ns:
            self.outside = Outside(cloud_id, self.hub, home)
        elif home is not None and self.underlay is not None and host_ns:
            slot = self.underlay.slot(host_ns.removeprefix(f"cl-{cloud_id}-h-"))
            if slot is not None and slot < ADDED_LINKS:
                self.outside = OutsideLink(cloud_id, self.hub, home, slot)
        self.underlay_link = "ul0" if host_ns else (self.underlay.root_link if self.underlay else "")
        self._lock = threading.Lock()

    def hub_netns(self) -> str:
        return self.hub

    def _in(self, name: str, fn: Callable[[IPRoute], T]) -> T:
        """Runs fn with a netlink socket opened inside netns `name`, from a thread switched into it: unlike
        pyroute2's NetNS, no helper process is forked (a fork of the agent costs tens of ms under load)."""

        def run() -> T:
            with IPRoute() as ipr:
                return fn(ipr)

        return run_in_netns(name, run)

    @staticmethod
    def _exists(name: str) -> bool:
        return os.path.exists(os.path.join(NETNS_DIR, name))

    def ensure_hub(self) -> None:
        with self._lock, translate_errors("creating the hub network namespace"):
            made = not self._exists(self.hub)
            if made:
                self._make_hub()
            if self.outside is not None:
                self.outside.ensure(rebuild=made)  # a new hub has lost its end of the outside link

    def _make_hub(self) -> None:
        subprocess.run(["ip", "netns", "add", self.hub], check=True, capture_output=True)
        self._in(self.hub, lambda ns: ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up"))
        # br_netfilter would send bridged frames through the inet forward hook below; same-network traffic
        # is plain L2 and must not be; routed traffic (to and from the outside only) is filtered there.
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.hub,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=0",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["ip", "netns", "exec", self.hub, "nft", "-f", "-"],
            input=(HUB_NFT + VXLAN_NFT).encode(),
            check=True,
            capture_output=True,
        )

    def ensure_network(self, network_id: str, gateway: str, prefixlen: int) -> None:
        self.ensure_hub()
        br = f"br{short(network_id)}"
        mac = _mac(f"bridge {network_id}")

        def plumb(ns: IPRoute) -> None:
            idx = ns.link_lookup(ifname=br)
            if not idx:
                ns.link("add", ifname=br, kind="bridge")
                idx = ns.link_lookup(ifname=br)
            if ns.get_links(idx[0])[0].get_attr("IFLA_ADDRESS") != mac:
                ns.link("set", index=idx[0], address=mac)  # set, not inherited: a port leaving cannot change it
            addrs = {a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=idx[0])}
            if gateway not in addrs:
                ns.addr("add", index=idx[0], address=gateway, prefixlen=prefixlen)
            ns.link("set", index=idx[0], state="up")

        subnet = ipaddress.IPv4Interface(f"{gateway}/{prefixlen}").network
        with translate_errors(f"creating bridge {br}"):
            self._in(self.hub, plumb)
            self._ensure_vxlan(network_id, vni_of(subnet), mac, gateway)
            guard(subnet)

    def _ensure_vxlan(self, network_id: str, vni: int, mac: str, gateway: str) -> None:
        """The network's VXLAN port on its bridge, made in the agent's own namespace (its socket stays on the
        underlay link there) and moved into the hub."""
        if self.underlay is None:
            return
        vx, br = _vx(network_id), f"br{short(network_id)}"
        underlay, hub = self.underlay, self.hub
        if self._in(hub, lambda ns: bool(ns.link_lookup(ifname=vx))):
            return
        self._delete_link(f"vx{short(network_id)}")  # its name before VX_PREFIX: same VNI and port, it would clash
        with IPRoute() as ipr:  # netlink, not /sys: an added host's agent sees the root namespace's sysfs
            if not ipr.link_lookup(ifname=self.underlay_link):
                return  # no underlay here: a host on its own
            if ipr.link_lookup(ifname=vx):  # left behind by a crash before the move
                ipr.link("del", index=ipr.link_lookup(ifname=vx)[0])
            ipr.link(
                "add",
                ifname=vx,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_group=underlay.vxlan_group,
                vxlan_link=ipr.link_lookup(ifname=self.underlay_link)[0],
                vxlan_port=underlay.vxlan_port,
                vxlan_learning=1,
            )
            ipr.link("set", index=ipr.link_lookup(ifname=vx)[0], net_ns_fd=hub)

        def enslave(ns: IPRoute) -> None:
            ns.link("set", index=ns.link_lookup(ifname=vx)[0], master=ns.link_lookup(ifname=br)[0], state="up")

        self._in(hub, enslave)
        self._nft(
            f"add element bridge cl_vx gw_macs {{ {mac} }}\nadd element bridge cl_vx gw_ips {{ {gateway} }}\n", hub
        )

    def _delete_link(self, ifname: str) -> None:
        def delete(ns: IPRoute) -> None:
            idx = ns.link_lookup(ifname=ifname)
            if idx:
                ns.link("del", index=idx[0])

        if self._exists(self.hub):
            self._in(self.hub, delete)

    def _subnets(self, br: str | None = None) -> list[ipaddress.IPv4Network]:
        """The subnets of the hub's bridges (all, or br's)."""

        def read(ns: IPRoute) -> list[ipaddress.IPv4Network]:
            return [
                ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
                for link in ns.get_links()
                if link.get_attr("IFLA_IFNAME").startswith("br") and br in (None, link.get_attr("IFLA_IFNAME"))
                for a in ns.get_addr(index=link["index"], family=socket.AF_INET)
            ]

        return self._in(self.hub, read) if self._exists(self.hub) else []

    def delete_network(self, network_id: str) -> None:
        br = f"br{short(network_id)}"
        with translate_errors(f"deleting bridge {br}"):
            for net in self._subnets(br):
                unguard(net)
            self._delete_link(_vx(network_id))
            self._delete_link(br)

    def list_networks(self) -> set[str]:
        if not self._exists(self.hub):
            return set()
        names = self._in(self.hub, lambda ns: [link.get_attr("IFLA_IFNAME") for link in ns.get_links()])
        return {n[2:] for n in names if n.startswith("br")}

    def _port_ns(self, instance_id: str) -> str:
        return self.port_prefix + instance_id

    def ensure_port(self, port: PortSpec, pid: int | None = None) -> str:
        self.ensure_hub()
        name = self._port_ns(port.instance_id)
        path = os.path.join(NETNS_DIR, name)
        if pid is not None and self._exists(name) and os.stat(path).st_ino != os.stat(f"/proc/{pid}/ns/net").st_ino:
            subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)  # a previous run's
        veth, peer = f"v{short(port.instance_id)}", f"p{short(port.instance_id)}"
        br = f"br{short(port.network_id)}"
        # eth0's MAC follows its address, so a restarted instance is where its neighbours' ARP caches say
        mac = _mac(f"port {port.network_id} {port.address}")

        def hub_side(hub: IPRoute) -> None:
            bridge = hub.link_lookup(ifname=br)
            if not bridge:
                raise RuntimeError(f"bridge {br} of network {port.network_id} does not exist yet")
            if not self._in(name, lambda inst: inst.link_lookup(ifname="eth0")):
                if hub.link_lookup(ifname=veth):
                    hub.link("del", index=hub.link_lookup(ifname=veth)[0])
                hub.link("add", ifname=veth, kind="veth", peer={"ifname": peer, "net_ns_fd": name, "address": mac})
            hub.link("set", index=hub.link_lookup(ifname=veth)[0], master=bridge[0], state="up")

        def inside(inst: IPRoute) -> None:
            if not inst.link_lookup(ifname="eth0"):
                inst.link("set", index=inst.link_lookup(ifname=peer)[0], ifname="eth0")
            eth0 = inst.link_lookup(ifname="eth0")[0]
            addrs = {a.get_attr("IFA_ADDRESS") for a in inst.get_addr(index=eth0)}
            if port.address not in addrs:
                inst.addr("add", index=eth0, address=port.address, prefixlen=port.prefixlen)
            inst.link("set", index=eth0, state="up")
            inst.link("set", index=inst.link_lookup(ifname="lo")[0], state="up")
            if not any(r.get_attr("RTA_GATEWAY") for r in inst.get_default_routes()):
                inst.route("add", dst="default", gateway=port.gateway)
            # instances hold no CAP_NET_RAW: ping uses ICMP datagram sockets, which this lets every group open
            # (the file is the namespace of the thread that opens it)
            with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
                f.write("0 2147483647")

        with translate_errors(f"plumbing instance {port.instance_id}"):
            if not self._exists(name):
                how = ["attach", name, str(pid)] if pid is not None else ["add", name]
                subprocess.run(["ip", "netns", *how], check=True, capture_output=True)
                # a new netns lets nothing in until the agent loads its security groups' rules
                self._nft(DENY_INGRESS, name)
            self._in(self.hub, hub_side)
            # the MAC pinned to its port (sticky: learning cannot move it): a frame from the instance's previous
            # copy on another host, still stopping, came in over the VXLAN and took the MAC there, and the new
            # copy, a silent server, was unreachable from its own host until that entry aged out (~40 s after
            # a DR drill). The entry goes with the port.
            fdb = ["bridge", "fdb", "replace", mac, "dev", veth, "master", "static", "sticky"]
            subprocess.run(["ip", "netns", "exec", self.hub, *fdb], check=True, capture_output=True)
            self._in(name, inside)
            run_in_netns(name, lambda: _announce(port.address))
        return path

    def delete_port(self, instance_id: str) -> None:
        name = self._port_ns(instance_id)
        with translate_errors(f"removing network of instance {instance_id}"):
            self._delete_link(f"v{short(instance_id)}")
            if self._exists(name):
                subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)

    def port_exists(self, instance_id: str) -> bool:
        return os.path.exists(os.path.join(NETNS_DIR, self._port_ns(instance_id)))

    def list_ports(self) -> set[str]:
        names = os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []
        ids = (n[len(self.port_prefix) :] for n in names if n.startswith(self.port_prefix))
        return {i for i in ids if "." not in i}

    def _nft(self, text: str, netns: str) -> None:
        subprocess.run(
            ["nsenter", f"--net={os.path.join(NETNS_DIR, netns)}", "nft", "-f", "-"],
            input=text.encode(),
            check=True,
            capture_output=True,
        )

    def port_mac(self, instance_id: str) -> str | None:
        name = self._port_ns(instance_id)

        def mac(ns: IPRoute) -> str | None:
            idx = ns.link_lookup(ifname="eth0")
            return str(ns.get_links(idx[0])[0].get_attr("IFLA_ADDRESS")) if idx else None

        if not self._exists(name):
            return None
        with translate_errors(f"reading the MAC address of instance {instance_id}"):
            return self._in(name, mac)

    def apply_ruleset(self, name: str, text: str, instance_id: str | None = None) -> None:
        netns = self.hub if instance_id is None else self._port_ns(instance_id)
        if instance_id is None:
            self.ensure_hub()
        elif not self._exists(netns):
            return
        with translate_errors(f"loading nft ruleset {name} in {netns}"):
            self._nft(text, netns)

    def set_public(self, plan: PublicPlan) -> None:
        if self.outside is not None:
            self.ensure_hub()
            self.outside.apply(plan)

    def teardown(self) -> None:
        for iid in self.list_ports():
            self.delete_port(iid)
        for net in self._subnets():
            unguard(net)
        if self.outside is not None:
            self.outside.teardown()
        if self._exists(self.hub):
            subprocess.run(["ip", "netns", "del", self.hub], check=True, capture_output=True)
