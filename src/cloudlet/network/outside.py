"""The outside namespace: each cloud's stand-in for the internet, and the NAT that joins it to the hub.

`cl-<cloud>-out` answers for the whole benchmark range 198.18.0.0/15 (an address with that prefix on its
loopback), except this cloud's public slice, which it routes to the hub, and its transit links (more specific
routes in the same local table). It is joined to the hub by a veth pair (`hub0` there, `out0` in the hub) and to
the host by another (`host0` there, `cl<cloud>out` on the host) with a host route for the slice only. Nothing here has a default route: no packet of an instance, the hub or the outside can reach
the machine's real uplink.

Slices: a /24 pool per cloud in 198.18.0.0/16 (elastic IPs, .254 the egress NAT address), chosen from the cloud id
or `CLOUDLET_EIP_POOL` and kept in `$CLOUDLET_HOME/eip-pool`; its index N also numbers the cloud's transit links in
198.19.0.0/16 (198.19.N.0/30 host-outside, 198.19.N.4/30 outside-hub), so several clouds can be up at once.

The hub's table `ip cloudlet_public` is rendered from a `PublicPlan` and replaced by one `nft -f` transaction
(delete + define), so moving an EIP never leaves a moment with two holders or none.
"""

from __future__ import annotations

__all__ = [
    "PUBLIC_RANGE",
    "PUBLIC_MARK",
    "HUB_LINK",
    "Slice",
    "EIP_POOL_SIZE",
    "pool_slice",
    "Outside",
    "render_public",
    "OutsideLink",
    "ADDED_LINKS",
]

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cloudlet.core.errors import Conflict, InvalidSpec, translate_errors
from cloudlet.network.drivers.base import PublicPlan
from cloudlet.network.hostguard import guard, unguard
from cloudlet.network.netns import NETNS_DIR

PUBLIC_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
POOL_SPACE = ipaddress.IPv4Network("198.18.0.0/16")  # the other half carries the transit links
POOL_FILE = "eip-pool"
EIP_POOL_SIZE = 253  # a slice's .1 to .253 (.254 is its egress address)
PUBLIC_MARK = 0xE1  # set by cloudlet_public on forwarded packets allowed out; the hub's forward chain accepts it
HUB_LINK = "out0"  # the hub's end of its link to the outside
ADDED_LINKS = 30  # added hosts with a link to the outside: 198.19.N.8/30 to .124/30 (the underlay starts at .128)
INTERNET_ADDRESS = "198.19.255.254"  # the outside's own address on lo, with the whole range's prefix (no slice has it)
# the outside forwards what the host starts towards the hub and replies, never a connection from the hub (an
# instance) to the host: the host's address on its link is as far as a tenant's packet must not get
OUTSIDE_NFT = """
table inet cloudlet_outside
delete table inet cloudlet_outside
table inet cloudlet_outside {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "host0" oifname != "host0" accept
    }
}
"""


@dataclass(frozen=True)
class Slice:
    """One cloud's share of the public range: its EIP pool and its transit links."""

    pool: ipaddress.IPv4Network

    @property
    def index(self) -> int:
        return int(self.pool.network_address.packed[2])

    def _transit(self, host: int) -> str:
        return f"198.19.{self.index}.{host}"

    @property
    def host_address(self) -> str:
        return self._transit(1)

    @property
    def outside_host_side(self) -> str:
        return self._transit(2)

    @property
    def outside_hub_side(self) -> str:
        return self._transit(5)

    @property
    def hub_address(self) -> str:
        return self._transit(6)

    @property
    def transit_links(self) -> tuple[tuple[str, str], ...]:
        """(network, the outside's device on it): host-outside, outside-hub."""
        return (f"198.19.{self.index}.0/30", "host0"), (f"198.19.{self.index}.4/30", "hub0")

    def added_transit(self, slot: int) -> tuple[str, str]:
        """(the outside's side, the hub's side) of added host `slot`'s link, a /30 of 198.19.N.8 to .127."""
        if not 0 <= slot < ADDED_LINKS:
            raise Conflict(f"only the first {ADDED_LINKS} added hosts of a cloud get a link to the outside")
        return self._transit(9 + 4 * slot), self._transit(10 + 4 * slot)

    @property
    def egress_address(self) -> str:
        return str(self.pool.network_address + 254)

    def eip_candidates(self) -> list[str]:
        return [str(self.pool.network_address + i) for i in range(1, EIP_POOL_SIZE + 1)]


