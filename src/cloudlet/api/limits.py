"""What one request may cost the API: the size of its body (BodyLimit, an ASGI middleware) and, for execs, how
many run at once (ExecSlots) and on which threads."""

from __future__ import annotations

__all__ = ["BodyLimit", "ExecSlots", "IMAGE_UPLOAD"]

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudlet.core.errors import PayloadTooLarge, TooManyRequests

# PUT /v1/images/{name}/rootfs streams its body to disk and bounds it itself
IMAGE_UPLOAD = ("PUT", r"^/v1/images/[^/]+/rootfs$")


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413: before reading any of it when Content-Length says so,
    else as soon as a chunked body passes the limit. A body within it is read here and handed on whole (routes
    parse their JSON bodies whole anyway). Routes matching `exempt` ((method, path pattern) pairs) get the stream
    untouched and bound it themselves."""

    def __init__(self, app: ASGIApp, limit: int, exempt: Iterable[tuple[str, str]] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = [(method, re.compile(pattern)) for method, pattern in exempt]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(
            scope["method"] == method and pattern.match(scope["path"]) for method, pattern in self.exempt
        ):
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse(send)  # the server discards the rest of the body it is sent
                return
            if not message.get("more_body", False):
                break
        whole: Message | None = {"type": "http.request", "body": bytes(body), "more_body": False}

        async def replay() -> Message:
            nonlocal whole
            if whole is None:
                return await receive()  # after the body, a route may still wait for the client's disconnect
            message, whole = whole, None
            return message

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        message = f"request body is larger than the limit of {self.limit} bytes (CLOUDLET_MAX_BODY_BYTES)"
        content = json.dumps({"error": {"code": PayloadTooLarge.code, "message": message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": PayloadTooLarge.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": content})


class ExecSlots:
    """Execs running now, per tenant and in all. One over either limit is refused with 429 rather than queued: the
    caller learns at once, and no request sits holding a connection. Execs run on threads of their own (`threads`,
    as many as the total allows), never on the pool shared by every other route. Used from the event loop only."""

    def __init__(self, per_tenant: int, total: int) -> None:
        self.per_tenant = per_tenant
        self.total = total
        self.running: dict[str, int] = {}
        self.threads = anyio.CapacityLimiter(total)

    @contextmanager
    def take(self, tenant: str) -> Iterator[None]:
        mine = self.running.get(tenant, 0)
        if mine >= self.per_tenant:
            raise TooManyRequests(
                f"{mine} execs of tenant {tenant} are running, the most allowed at a time "
                "(CLOUDLET_EXEC_PER_TENANT); retry when one has finished"
            )
        if (everyone := sum(self.running.values())) >= self.total:
            raise TooManyRequests(
                f"{everyone} execs are running, the most this cloud allows at a time (CLOUDLET_EXEC_TOTAL); retry later"
            )
        self.running[tenant] = mine + 1
        try:
            yield
        finally:
            self.running[tenant] -= 1
            if not self.running[tenant]:
                del self.running[tenant]
