"""cloudletd's HTTP API (FastAPI). Routes are thin: they parse, call a domain service, shape the reply.

Errors: every CloudletError becomes {"error": {"code", "message"}} with its status in one handler here;
request validation errors become 400/422 with a message naming the field to fix; a 405 carries Allow; a bug is a
500 in the same format. A body over the limit is refused with 413 (api/limits.py). The schema is the contract:
openapi.json at the root (scripts/openapi.py rewrites it).
"""

from __future__ import annotations

__all__ = ["create_app"]

import importlib
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from cloudlet import __version__
from cloudlet.api.deps import caller
from cloudlet.api.limits import IMAGE_UPLOAD, BodyLimit, ExecSlots
from cloudlet.core.context import Cloud
from cloudlet.core.errors import CloudletError
from cloudlet.core.records import NAME_RE, NAME_RULES


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable: not_found, conflict, invalid_spec, ... (core/errors.py)")
    message: str = Field(description="what went wrong and what to do about it")


class ErrorReply(BaseModel):
    """Every error the API answers, whatever its status."""

    error: ErrorDetail


ERROR_SCHEMA: dict[str, Any] = {"description": "Error", "model": ErrorReply}  # one schema, referenced by every reply
_METHODS = {"delete", "get", "head", "options", "patch", "post", "put", "trace"}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}}, headers=headers)


def _allowed_methods(request: Request) -> str:
    """A 405's Allow: the methods the schema lists for the path, a literal path item (/v1/volumes/clone) before a
    templated one (/v1/volumes/{name}) as OpenAPI reads them. (Starlette would name only the methods of the first
    route whose path matched, and FastAPI makes one route per method.) Empty for a path outside the schema."""
    matched = [
        (template.count("{"), item)
        for template, item in request.app.openapi()["paths"].items()
        if compile_path(template)[0].match(request.url.path)
    ]
    fewest = min((params for params, _ in matched), default=0)
    methods = {m.upper() for params, item in matched if params == fewest for m in item if m in _METHODS}
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
        if err.get("type") == "string_pattern_mismatch":  # say the rule, not the regular expression
            rule = _pattern_rules().get(
                str(err.get("ctx", {}).get("pattern")), "does not have the form the schema gives"
            )
            parts.append(f"{field} {str(err.get('input'))[:64]!r}: {rule}")
        else:
            parts.append(f"{field}: {err.get('msg')}")
    return status, "invalid request: " + "; ".join(parts[:5])


def _pattern_rules() -> dict[str, str]:
    from cloudlet.core.labels import KEY_PATTERN, SELECTOR_PATTERN
    from cloudlet.storage.policies import CRON_PATTERN

    return {
        NAME_RE.pattern: f"use {NAME_RULES}",
        SELECTOR_PATTERN: "a label selector is k=v, k!=v, k or !k, joined by ','",
        KEY_PATTERN: "a label key is 1-63 lowercase letters, digits, '.', '_', '/', '-', starting and ending "
        "with a letter or digit",
        CRON_PATTERN: "a cron schedule is five fields (minute hour day month weekday) of numbers, '*', ranges, "
        "lists and steps, e.g. '0 3 * * *'",
    }


def create_app(cloud: Cloud) -> FastAPI:
    from cloudlet.api.listcache import RenderCache
    from cloudlet.compute import instances
    from cloudlet.domains import DOMAINS

    app = FastAPI(
        title="cloudlet",
        version=__version__,
        description="cloudlet control plane API",
        # every reply the error tree (core/errors.py) can give; 405 is for methods the schema does not list
        responses={code: ERROR_SCHEMA for code in (400, 401, 403, 404, 409, 413, 422, 429, 500, 501, 502, 503)},
    )
    app.state.cloud = cloud
    app.state.exec_slots = ExecSlots(cloud.config.exec_per_tenant, cloud.config.exec_total)
    app.add_middleware(BodyLimit, limit=cloud.config.max_body_bytes, exempt=[IMAGE_UPLOAD])
    app.state.instance_list = RenderCache(cloud.store, instances.KIND, instances.instance_view)

    @app.exception_handler(CloudletError)
    async def _cloudlet_error(_: Request, exc: CloudletError) -> JSONResponse:
        return _error(exc.status_code, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
        message = "malformed request body: send JSON" if exc.status_code == 400 else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := _allowed_methods(request)):
            headers["Allow"] = allowed  # else Starlette's, for a path outside the schema (/healthz)
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
