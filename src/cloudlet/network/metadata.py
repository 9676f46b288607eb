"""Instance metadata on 169.254.169.254, EC2-compatible, served by each host's agent from its cached records.

So it keeps answering while cloudletd is down. The server listens on `PORT` in the hub namespace; the hub's own
nft table `ip cl_meta` redirects `ADDRESS:80` arriving on any bridge to that bridge's primary address (its
gateway) on `PORT`. A connection is identified like a DNS query (network/dns.py): the gateway it reached names
the network, its source address the instance on it. An unknown source (the hub itself, an address no instance
of that network has) gets a 404 and no data; a request carrying X-Forwarded-For is refused, as EC2's IMDS does
(a proxy in the instance would otherwise hand out its host's identity).

Paths (any version segment, `latest` or a date, means the same): `meta-data/` with instance-id (the record id),
hostname and local-hostname (the DNS name), local-ipv4, public-ipv4 (when an elastic IP is associated),
ami-id (the image name), placement/availability-zone, tags/instance/KEY (its labels), flags/KEY (its owner
stack's flags) and stack/ (the stack's name and membership); `user-data` (404 when none);
`dynamic/instance-identity/document` (JSON). IMDSv2: `PUT /latest/api/token` with
X-aws-ec2-metadata-token-ttl-seconds gives a token bound to the instance and its address; a GET that carries a
token must carry a valid one, a GET without one is answered too (v1).

Bounds: at most `MAX_CONNECTIONS` connections (each a thread), `PER_SOURCE` from one address and half of them
from one tenant's instances (or from unknown sources), beyond which a new connection is closed at once; a
request head of at most `HEAD_MAX` bytes (431) and no body (413); closed after `IDLE_TIMEOUT` without a whole
request or after `MAX_LIFETIME` however busy.
"""

from __future__ import annotations

__all__ = [
    "ADDRESS",
    "PORT",
    "MAX_CONNECTIONS",
    "PER_SOURCE",
    "HEAD_MAX",
    "IDLE_TIMEOUT",
    "MAX_LIFETIME",
    "TOKEN_TTL_MAX",
    "InstanceMetadata",
    "metadata_of",
    "Answer",
    "answer",
    "documents",
    "Directory",
    "MetadataService",
]

import hashlib
import hmac
import json
import logging
import os
import re
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudlet.compute.resource import InstanceSpec, InstanceStatus
from cloudlet.core.context import Records
from cloudlet.core.errors import translate_errors
from cloudlet.core.records import Resource
from cloudlet.network.dns import dns_name
from cloudlet.network.eips import public_ip
from cloudlet.network.instance_index import CachedIndex, addressed, gateways
from cloudlet.network.netns import run_in_netns
from cloudlet.network.resource import NETWORK
from cloudlet.stacks.resource import STACK, StackSpec, StackStatus

log = logging.getLogger("cloudlet.metadata")

ADDRESS = "169.254.169.254"
PORT = 8775  # in the hub; what ADDRESS:80 is redirected to
MAX_CONNECTIONS = 32  # open connections (and so threads)
PER_SOURCE = 4  # of those, from one address
HEAD_MAX = 8192  # bytes of request line and headers
IDLE_TIMEOUT = 3.0  # seconds a connection may take to deliver its next whole request
MAX_LIFETIME = 30.0  # seconds a connection is kept however busy
TOKEN_TTL_MAX = 21600  # seconds, as EC2
DRAIN_MAX = 1 << 20  # bytes read and dropped after refusing a request, so the refusal is not lost to a reset
DIGITS = re.compile(r"^[0-9]{1,12}$")
VERSION = re.compile(r"^(latest|1\.0|\d{4}-\d{2}-\d{2})$")
TAG_KEY = re.compile(r"^[A-Za-z0-9+=._:-]+$")  # what EC2 shows of tags in metadata: no '/', nothing empty

NFT = f"""
table ip cl_meta
delete table ip cl_meta
table ip cl_meta {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {ADDRESS} tcp dport 80 redirect to :{PORT}
    }}
}}
"""


@dataclass(frozen=True)
class InstanceMetadata:
    """What one instance is told about itself."""

    instance_id: str
    name: str
    hostname: str
    local_ipv4: str
    zone: str
    image: str
    tenant: str
    tags: dict[str, str] = field(default_factory=dict)
    public_ipv4: str | None = None
    flags: dict[str, str] = field(default_factory=dict)
    stack: str | None = None
    membership: dict[str, Any] = field(default_factory=dict)
    user_data: str | None = None


