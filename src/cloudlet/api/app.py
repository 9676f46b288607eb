"""cloudletd's HTTP API (FastAPI). Routes are thin: they parse, call a domain service, shape the reply.

Errors: every CloudletError becomes {"error": {"code", "message"}} with its status in one handler here;
request validation errors become 400/422 with a message naming the field to fix.
"""

from __future__ import annotations

__all__ = ["create_app"]

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudlet.core.context import Caller, Cloud
from cloudlet.core.errors import CloudletError, Forbidden, Unauthorized

ERROR_SCHEMA = {"description": "Error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}}}}}}}}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


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
    from cloudlet.api.routes import compute, events, hosts, images, networks, storage, system
    from cloudlet.compute import instances

    app = FastAPI(
        title="cloudlet", version="0.1.0", description="cloudlet control plane API",
        responses={400: ERROR_SCHEMA, 401: ERROR_SCHEMA, 404: ERROR_SCHEMA, 409: ERROR_SCHEMA, 422: ERROR_SCHEMA},
    )
    app.state.cloud = cloud
    app.state.instance_list = RenderCache(cloud.store, instances.KIND, instances.instance_view)

    @app.exception_handler(CloudletError)
    async def _cloudlet_error(_: Request, exc: CloudletError) -> JSONResponse:
        return _error(exc.status_code, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
        message = "malformed request body: send JSON" if exc.status_code == 400 else str(exc.detail)
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _error(status, "bad_request" if status == 400 else "invalid_spec", message)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for module in (system, images, networks, compute, storage, events):
        app.include_router(module.router, dependencies=[Depends(caller)])
    app.include_router(hosts.router)  # its routes take a user's or a host agent's token, each as it needs
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