def _routed_elsewhere(net: ipaddress.IPv4Network) -> bool:
    """Whether the host already routes part of net (another cloud's slice, or anything else)."""
    out = subprocess.run(["ip", "-j", "-4", "route", "show"], capture_output=True, text=True).stdout
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if route.get("type") == "unreachable":
            continue  # the guard below, not a route anywhere
        if dst and dst != "default" and ipaddress.ip_network(dst if "/" in dst else f"{dst}/32").overlaps(net):
            return True
    return False


def _guard_host(on: bool) -> None:
    """The public range is unreachable from the host but for the clouds' slices (network/hostguard.py); shared by
    every cloud, so removed with the last one."""
    if on:
        guard(PUBLIC_RANGE)
    elif not any(name.startswith("cl") and name.endswith("out") for name in os.listdir("/sys/class/net")):
        unguard(PUBLIC_RANGE)


def _parse_pool(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidSpec(f"CLOUDLET_EIP_POOL={text!r} is not a network such as 198.18.7.0/24: {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen != 24 or not net.subnet_of(POOL_SPACE):
        raise InvalidSpec(f"CLOUDLET_EIP_POOL={text} must be a /24 inside {POOL_SPACE} (part of {PUBLIC_RANGE})")
    return net


def pool_slice(home: Path, cloud_id: str) -> Slice:
    """This cloud's slice, chosen once (the first caller writes it; cloudletd and the agent then agree)."""
    path = home / POOL_FILE
    if path.exists():
        return Slice(_parse_pool(path.read_text()))
    wanted = os.environ.get("CLOUDLET_EIP_POOL")
    if wanted:
        net = _parse_pool(wanted)
        if _routed_elsewhere(net):
            raise Conflict(f"CLOUDLET_EIP_POOL={net} is already routed on this host; choose another /24")
    else:
        start = int(cloud_id, 16) % 256
        for n in range(256):
            net = ipaddress.IPv4Network(f"198.18.{(start + n) % 256}.0/24")
            if not _routed_elsewhere(net):
                break
        else:
            raise Conflict(f"every /24 of {POOL_SPACE} is routed on this host; take a cloud down first")
    home.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # the other process chose first
        return Slice(_parse_pool(path.read_text()))
    with os.fdopen(fd, "w") as f:
        f.write(f"{net}\n")
    return Slice(net)


def _elements(items: list[str]) -> str:
    return f"elements = {{ {', '.join(items)} }}" if items else ""


def render_public(plan: PublicPlan, sl: Slice) -> str:
    """The hub's public table: DNAT of each EIP from the outside, SNAT of its holder's own traffic out, egress
    networks' traffic to the public range (and nowhere else) out as the slice's egress address."""
    outbound = sorted({*plan.egress_subnets, *(private for _, private in plan.eips)})
    inbound = [f"{public} : {private}" for public, private in plan.eips]
    source: dict[str, str] = {}
    for public, private in plan.eips:
        source.setdefault(private, public)  # an instance holding two EIPs speaks out from the first
    return f"""
table ip cloudlet_public
delete table ip cloudlet_public
table ip cloudlet_public {{
    set outbound {{ type ipv4_addr; flags interval; {_elements(outbound)} }}
    map inbound {{ type ipv4_addr : ipv4_addr; {_elements(inbound)} }}
    map source {{ type ipv4_addr : ipv4_addr; {_elements([f"{k} : {v}" for k, v in sorted(source.items())])} }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{HUB_LINK}" dnat to ip daddr map @inbound
    }}
    chain forward {{
        type filter hook forward priority -10; policy accept;
        oifname "{HUB_LINK}" ip daddr {PUBLIC_RANGE} ip saddr @outbound meta mark set {PUBLIC_MARK:#x}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{HUB_LINK}" snat to ip saddr map @source
        oifname "{HUB_LINK}" ip saddr @outbound snat to {sl.egress_address}
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "{HUB_LINK}" drop
    }}
}}
"""


def _run(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, input=stdin.encode() if stdin else None)


class Outside:
    """The outside netns of one cloud and its links; made beside the hub, gone with it."""

    def __init__(self, cloud_id: str, hub: str, home: Path) -> None:
        self.cloud_id = cloud_id
        self.hub = hub
        self.home = home
        self.netns = f"cl-{cloud_id}-out"
        self.host_link = f"cl{cloud_id}out"
        self._slice: Slice | None = None
        self._plan = PublicPlan()

    @property
    def slice(self) -> Slice:
        if self._slice is None:
            self._slice = pool_slice(self.home, self.cloud_id)
        return self._slice

    def _complete(self) -> bool:
        return os.path.exists(os.path.join(NETNS_DIR, self.netns)) and os.path.exists(
            f"/sys/class/net/{self.host_link}"
        )

    def ensure(self, rebuild: bool = False) -> None:
        """Makes the outside netns, its links and routes if missing (a partial one from a crash is rebuilt)."""
        if self._complete() and not rebuild:
            return
        self.teardown()
        sl, ns, hub = self.slice, self.netns, self.hub
        pool = str(sl.pool)
        with translate_errors(f"creating the outside namespace {ns}"):
            _guard_host(True)
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "host0", "netns", ns)
            _run("ip", "-n", hub, "link", "add", HUB_LINK, "type", "veth", "peer", "name", "hub0", "netns", ns)
            _run("ip", "addr", "add", f"{sl.host_address}/30", "dev", self.host_link)
            _run("ip", "-n", ns, "addr", "add", f"{sl.outside_host_side}/30", "dev", "host0")
            _run("ip", "-n", ns, "addr", "add", f"{sl.outside_hub_side}/30", "dev", "hub0")
            _run("ip", "-n", hub, "addr", "add", f"{sl.hub_address}/30", "dev", HUB_LINK)
            for where, link in ((None, self.host_link), (ns, "host0"), (ns, "hub0"), (ns, "lo"), (hub, HUB_LINK)):
                _run("ip", *(["-n", where] if where else []), "link", "set", link, "up")
            for where in (ns, hub):  # forwarding inside the project's namespaces only, never the host's
                _run("ip", "netns", "exec", where, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # the local table: the whole range is the outside's own, but for the slice and the transit links
            prefix = PUBLIC_RANGE.prefixlen
            _run("ip", "-n", ns, "addr", "add", f"{INTERNET_ADDRESS}/{prefix}", "dev", "lo")
            _run("ip", "-n", ns, "route", "add", pool, "via", sl.hub_address, "table", "local")
            for net, link in sl.transit_links:
                _run("ip", "-n", ns, "route", "add", net, "dev", link, "table", "local")
            _run("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=OUTSIDE_NFT)
            _run("ip", "-n", hub, "route", "add", str(PUBLIC_RANGE), "via", sl.outside_hub_side)
            # the host's one route into the project: this cloud's slice, nothing else
            try:
                _run("ip", "route", "add", pool, "via", sl.outside_host_side, "dev", self.host_link)
            except subprocess.CalledProcessError as exc:  # another cloud took the slice since it was chosen
                self.teardown()
                raise Conflict(
                    f"the host already routes this cloud's public slice {pool} (another cloud?); take that one down, "
                    f"or before any EIP exists, remove {self.home / POOL_FILE} to choose another"
                ) from exc
        self.apply(self._plan)

    def apply(self, plan: PublicPlan) -> None:
        """Replaces the hub's public table in one transaction, then points the outside's routes of the EIPs held
        here at this hub."""
        self._plan = plan
        with translate_errors("applying the public NAT table"):
            _run("ip", "netns", "exec", self.hub, "nft", "-f", "-", stdin=render_public(plan, self.slice))
            self._route_eips(plan, self.hub_side)

    @property
    def hub_side(self) -> str:
        """This hub's address on its link to the outside: where the outside routes the EIPs held here."""
        return self.slice.hub_address

    def _route_eips(self, plan: PublicPlan, via: str) -> None:
        """The outside routes each EIP to the hub of the host holding it: a /32 per EIP held here (replace: the
        newest holder wins, a dead host's route included), and those of this hub's routes no longer held go."""
        if not os.path.exists(os.path.join(NETNS_DIR, self.netns)):
            return
        held = {public for public, _ in plan.eips}
        out = subprocess.run(
            ["ip", "-n", self.netns, "-j", "route", "show", "table", "local", "via", via],
            capture_output=True,
            text=True,
        ).stdout
        mine = {r["dst"] for r in json.loads(out or "[]") if "/" not in r.get("dst", "/")}
        for public in sorted(held):
            _run("ip", "-n", self.netns, "route", "replace", f"{public}/32", "via", via, "table", "local")
        for public in sorted(mine - held):
            subprocess.run(
                ["ip", "-n", self.netns, "route", "del", f"{public}/32", "via", via, "table", "local"],
                capture_output=True,
            )

    def teardown(self) -> None:
        with translate_errors(f"removing the outside namespace {self.netns}"):
            if os.path.exists(f"/sys/class/net/{self.host_link}"):
                _run("ip", "link", "del", self.host_link)  # its host route goes with it
            if os.path.exists(os.path.join(NETNS_DIR, self.netns)):
                _run("ip", "netns", "del", self.netns)
            if os.path.exists(os.path.join(NETNS_DIR, self.hub)):
                subprocess.run(["ip", "-n", self.hub, "link", "del", HUB_LINK], capture_output=True)
            _guard_host(False)


class OutsideLink(Outside):
    """An added host's link to the cloud's outside namespace (which host `local`'s agent makes): `out0` in its hub,
    `hk<slot>` in the outside, a /30 of its own, the public range routed out through it, and the EIPs it holds
    routed in to it. Nothing here touches the root namespace."""

    def __init__(self, cloud_id: str, hub: str, home: Path, slot: int) -> None:
        super().__init__(cloud_id, hub, home)
        self.slot = slot
        self.link = f"hk{slot}"

    def _complete(self) -> bool:
        if not os.path.exists(os.path.join(NETNS_DIR, self.netns)):
            return True  # no outside yet (local's agent makes it): nothing to join
        probe = subprocess.run(["ip", "-n", self.hub, "link", "show", HUB_LINK], capture_output=True)
        return probe.returncode == 0

    def ensure(self, rebuild: bool = False) -> None:
        if self._complete() and not rebuild:
            return
        if not os.path.exists(os.path.join(NETNS_DIR, self.netns)):
            return
        outside_side, hub_side = self.slice.added_transit(self.slot)
        ns, hub = self.netns, self.hub
        with translate_errors(f"joining {hub} to the outside namespace"):
            subprocess.run(["ip", "-n", hub, "link", "del", HUB_LINK], capture_output=True)
            subprocess.run(["ip", "-n", ns, "link", "del", self.link], capture_output=True)
            _run("ip", "-n", hub, "link", "add", HUB_LINK, "type", "veth", "peer", "name", self.link, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{outside_side}/30", "dev", self.link)
            _run("ip", "-n", hub, "addr", "add", f"{hub_side}/30", "dev", HUB_LINK)
            _run("ip", "-n", ns, "link", "set", self.link, "up")
            _run("ip", "-n", hub, "link", "set", HUB_LINK, "up")
            _run("ip", "netns", "exec", hub, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            net = ipaddress.IPv4Interface(f"{outside_side}/30").network
            _run("ip", "-n", ns, "route", "replace", str(net), "dev", self.link, "table", "local")
            _run("ip", "-n", hub, "route", "replace", str(PUBLIC_RANGE), "via", outside_side)
        self.apply(self._plan)

    @property
    def hub_side(self) -> str:
        return self.slice.added_transit(self.slot)[1]

    def apply(self, plan: PublicPlan) -> None:
        self._plan = plan
        self.ensure()
        if self._complete() and os.path.exists(os.path.join(NETNS_DIR, self.netns)):
            super().apply(plan)

    def teardown(self) -> None:
        with translate_errors(f"leaving the outside namespace {self.netns}"):
            if os.path.exists(os.path.join(NETNS_DIR, self.netns)):
                self._route_eips(PublicPlan(), self.hub_side)
                subprocess.run(["ip", "-n", self.netns, "link", "del", self.link], capture_output=True)
