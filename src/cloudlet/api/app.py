"""cloudletd's HTTP API (FastAPI). Routes are thin: they parse, call a domain service, shape the reply.

Errors: every CloudletError becomes {"error": {"code", "message"}} with its status in one handler here;
request validation errors become 400/422 with a message naming the field to fix.
"""

from __future__ import annotations

__all__ = ["create_app"]

import importlib
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from cloudlet.core.context import Caller, Cloud
from cloudlet.core.errors import CloudletError, Forbidden, Unauthorized
from cloudlet.core.records import NAME_RE, NAME_RULES

ERROR_SCHEMA = {"description": "Error", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}}}}
# A {name} in a path: the schema states the rules every record's name was made with.
NamePath = Annotated[str, Path(min_length=1, max_length=63, pattern=NAME_RE.pattern,
                               description=f"a name: {NAME_RULES}")]


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}}, headers=headers)


def _allowed_methods(request: Request) -> str:
    """A 405's Allow: every method a route serves at this path. (Starlette names only the methods of the first
    route whose path matched, and FastAPI makes one route per method.)"""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    parts = []
    status = 422
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body",)]
        if err.get("type") == "json_invalid":
            return 400, f"malformed JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}"
        if err.get("type") == "missing" and not loc:
            return 400, "request body is missing; send a JSON object"
        field = ".".join(loc) or "body"
        parts.append(f"{field}: {err.get('msg')}")
    return status, "invalid request: " + "; ".join(parts[:5])


def create_app(cloud: Cloud) -> FastAPI:
    from cloudlet.api.listcache import RenderCache
    from cloudlet.compute import instances
    from cloudlet.domains import DOMAINS

    app = FastAPI(
        title="cloudlet", version="0.1.0", description="cloudlet control plane API",
        responses={code: ERROR_SCHEMA for code in (400, 401, 403, 404, 409, 422)},
    )
    app.state.cloud = cloud
    app.state.instance_list = RenderCache(cloud.store, instances.KIND, instances.instance_view)

    @app.exception_handler(CloudletError)
    async def _cloudlet_error(_: Request, exc: CloudletError) -> JSONResponse:
        return _error(exc.status_code, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
        message = "malformed request body: send JSON" if exc.status_code == 400 else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _error(status, "bad_request" if status == 400 else "invalid_spec", message)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        """A bug: still the error format (Starlette logs the traceback after this answer)."""
        return _error(500, "internal", f"internal error ({type(exc).__name__}); cloudletd's log has the details")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for domain in DOMAINS:
        for path in domain.routers:
            module = importlib.import_module(path)
            # a module that checks tokens per route (users' or host agents') says so with OWN_AUTH
            deps = [] if getattr(module, "OWN_AUTH", False) else [Depends(caller)]
            app.include_router(module.router, dependencies=deps)
    return app


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
    if role.startswith("host:"):
        return Caller(tenant, "host", host=role.removeprefix("host:"))
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