def metadata_of(records: Records, inst: Resource, default_zone: str = "zone-a") -> InstanceMetadata:
    spec, status = InstanceSpec.of(inst), InstanceStatus.of(inst)
    zone = inst.zone or default_zone
    net = records.get_by_id(spec.network_id)
    hostname = status.dns_name or dns_name(inst.name, net.name if net else spec.network, zone)
    owner = records.get_by_id(inst.owner) if inst.owner else None
    stack = owner if owner is not None and owner.kind == STACK else None
    return InstanceMetadata(
        instance_id=inst.id,
        name=inst.name,
        hostname=hostname,
        local_ipv4=status.ip or "",
        zone=zone,
        image=spec.image,
        tenant=inst.tenant,
        tags={k: v for k, v in inst.labels.items() if TAG_KEY.match(k)},
        public_ipv4=public_ip(records, inst.id),
        flags={k: v for k, v in StackSpec.of(stack).flags.items() if TAG_KEY.match(k)} if stack else {},
        stack=stack.name if stack else None,
        membership=dict(StackStatus.of(stack).membership) if stack else {},
        user_data=spec.user_data,
    )


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/plain"


def _identity_document(md: InstanceMetadata) -> dict[str, Any]:
    return {
        "instanceId": md.instance_id,
        "imageId": md.image,
        "privateIp": md.local_ipv4,
        "availabilityZone": md.zone,
        "region": md.zone,
        "accountId": md.tenant,
        "version": "2017-09-30",
    }


def _tree(md: InstanceMetadata) -> dict[str, Any]:
    """The document tree under a version: a dict is a directory (listed), a str a leaf."""
    meta: dict[str, Any] = {
        "ami-id": md.image,
        "hostname": md.hostname,
        "instance-id": md.instance_id,
        "local-hostname": md.hostname,
        "local-ipv4": md.local_ipv4,
        "placement": {"availability-zone": md.zone},
        "tags": {"instance": dict(md.tags)},
    }
    if md.public_ipv4:
        meta["public-ipv4"] = md.public_ipv4
    if md.flags:
        meta["flags"] = dict(md.flags)
    if md.stack:
        meta["stack"] = {"name": md.stack, "membership": json.dumps(md.membership, sort_keys=True)}
    tree: dict[str, Any] = {
        "meta-data": meta,
        "dynamic": {"instance-identity": {"document": json.dumps(_identity_document(md), indent=2)}},
    }
    if md.user_data is not None:
        tree["user-data"] = md.user_data
    return tree


def documents(md: InstanceMetadata) -> dict[str, str]:
    """Every document under /latest/ by its path: what `cloudlet metadata` shows."""
    out: dict[str, str] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in sorted(node.items()):
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            else:
                out[prefix + key] = value

    walk(_tree(md), "")
    return out


