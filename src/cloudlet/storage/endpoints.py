"""Where tenants may send backups: the admin's allow list of S3 endpoints (BackupEndpoint records), and the address
rules every connection to a tenant's target follows.

A tenant's target must name an allowed endpoint (same scheme, host and port). Unless the admin's entry says
`private`, every address its host resolves to must be public (not loopback, private, link-local, CGNAT, ULA,
multicast, reserved...): checked when the target is added, and again by the agent for every connection it opens,
which then connects to the very address it checked, so a name that resolves elsewhere a moment later (DNS
rebinding) cannot steer tenant data to the host or its neighbours. The admin's own targets may point anywhere.
"""

from __future__ import annotations

__all__ = [
    "ENDPOINT",
    "EndpointCreate",
    "Pin",
    "allow_endpoint",
    "endpoint_view",
    "find_endpoint",
    "grant",
    "origin",
    "pin_client",
    "pin_for",
    "public_addresses",
    "refusal",
    "remove_endpoint",
    "unusable",
]

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.core.context import ADMIN_TENANT, SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.errors import BadRequest, Forbidden
from cloudlet.core.records import Name, Resource, check_name
from cloudlet.storage.resource import BACKUP_ENDPOINT, BACKUP_TARGET, EndpointSpec, TargetSpec

ENDPOINT = BACKUP_ENDPOINT
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: a gateway turns it into the IPv4 address
# what origin() accepts, for the schema: a host name or IPv4 address (IPv6 literals are not taken: a name that
# resolves to IPv6 is), an optional port
ORIGIN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?/?$"
)
HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
ASK = "ask the admin to allow it with 'cloudlet backup endpoint allow {url}'"


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=300, pattern=ORIGIN, description="an S3 endpoint's origin: http(s)://host[:port]")
    private: bool = Field(
        False, strict=True, description="tenants' targets here may reach loopback, private and link-local addresses"
    )
    name: Name | None = Field(None, description="default: made from the host and port")


