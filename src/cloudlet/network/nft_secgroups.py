"""Security groups as nftables text: pure functions from specs to rulesets, loaded by the agent in one transaction
each (network/secgroups.py SecurityGroupPlumber).

Two tables, both named `cl_sg`, each file deleting and recreating its own table so a load replaces it atomically:
- the hub's `table bridge cl_sg` (anti-spoofing): a frame entering the bridge from an instance's port `v<short id>`
  must carry that instance's MAC and address (IPv4, or ARP for it); anything else from the port is dropped. DNS and the
  metadata server tell instances apart by source address, so this is what makes that safe.
- each instance netns's `table inet cl_sg` (ingress): established and related traffic, loopback, then the union of
  its groups' rules (chain `sg_<group id>`, which also admits the group's members, set `m_<group id>`); the input
  policy drops the rest. The bridge family has no connection tracking on this kernel (no nf_conntrack_bridge:
  `ct state` there is EPROTO), so stateful filtering happens in the instance's own IP stack, which its root
  cannot change (no CAP_NET_ADMIN).
"""

from __future__ import annotations

__all__ = ["DENY_INGRESS", "render_antispoof", "render_ingress", "rule_match"]

from collections.abc import Iterable, Mapping, Sequence

from cloudlet.network.drivers.base import short
from cloudlet.network.resource import SecurityGroupRule

_RESET = "table {family} cl_sg\ndelete table {family} cl_sg"  # create-then-delete: the delete never fails
# what a new instance netns holds until the agent loads its groups' rules: nothing gets in unasked. Without the
# delete of a reset (the netns has no table yet), as deleting a table costs an RCU grace period: 16 ms, not 4.
DENY_INGRESS = """table inet cl_sg {
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif "lo" accept
    }
}
"""


def render_antispoof(ports: Mapping[str, str], macs: Mapping[str, str] | None = None) -> str:
    """The hub's table for ports {instance id: its address}; with the port's MAC address known, frames from it
    must also carry that (a forged one would teach the bridge to send another instance's frames to this port)."""
    lines = [_RESET.format(family="bridge"), "table bridge cl_sg {"]
    verdicts = [f'"v{short(iid)}" : jump p_{iid}' for iid in sorted(ports)]
    lines += ["    chain prerouting {", "        type filter hook prerouting priority -200; policy accept;"]
    if verdicts:
        lines.append(f"        iifname vmap {{ {', '.join(verdicts)} }}")
    lines.append("    }")
    for iid in sorted(ports):
        addr, mac = ports[iid], (macs or {}).get(iid)
        lines.append(f"    chain p_{iid} {{")
        if mac:
            lines += [f"        ether saddr != {mac} drop", f"        arp saddr ether != {mac} drop"]
        lines += [
            f"        ether type ip ip saddr {addr} return",
            f"        ether type arp arp saddr ip {addr} return",
            "        drop",
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def rule_match(rule: SecurityGroupRule) -> str:
    """The nft match of one rule (source, protocol, ports), without its verdict."""
    parts = []
    if rule.source_group:
        parts.append(f"ip saddr @m_{rule.source_group}")
    elif rule.cidr and rule.cidr != "0.0.0.0/0":
        parts.append(f"ip saddr {rule.cidr}")
    if rule.protocol in ("tcp", "udp"):
        parts.append(f"{rule.protocol} dport {rule.ports}" if rule.ports else f"meta l4proto {rule.protocol}")
    elif rule.protocol == "icmp":
        parts.append("meta l4proto icmp")
    return " ".join(parts) or "meta nfproto ipv4"


def render_ingress(
    groups: Sequence[tuple[str, Sequence[SecurityGroupRule]]], members: Mapping[str, Iterable[str]]
) -> str:
    """One instance's table: `groups` are its groups' (id, rules) in order; `members` maps a group id to its
    members' addresses (every group its rules name as a source must be there; a missing one has no members)."""
    referenced = {gid for gid, _ in groups} | {r.source_group for _, rules in groups for r in rules if r.source_group}
    lines = [_RESET.format(family="inet"), "table inet cl_sg {"]
    for gid in sorted(referenced):
        addrs = sorted(set(members.get(gid, ())))
        lines += [f"    set m_{gid} {{", "        type ipv4_addr;"]
        if addrs:
            lines.append(f"        elements = {{ {', '.join(addrs)} }}")
        lines.append("    }")
    for gid, rules in groups:
        lines += [f"    chain sg_{gid} {{", f"        ip saddr @m_{gid} accept"]
        lines += [f'        {rule_match(r)} accept comment "{r.id}"' for r in rules]
        lines.append("    }")
    lines += [
        "    chain input {",
        "        type filter hook input priority 0; policy drop;",
        "        ct state established,related accept",
        '        iif "lo" accept',
        "        ct state invalid drop",
    ]
    lines += [f"        jump sg_{gid}" for gid, _ in groups]
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"