def answer(md: InstanceMetadata, path: str) -> Answer:
    """The answer to a GET of `path` (no query string) for the instance `md` describes."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return Answer(200, "latest")
    if not VERSION.match(parts[0]):
        return Answer(404, "not found")
    node: Any = _tree(md)
    for part in parts[1:]:
        if not isinstance(node, dict) or part not in node:
            return Answer(404, "not found")
        node = node[part]
    if isinstance(node, dict):
        return Answer(200, "\n".join(f"{k}/" if isinstance(v, dict) else k for k, v in sorted(node.items())))
    json_leaf = parts[1:] == ["dynamic", "instance-identity", "document"]
    return Answer(200, node, "application/json" if json_leaf else "text/plain")


@dataclass
class _Index:
    gateways: dict[str, str] = field(default_factory=dict)  # gateway address -> network id
    instances: dict[tuple[str, str], str] = field(default_factory=dict)  # (network id, address) -> instance id


class Directory:
    """Which instance a connection comes from: the network of the gateway it reached, and its source address."""

    def __init__(self, records: Records, max_age: float = 0.5) -> None:
        self.records = records
        self._index = CachedIndex(self._build, max_age)

    def _build(self) -> _Index:
        return _Index(
            gateways(self.records.list(NETWORK)),
            {(net_id, ip): inst.id for inst, ip, net_id in addressed(self.records)},
        )

    def instance_at(self, gateway: str, source: str) -> Resource | None:
        def look(idx: _Index) -> Resource | None:
            rid = idx.instances.get((idx.gateways.get(gateway, ""), source))
            res = self.records.get_by_id(rid) if rid else None
            return res if res is not None and not res.deleting and InstanceStatus.of(res).ip == source else None

        return self._index.find(look)


class _TooLarge(Exception):
    pass


def _read_head(conn: socket.socket, buf: bytes, deadline: float) -> tuple[bytes | None, bytes]:
    """One request head (up to the blank line) and what followed it; None at a clean end of stream. Raises
    TimeoutError once the deadline passes (a trickle does not extend it), _TooLarge past HEAD_MAX."""
    buf = buf.lstrip(b"\r\n")  # empty lines before a request line are ignored (RFC 9112 2.2)
    while b"\r\n\r\n" not in buf:
        if len(buf) > HEAD_MAX:
            raise _TooLarge
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            return None, b""
        buf = (buf + chunk).lstrip(b"\r\n")
    head, _, rest = buf.partition(b"\r\n\r\n")
    if len(head) > HEAD_MAX:
        raise _TooLarge
    return head, rest


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]  # names lower-cased


def _parse(head: bytes) -> _Request | None:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            return None
        headers[name.strip().lower()] = value.strip()
    return _Request(parts[0], parts[1].partition("?")[0], parts[2], headers)


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
REASONS |= {405: "Method Not Allowed", 413: "Payload Too Large", 431: "Request Header Fields Too Large"}


def _response(ans: Answer, keep: bool, head_only: bool = False, extra: dict[str, str] | None = None) -> bytes:
    body = ans.body.encode()
    lines = [
        f"HTTP/1.1 {ans.status} {REASONS.get(ans.status, 'Error')}",
        f"Content-Type: {ans.content_type}",
        f"Content-Length: {len(body)}",
        "Server: cloudlet-metadata",
        f"Connection: {'keep-alive' if keep else 'close'}",
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


def _refuse(conn: socket.socket, ans: Answer) -> None:
    """Answers and closes a request not read to its end: what is still unread (briefly, boundedly) is drained
    first, as closing over unread data resets the connection and the client would lose the answer."""
    conn.settimeout(IDLE_TIMEOUT)
    conn.sendall(_response(ans, keep=False))
    conn.shutdown(socket.SHUT_WR)
    deadline, drained = time.monotonic() + 1.0, 0
    while drained < DRAIN_MAX and (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        chunk = conn.recv(65536)
        if not chunk:
            return
        drained += len(chunk)


Identify = Callable[[str, str], Resource | None]  # (gateway reached, source address) -> the instance, if any


class MetadataService:
    """The HTTP server: one accepting thread, one thread per connection (see the module docstring)."""

    def __init__(self, records: Records, default_zone: str = "zone-a", max_connections: int = MAX_CONNECTIONS) -> None:
        self.records = records
        self.default_zone = default_zone
        self.directory = Directory(records)
        self.identify: Identify = self.directory.instance_at
        self.hub: str | None = None
        self._secret = os.urandom(32)  # signs IMDSv2 tokens; they die with the agent, as EC2's die with a reboot
        self.max_connections = max_connections
        self._conns: dict[socket.socket, tuple[str, str | None]] = {}  # -> (source address, tenant)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    def serve_hub(self, hub: str) -> None:
        """Listens in the hub and installs the redirect of ADDRESS:80 (one nft transaction, replacing any)."""
        if self.hub == hub:
            return
        with translate_errors(f"serving metadata in {hub}"):
            subprocess.run(
                ["ip", "netns", "exec", hub, "nft", "-f", "-"], input=NFT.encode(), check=True, capture_output=True
            )
            self._sock = run_in_netns(hub, lambda: _listen("0.0.0.0", PORT))
        self._thread = threading.Thread(target=self._accept_loop, name="metadata", daemon=True)
        self._thread.start()
        self.hub = hub

    def serve(self, sock: socket.socket) -> None:
        """Serves on a listening socket given (tests, on loopback)."""
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="metadata", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        sel = selectors.DefaultSelector()
        self._sock.setblocking(False)
        sel.register(self._sock, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        with sel:
            while True:
                for key, _ in sel.select():
                    if key.data is None:
                        return
                    try:
                        self._on_accept()
                    except OSError as exc:  # out of fds, a peer gone: that one connection is lost
                        log.debug("metadata: %s", exc)

    def _on_accept(self) -> None:
        assert self._sock is not None
        try:
            conn, peer = self._sock.accept()
        except BlockingIOError:
            return
        source = peer[0]
        inst = self.identify(conn.getsockname()[0], source)
        tenant = inst.tenant if inst is not None else None  # unknown sources share one tenant's share
        with self._lock:
            held = list(self._conns.values())
            if (
                len(held) >= self.max_connections
                or sum(src == source for src, _ in held) >= PER_SOURCE
                or 2 * sum(t == tenant for _, t in held) >= self.max_connections
            ):
                conn.close()
                return
            self._conns[conn] = (source, tenant)
        threading.Thread(target=self._serve_conn, args=(conn, source), name="metadata-conn", daemon=True).start()

    def _serve_conn(self, conn: socket.socket, source: str) -> None:
        ends = time.monotonic() + MAX_LIFETIME
        buf = b""
        try:
            conn.setblocking(True)
            local = conn.getsockname()[0]
            while time.monotonic() < ends:
                try:
                    head, buf = _read_head(conn, buf, min(ends, time.monotonic() + IDLE_TIMEOUT))
                except _TooLarge:
                    _refuse(conn, Answer(431, f"request head over {HEAD_MAX} bytes"))
                    return
                if head is None:
                    return
                req = _parse(head)
                if req is None:
                    _refuse(conn, Answer(400, "malformed request"))
                    return
                keep = req.version == "HTTP/1.1" and req.headers.get("connection", "").lower() != "close"
                if req.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in req.headers:
                    _refuse(conn, Answer(413, "metadata requests take no body"))
                    return
                ans, extra = self.handle(req.method, req.path, req.headers, local, source)
                conn.settimeout(IDLE_TIMEOUT)
                conn.sendall(_response(ans, keep, req.method == "HEAD", extra))
                if not keep:
                    return
        except OSError:  # timed out, reset, or closed by stop()
            pass
        except Exception:  # a bug on one request must not take the server down; the slot is freed below
            log.exception("metadata: a request failed")
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()

    def handle(
        self, method: str, path: str, headers: dict[str, str], local: str, source: str
    ) -> tuple[Answer, dict[str, str]]:
        """The answer to one request reaching `local` from `source` (header names lower-cased)."""
        if "x-forwarded-for" in headers:
            return Answer(403, "requests with X-Forwarded-For are refused"), {}
        inst = self.identify(local, source)
        if inst is None:
            return Answer(404, "no metadata for this address"), {}
        if method == "PUT":
            if path.rstrip("/").split("/")[-2:] != ["api", "token"]:
                return Answer(405, "only the token is PUT"), {"Allow": "GET, HEAD"}
            ttl = headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if not DIGITS.match(ttl) or not 1 <= int(ttl) <= TOKEN_TTL_MAX:
                return Answer(400, f"X-aws-ec2-metadata-token-ttl-seconds must be 1 to {TOKEN_TTL_MAX}"), {}
            issued = self._token(inst.id, source, int(time.time()) + int(ttl))
            return Answer(200, issued), {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
        if method not in ("GET", "HEAD"):
            return Answer(405, f"{method} is not served"), {"Allow": "GET, HEAD, PUT"}
        token = headers.get("x-aws-ec2-metadata-token")
        if token is not None and not self._token_valid(token, inst.id, source):
            return Answer(401, "the metadata token is invalid or expired; PUT /latest/api/token for a new one"), {}
        return answer(metadata_of(self.records, inst, self.default_zone), path), {}

    def _token(self, instance_id: str, source: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{instance_id}|{source}|{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    def _token_valid(self, token: str, instance_id: str, source: str) -> bool:
        expires, _, _ = token.partition(".")
        if not DIGITS.match(expires) or int(expires) < time.time():
            return False
        return hmac.compare_digest(token, self._token(instance_id, source, int(expires)))

    def stop(self) -> None:
        if self._thread is not None:
            self._wake_w.send(b"x")
            self._thread.join()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes its thread, which closes it
            except OSError:
                pass
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()


def _listen(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock
