"""Embedded DNS (dnslib): NAME.NETWORK.ZONE.cloudlet A records and their reverse PTRs.

Run by each host's agent from its cached records, so names keep resolving while cloudletd is down. Served on
127.0.0.1 (for the operator) and on every network gateway inside the hub namespace (for instances). A query
from an instance is answered from its own tenant's view; one from the host sees every tenant.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from dnslib import PTR, QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from cloudlet.compute.resource import INSTANCE, InstanceSpec, InstanceStatus
from cloudlet.core.context import ADMIN_TENANT, Records
from cloudlet.network.netns import run_in_netns
from cloudlet.network.resource import NETWORK

__all__ = ["DOMAIN", "dns_name", "Resolver", "DNSService"]

log = logging.getLogger("cloudlet.dns")
DOMAIN = "cloudlet"
TTL = 5


def dns_name(instance: str, network: str, zone: str) -> str:
    return f"{instance}.{network}.{zone}.{DOMAIN}"


@dataclass(frozen=True)
class Entry:
    tenant: str
    fqdn: str
    ip: str


class Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, store: Records, max_age: float = 0.5) -> None:
        self.store = store
        self.max_age = max_age
        self._lock = threading.Lock()
        self._built = 0.0
        self._by_name: dict[str, list[Entry]] = {}
        self._by_ip: dict[str, Entry] = {}

    def _index(self) -> tuple[dict[str, list[Entry]], dict[str, Entry]]:
        with self._lock:
            if time.monotonic() - self._built > self.max_age:
                nets = {n.id: n.name for n in self.store.list(NETWORK)}
                by_name: dict[str, list[Entry]] = {}
                by_ip: dict[str, Entry] = {}
                for inst in self.store.list(INSTANCE):
                    ip = InstanceStatus.of(inst).ip
                    net = nets.get(InstanceSpec.of(inst).network_id)
                    if not ip or not net or inst.deleting:
                        continue
                    entry = Entry(inst.tenant, dns_name(inst.name, net, inst.zone or "zone-a"), ip)
                    by_name.setdefault(entry.fqdn, []).append(entry)
                    by_ip[ip] = entry
                for entries in by_name.values():
                    entries.sort(key=lambda e: e.tenant != ADMIN_TENANT)
                self._by_name, self._by_ip, self._built = by_name, by_ip, time.monotonic()
            return self._by_name, self._by_ip

    def lookup(self, qname: str, qtype: str, client_ip: str | None) -> tuple[str, list[str]]:
        """Returns (rcode name, answers): answers are IPs for A and names for PTR."""
        by_name, by_ip = self._index()
        name = qname.rstrip(".").lower()
        viewer = by_ip.get(client_ip or "")
        tenant = viewer.tenant if viewer else None
        if name.endswith(".in-addr.arpa"):
            parts = name[: -len(".in-addr.arpa")].split(".")
            ip = ".".join(reversed(parts))
            entry = by_ip.get(ip)
            if entry and (tenant is None or entry.tenant == tenant):
                return "NOERROR", [entry.fqdn + "."] if qtype in ("PTR", "ANY") else []
            return "NXDOMAIN", []
        if not name.endswith("." + DOMAIN):
            return "REFUSED", []
        entries = [e for e in by_name.get(name, []) if tenant is None or e.tenant == tenant]
        if not entries:
            return "NXDOMAIN", []
        return "NOERROR", [entries[0].ip] if qtype in ("A", "ANY") else []

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        client = handler.client_address[0] if handler is not None else None
        rcode, answers = self.lookup(qname, qtype, client)
        reply.header.rcode = getattr(RCODE, rcode)
        for ans in answers:
            if qtype == "PTR":
                reply.add_answer(RR(qname, QTYPE.PTR, rdata=PTR(ans), ttl=TTL))
            else:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(ans), ttl=TTL))
        return reply


class _QuietLogger(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-data,-recv,-send", prefix=False)


class DNSService:
    """The UDP+TCP servers on 127.0.0.1:port and, once the hub exists, on port 53 of every gateway."""

    def __init__(self, resolver: Resolver, port: int) -> None:
        self.resolver = resolver
        self.servers: list[DNSServer] = []
        for tcp in (False, True):
            srv = DNSServer(resolver, port=port, address="127.0.0.1", tcp=tcp, logger=_QuietLogger())
            port = srv.server.server_address[1]  # the TCP server takes the port UDP was given
            self.servers.append(srv)
        self.port = port
        self.hub: str | None = None
        for srv in self.servers:
            srv.start_thread()

    def serve_hub(self, hub: str) -> None:
        if self.hub == hub:
            return
        for tcp in (False, True):
            srv = run_in_netns(
                hub,
                lambda tcp=tcp: DNSServer(  # type: ignore[misc]
                    self.resolver, port=53, address="0.0.0.0", tcp=tcp, logger=_QuietLogger()
                ),
            )
            srv.start_thread()
            self.servers.append(srv)
        self.hub = hub

    def stop(self) -> None:
        for srv in self.servers:
            srv.stop()
            srv.server.server_close()
