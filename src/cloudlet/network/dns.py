"""Embedded DNS: NAME.NETWORK.ZONE.cloudlet A records and their reverse PTRs (dnslib for the wire format), and a
stack's names: LAYER-N.STACK.ZONE.cloudlet, the zone-free alias LAYER-N.STACK.cloudlet (answered by the instance
the stack's status.aliases names, which failover and DR re-point), and LAYER.STACK.cloudlet with every healthy
(running, in-service) member.

Run by each host's agent from its cached records, so names keep resolving while cloudletd is down. Served on
127.0.0.1 (for the operator, who sees every tenant) and on every network gateway inside the hub namespace (for
instances). A gateway query is answered from the view of the network it arrived on, told by the gateway address
it was sent to (the hub's nftables drop a packet for a gateway that arrives on another bridge), and only if its
source is an instance on that network; any other query there gets no answer at all, not REFUSED: a forged
source would get the reply aimed at whoever owns that address, and a real instance the index has not caught up
with yet retries and is answered.

Each listening address (loopback, hub) has one thread that answers UDP inline (a lookup in memory) and accepts
TCP; each TCP connection gets a thread of its own, at most `TCP_MAX_CONNECTIONS` per address, `TCP_PER_SOURCE` of
them from one address and half from one tenant (beyond that a new connection is closed at once), and is closed
once a query has not fully arrived within `TCP_IDLE_TIMEOUT`, or after `TCP_MAX_LIFETIME` however busy.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import PTR, QTYPE, RCODE, RR, A, DNSError, DNSRecord

from cloudlet.compute.resource import InstanceStatus
from cloudlet.core.context import ADMIN_TENANT, Records
from cloudlet.core.errors import translate_errors
from cloudlet.core.records import Resource
from cloudlet.network.instance_index import CachedIndex, addressed, gateways
from cloudlet.network.netns import run_in_netns
from cloudlet.network.resource import NETWORK
from cloudlet.stacks.resource import IN_SERVICE, LAYER_LABEL, LIFECYCLE_LABEL, STACK, STACK_LABEL, StackStatus

__all__ = [
    "DOMAIN",
    "TCP_IDLE_TIMEOUT",
    "TCP_MAX_CONNECTIONS",
    "TCP_MAX_LIFETIME",
    "TCP_PER_SOURCE",
    "dns_name",
    "View",
    "EVERY_TENANT",
    "Resolver",
    "DNSService",
]

log = logging.getLogger("cloudlet.dns")
DOMAIN = "cloudlet"
TTL = 5
TCP_IDLE_TIMEOUT = 3.0  # seconds a TCP connection may take to deliver its next whole query
TCP_MAX_CONNECTIONS = 32  # open TCP connections (and so threads) per listening address
TCP_PER_SOURCE = 4  # of those, from one address; and one tenant holds at most half of them
TCP_MAX_LIFETIME = 30.0  # seconds a TCP connection is kept however busy: a held slot is given back
IP_PKTINFO = 8  # <linux/in.h>; Python 3.11's socket module lacks it
_PKTINFO = struct.Struct("i4s4s")  # struct in_pktinfo: ifindex, spec_dst (source of a reply), addr (destination)
_UDP_MAX = 4096


def dns_name(instance: str, network: str, zone: str) -> str:
    return f"{instance}.{network}.{zone}.{DOMAIN}"


@dataclass(frozen=True)
class Entry:
    tenant: str
    network_id: str
    fqdn: str
    ip: str
    group: bool = False  # one of several answers for its name (a stack layer's members)


@dataclass(frozen=True)
class View:
    """Whose names a query sees: one tenant's, or every tenant's (tenant None: the operator on the host)."""

    tenant: str | None


EVERY_TENANT = View(None)


@dataclass
class _Index:
    by_name: dict[str, list[Entry]] = field(default_factory=dict)
    by_ip: dict[str, Entry] = field(default_factory=dict)
    gateways: dict[str, str] = field(default_factory=dict)  # gateway address -> network id


class Resolver:
    def __init__(self, store: Records, max_age: float = 0.5) -> None:
        self.store = store
        self._index = CachedIndex(self._build, max_age)

    def _build(self) -> _Index:
        networks = self.store.list(NETWORK)
        idx = _Index(gateways=gateways(networks))
        nets = {net.id: net.name for net in networks}
        placed = [(inst, ip, net_id) for inst, ip, net_id in addressed(self.store) if net_id in nets]
        for inst, ip, net_id in placed:
            entry = Entry(inst.tenant, net_id, dns_name(inst.name, nets[net_id], inst.zone or "zone-a"), ip)
            idx.by_name.setdefault(entry.fqdn, []).append(entry)
            idx.by_ip[ip] = entry
        self._stack_names(idx, placed)
        for entries in idx.by_name.values():
            entries.sort(key=lambda e: e.tenant != ADMIN_TENANT)
        return idx

    def _stack_names(self, idx: _Index, placed: list[tuple[Resource, str, str]]) -> None:
        """A stack's names for its instances (labelled by the stack, which names their aliases), of the instances
        placed: (instance, address, network id)."""
        aliases: dict[tuple[str, str], dict[str, str]] = {
            (s.tenant, s.name): StackStatus.of(s).aliases for s in self.store.list(STACK) if not s.deleting
        }
        by_id: dict[str, tuple[str, str]] = {}  # instance id -> (ip, network id)
        members: list[tuple[str, str, str, str, str, str, bool]] = []  # tenant, stack, layer, name, zone, id, healthy
        for inst, ip, net_id in placed:
            stack = inst.labels.get(STACK_LABEL)
            by_id[inst.id] = (ip, net_id)
            if stack and (inst.tenant, stack) in aliases:
                healthy = inst.labels.get(LIFECYCLE_LABEL) == IN_SERVICE and InstanceStatus.of(inst).state == "running"
                layer = inst.labels.get(LAYER_LABEL, "")
                members.append((inst.tenant, stack, layer, inst.name, inst.zone or "zone-a", inst.id, healthy))
        for tenant, stack, layer, name, zone, iid, healthy in members:
            ip, net_id = by_id[iid]
            fqdn = f"{name}.{stack}.{zone}.{DOMAIN}"
            idx.by_name.setdefault(fqdn, []).append(Entry(tenant, net_id, fqdn, ip))
            target = by_id.get(aliases[(tenant, stack)].get(name, iid)) or (ip, net_id)
            alias = f"{name}.{stack}.{DOMAIN}"
            idx.by_name.setdefault(alias, []).append(Entry(tenant, target[1], alias, target[0]))
            if healthy:
                group = f"{layer}.{stack}.{DOMAIN}"
                idx.by_name.setdefault(group, []).append(Entry(tenant, net_id, group, ip, group=True))

    def view_on(self, gateway: str, source: str) -> View | None:
        """The view of a query sent to `gateway` from `source`: its tenant's if `source` is an instance on the
        network of that gateway, else None (no answer)."""

        def look(idx: _Index) -> View | None:
            entry = idx.by_ip.get(source)
            return View(entry.tenant) if entry is not None and idx.gateways.get(gateway) == entry.network_id else None

        return self._index.find(look)

    def lookup(self, qname: str, qtype: str, view: View) -> tuple[str, list[str]]:
        """Returns (rcode name, answers): answers are IPs for A and names for PTR."""
        idx = self._index.get()
        name = qname.rstrip(".").lower()
        if name.endswith(".in-addr.arpa"):
            parts = name[: -len(".in-addr.arpa")].split(".")
            entry = idx.by_ip.get(".".join(reversed(parts)))
            if entry and view.tenant in (None, entry.tenant):
                return "NOERROR", [entry.fqdn + "."] if qtype in ("PTR", "ANY") else []
            return "NXDOMAIN", []
        if not name.endswith("." + DOMAIN):
            return "REFUSED", []
        entries = [e for e in idx.by_name.get(name, []) if view.tenant in (None, e.tenant)]
        if not entries:
            return "NXDOMAIN", []
        if qtype not in ("A", "ANY"):
            return "NOERROR", []
        first = entries[0]
        if first.group:  # every member, of one tenant
            return "NOERROR", sorted({e.ip for e in entries if e.tenant == first.tenant})
        return "NOERROR", [first.ip]

    def reply(self, data: bytes, view: View) -> bytes | None:
        """The wire reply to a wire query, or None for what is not a query (garbage, a response, no question)."""
        try:
            request = DNSRecord.parse(data)
        except DNSError:
            return None
        if request.header.qr or not request.questions:
            return None
        reply = request.reply()
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        rcode, answers = self.lookup(qname, qtype, view)
        reply.header.rcode = getattr(RCODE, rcode)
        for ans in answers:
            if qtype == "PTR":
                reply.add_answer(RR(qname, QTYPE.PTR, rdata=PTR(ans), ttl=TTL))
            else:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(ans), ttl=TTL))
        return bytes(reply.pack())


ViewOf = Callable[[str, str], View | None]  # (local address a query was sent to, its source) -> its view


def _recv_exact(conn: socket.socket, n: int, deadline: float) -> bytes | None:
    """n bytes, None at end of stream; TimeoutError once the deadline passes (a trickle does not extend it)."""
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        conn.settimeout(left)
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class _Endpoint:
    """A UDP and a TCP socket on one address, served by one thread (see the module docstring)."""

    def __init__(
        self,
        resolver: Resolver,
        udp: socket.socket,
        tcp: socket.socket,
        view_of: ViewOf,
        max_connections: int,
        idle_timeout: float,
    ) -> None:
        self.resolver, self.udp, self.tcp, self.view_of = resolver, udp, tcp, view_of
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self._conns: dict[socket.socket, tuple[str, str | None]] = {}  # -> (source address, tenant)
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        for sock, handler in ((udp, self._on_udp), (tcp, self._on_accept), (self._wake_r, None)):
            sock.setblocking(False)
            self._sel.register(sock, selectors.EVENT_READ, handler)
        self.address, port = udp.getsockname()
        self._thread = threading.Thread(target=self._loop, name=f"dns-{self.address}:{port}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            for key, _ in self._sel.select():
                if key.data is None:
                    return
                try:
                    key.data()
                except OSError as exc:  # a peer gone or a full buffer: that one query is lost
                    log.debug("dns: %s", exc)
                except Exception:  # a bug on one query must not stop DNS for every instance
                    log.exception("dns: a query failed")

    def _on_udp(self) -> None:
        try:
            data, ancdata, flags, source = self.udp.recvmsg(_UDP_MAX, socket.CMSG_SPACE(_PKTINFO.size))
        except BlockingIOError:
            return
        local = self.address
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                local = socket.inet_ntoa(_PKTINFO.unpack(value[: _PKTINFO.size])[2])
        view = self.view_of(local, source[0])
        out = self.resolver.reply(data, view) if view is not None and not flags & socket.MSG_TRUNC else None
        if out is not None:
            # answer from the address the query was sent to, whatever else the hub's routes would pick
            info = _PKTINFO.pack(0, socket.inet_aton(local), bytes(4))
            self.udp.sendmsg([out], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, source)

    def _on_accept(self) -> None:
        try:
            conn, source = self.tcp.accept()
        except BlockingIOError:
            return
        view = self.view_of(conn.getsockname()[0], source[0])
        with self._lock:
            held = list(self._conns.values())
            if (
                view is None
                or len(held) >= self.max_connections
                or sum(src == source[0] for src, _ in held) >= TCP_PER_SOURCE
                or (view.tenant is not None and 2 * sum(t == view.tenant for _, t in held) >= self.max_connections)
            ):
                conn.close()
                return
            self._conns[conn] = (source[0], view.tenant)
        threading.Thread(target=self._serve_tcp, args=(conn, view), name="dns-tcp", daemon=True).start()

    def _serve_tcp(self, conn: socket.socket, view: View) -> None:
        ends = time.monotonic() + TCP_MAX_LIFETIME
        try:
            while time.monotonic() < ends:
                deadline = min(ends, time.monotonic() + self.idle_timeout)
                head = _recv_exact(conn, 2, deadline)
                data = _recv_exact(conn, struct.unpack("!H", head)[0], deadline) if head else None
                out = self.resolver.reply(data, view) if data else None
                if out is None:
                    return
                conn.settimeout(self.idle_timeout)
                conn.sendall(struct.pack("!H", len(out)) + out)
        except OSError:  # timed out, reset, or closed by stop()
            pass
        except Exception:  # as in _loop; the slot is freed below either way
            log.exception("dns: a TCP query failed")
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()

    def stop(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes its thread, which closes it
            except OSError:
                pass
        for sock in (self.udp, self.tcp, self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()


def _sockets(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP socket on (address, port), telling the destination of each datagram, and a TCP one on its port.
    With port 0 the kernel picks a UDP port whose TCP twin may be taken (by a connection of anyone's): pick again."""
    for _ in range(20 if port == 0 else 0):
        try:
            return _socket_pair(address, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    return _socket_pair(address, port)


def _socket_pair(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        udp.bind((address, port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address, udp.getsockname()[1]))  # the TCP socket takes the port UDP was given
        tcp.listen(64)
    except OSError:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


class DNSService:
    """DNS on 127.0.0.1:port and, once the hub exists, on port 53 of every gateway."""

    def __init__(
        self,
        resolver: Resolver,
        port: int,
        tcp_max_connections: int = TCP_MAX_CONNECTIONS,
        tcp_idle_timeout: float = TCP_IDLE_TIMEOUT,
    ) -> None:
        self.resolver = resolver
        self.tcp_limits = (tcp_max_connections, tcp_idle_timeout)
        with translate_errors(f"opening DNS on 127.0.0.1:{port}"):
            udp, tcp = _sockets("127.0.0.1", port)
        self.port: int = udp.getsockname()[1]
        self.endpoints = [_Endpoint(resolver, udp, tcp, lambda local, source: EVERY_TENANT, *self.tcp_limits)]
        self.hub: str | None = None

    def serve_hub(self, hub: str) -> None:
        if self.hub == hub:
            return
        with translate_errors(f"opening DNS in {hub}"):
            udp, tcp = run_in_netns(hub, lambda: _sockets("0.0.0.0", 53))
        self.endpoints.append(_Endpoint(self.resolver, udp, tcp, self.resolver.view_on, *self.tcp_limits))
        self.hub = hub

    def stop(self) -> None:
        for endpoint in self.endpoints:
            endpoint.stop()
