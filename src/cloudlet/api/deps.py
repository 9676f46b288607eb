"""What the API's routes depend on: the cloud, who is calling (by token), name path parameters, list pages.

Routes import these from here, never from app.py, so the app that includes the routes is not imported by them.
"""

from __future__ import annotations

__all__ = ["NamePath", "get_cloud", "caller", "agent_caller", "page"]

from typing import Annotated, Any

from fastapi import Path, Request

from cloudlet.core.context import HOST_ROLE, Caller, Cloud
from cloudlet.core.errors import Forbidden, Unauthorized
from cloudlet.core.records import NAME_RE, NAME_RULES

# A {name} in a path: the schema states the rules every record's name was made with.
NamePath = Annotated[
    str, Path(min_length=1, max_length=63, pattern=NAME_RE.pattern, description=f"a name: {NAME_RULES}")
]


def get_cloud(request: Request) -> Cloud:
    cloud: Cloud = request.app.state.cloud
    return cloud


def _token_owner(request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>' (see admin.token)")
    found = get_cloud(request).store.lookup_token(token.strip())
    if found is None:
        raise Unauthorized("unknown token; use the admin token or one from 'cloudlet tenant create'")
    tenant, role = found
    if role.startswith(HOST_ROLE + ":"):
        return Caller(tenant, HOST_ROLE, host=role.removeprefix(HOST_ROLE + ":"))
    return Caller(tenant, role)


def caller(request: Request) -> Caller:
    """A user (admin or tenant member); a host agent's token opens only the agent API."""
    who = _token_owner(request)
    if who.host is not None:
        raise Forbidden("a host token may only use the agent API")
    return who


def agent_caller(request: Request) -> Caller:
    who = _token_owner(request)
    if who.host is None:
        raise Forbidden("this endpoint is for host agents; use their host token")
    return who


def page(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": items, "count": len(items)}