def origin(url: str) -> str:
    """The canonical `scheme://host:port` of an endpoint URL; BadRequest unless it is one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"endpoint {url!r} is not a valid URL: {exc}") from None
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise BadRequest(f"endpoint {url!r} must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise BadRequest(f"endpoint {url!r} must be scheme://host[:port], without a path, credentials or query")
    literal = _literal(host)
    if isinstance(literal, ipaddress.IPv6Address):
        raise BadRequest(f"endpoint {url!r}: give IPv6 endpoints by host name, not as an address literal")
    if literal is None and not HOST_RE.fullmatch(host):
        raise BadRequest(f"endpoint {url!r}: {host!r} is not a host name or IP address")
    if port == 0:
        raise BadRequest(f"endpoint {url!r} has port 0")
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{literal or host}:{port}"


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def refusal(ip: IPAddress) -> str | None:
    """What kind of non-public address ip is ("a loopback address"), or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal(embedded)
        if ip.is_site_local:
            return "a site-local address"
    for flag, what in (
        ("is_unspecified", "an unspecified"),
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_multicast", "a multicast"),
        ("is_private", "a private"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(ip, flag):
            return f"{what} address"
    if not ip.is_global:  # shared (CGNAT 100.64/10) and the other special-purpose ranges
        return "not a public address"
    return None


def _resolve(host: str, port: int) -> list[str]:
    """Every address host resolves to; OSError (a resolver failure, maybe passing) if none."""
    literal = _literal(host.strip("[]"))
    if literal is not None:
        return [str(literal)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:
        raise socket.gaierror(str(exc)) from None
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def public_addresses(host: str, port: int, url: str) -> list[str]:
    """Every address host resolves to, each checked; Forbidden naming the first that is not public."""
    addresses = _resolve(host, port)
    for address in addresses:
        why = refusal(ipaddress.ip_address(address))
        if why is not None:
            raise Forbidden(
                f"backup endpoint {url} resolves to {address}, {why}, and tenants' backups go only to public "
                f"addresses; if it is meant to be reached on a private network, ask the admin to allow it with "
                f"'cloudlet backup endpoint allow {url} --private'"
            )
    return addresses


# the allow list


def _default_name(url: str) -> str:
    """The default entry name: ep-127-0-0-1-9000 for http://127.0.0.1:9000."""
    base = re.sub(r"[^a-z0-9]+", "-", url.split("://", 1)[1].lower()).strip("-")
    return ("ep-" + base)[:63].rstrip("-")


def find_endpoint(cloud: Cloud, url: str) -> Resource | None:
    try:
        want = origin(url)
    except BadRequest:
        return None  # no entry has a URL that is not one
    return next((r for r in cloud.store.list(ENDPOINT) if EndpointSpec.of(r).url == want), None)


def allow_endpoint(cloud: Cloud, caller: Caller, req: EndpointCreate) -> Resource:
    """Adds an entry, or changes the `private` flag of the entry with that URL; tenants' targets at it (again) may
    be used."""
    caller.require_admin("allowing backup endpoints")
    url = origin(req.url)
    literal = _literal(urlsplit(url).hostname or "")
    if literal is not None and not req.private and (why := refusal(literal)) is not None:
        raise Forbidden(f"{literal} is {why}: tenants' targets there would all be refused; add --private to allow it")
    if req.name is not None:
        check_name("backup endpoint", req.name)
    spec = EndpointSpec(url=url, private=req.private)
    res = find_endpoint(cloud, url)
    if res is None:
        name = req.name or _default_name(url)
        res = Resource(kind=ENDPOINT, tenant=SYSTEM_TENANT, name=name, spec=spec.dump(), phase="ready")
        res = cloud.store.create(res, created=f"tenants may back up to {url}" + (" (private)" if req.private else ""))
    elif EndpointSpec.of(res) != spec:
        res = cloud.store.update_spec(res.id, spec.dump())
        cloud.store.add_event(res, "Changed", f"private addresses {'allowed' if req.private else 'refused'}")
    for target in _tenant_targets(cloud):
        tspec = TargetSpec.of(target)
        if origin(tspec.endpoint) == url and tspec.allowed_by in (None, res.id):
            _grant(cloud, target, res.id, req.private)
    return res


def remove_endpoint(cloud: Cloud, caller: Caller, name: str) -> Resource:
    """Removes the entry; the tenants' targets it allowed are refused from then on, by the API and by the agents."""
    caller.require_admin("removing backup endpoints")
    res = cloud.store.get(ENDPOINT, SYSTEM_TENANT, name)
    for target in _tenant_targets(cloud):
        if TargetSpec.of(target).allowed_by == res.id:
            _grant(cloud, target, None, False)
    cloud.store.mark_deleted(res.id)
    return res


def _tenant_targets(cloud: Cloud) -> list[Resource]:
    return [t for t in cloud.store.list(BACKUP_TARGET) if t.tenant != ADMIN_TENANT and not t.deleting]


def _grant(cloud: Cloud, target: Resource, endpoint_id: str | None, private: bool) -> None:
    spec = TargetSpec.of(target)
    if (spec.allowed_by, spec.private) != (endpoint_id, private):
        spec.allowed_by, spec.private = endpoint_id, private
        cloud.store.update_spec(target.id, spec.dump())


def endpoint_view(res: Resource) -> dict[str, Any]:
    spec = EndpointSpec.of(res)
    return {"name": res.name, "url": spec.url, "private": spec.private, "created_at": res.created_at}


def grant(cloud: Cloud, caller: Caller, endpoint: str) -> tuple[str | None, bool]:
    """For a new target of caller's at endpoint: the allow entry's id and its `private` flag, to record in the
    target (None, False for the admin's, which may point anywhere). Forbidden, saying what to do, unless the endpoint
    is allowed and, without `private`, resolves only to public addresses."""
    if caller.tenant == ADMIN_TENANT:
        return None, False
    url = origin(endpoint)
    entry = find_endpoint(cloud, url)
    if entry is None:
        raise Forbidden(f"backup endpoint {url} is not allowed for tenants; {ASK.format(url=url)}")
    private = EndpointSpec.of(entry).private
    if not private:
        parts = urlsplit(url)
        try:
            public_addresses(str(parts.hostname), int(parts.port or 0), url)
        except OSError as exc:
            raise BadRequest(f"cannot resolve the host of backup endpoint {url}: {exc}") from None
    return entry.id, private


def unusable(target: Resource) -> str | None:
    """Why nobody may use this target now (a tenant's whose allow entry the admin removed), or None."""
    spec = TargetSpec.of(target)
    if target.tenant == ADMIN_TENANT or spec.allowed_by is not None:
        return None
    url = _safe_origin(spec.endpoint)
    return f"backup endpoint {url} is no longer allowed for tenants; {ASK.format(url=url)}"


def _safe_origin(url: str) -> str:
    try:
        return origin(url)
    except BadRequest:
        return url


@dataclass
class Pin:
    """How the agent connects for a tenant's target: every connection resolves the host, checks each address, and
    connects to one it checked. `refused` keeps the refusal, whatever the S3 client wraps the exception in."""

    url: str
    refused: str | None = None

    def address(self, host: str, port: int) -> str:
        """The checked address to dial: Forbidden if any address of host is not public, OSError if it does not
        resolve (a passing failure: the S3 client and the reconciler retry)."""
        try:
            return public_addresses(host, port, self.url)[0]
        except Forbidden as exc:
            self.refused = exc.message
            raise

    def check(self) -> None:
        """Refuses before any request is made (connections are checked again when they are opened)."""
        parts = urlsplit(self.url)
        self.address(str(parts.hostname), int(parts.port or 0))


def pin_for(target: Resource) -> Pin | None:
    """The Pin every connection to target goes through; None where any address will do (the admin's targets and
    the endpoints the admin allowed with `private`)."""
    spec = TargetSpec.of(target)
    if target.tenant == ADMIN_TENANT or spec.private:
        return None
    return Pin(_safe_origin(spec.endpoint))


def pin_client(client: Any, pin: Pin) -> None:
    """Makes every connection the boto3 client opens go through pin. botocore has no public hook for this; its
    session's pool classes are swapped for subclasses whose connections dial the checked address (and keep the
    host name for the Host header, SNI and certificate checks)."""
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )

    def new_conn(base: Any) -> Any:
        def _new_conn(self: Any) -> Any:
            name = self._dns_host
            self._dns_host = pin.address(name, self.port)
            try:
                return base._new_conn(self)
            finally:
                self._dns_host = name

        return _new_conn

    http = type("PinnedHTTPConnection", (AWSHTTPConnection,), {"_new_conn": new_conn(AWSHTTPConnection)})
    https = type("PinnedHTTPSConnection", (AWSHTTPSConnection,), {"_new_conn": new_conn(AWSHTTPSConnection)})
    classes = client._endpoint.http_session._pool_classes_by_scheme  # shared with its pool managers
    if set(classes) != {"http", "https"}:
        raise RuntimeError("botocore changed: cannot pin the connections of a backup target")  # fail closed
    classes["http"] = type("PinnedHTTPPool", (AWSHTTPConnectionPool,), {"ConnectionCls": http})
    classes["https"] = type("PinnedHTTPSPool", (AWSHTTPSConnectionPool,), {"ConnectionCls": https})
