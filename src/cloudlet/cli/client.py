"""HTTP client for cloudletd (and, for `down`, an agent): turns {"error": ...} replies back into the matching
CloudletError. Built on the standard library's http.client because every CLI command pays for the client's
import: httpx alone took longer to import than cloudletd takes to answer a list."""

from __future__ import annotations

__all__ = ["Client", "connect", "call"]

import http.client
import json
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode, urlsplit

from cloudlet.core.config import Config, load_config
from cloudlet.core.errors import ERRORS_BY_CODE, CloudletError, Unreachable


def _encode(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def call(
    url: str,
    method: str,
    path: str,
    token: str = "",
    timeout: float = 120.0,
    params: dict[str, Any] | None = None,
    json_body: Any = None,
    content: Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    what: str = "control plane",
) -> Any:
    """One request; raises Unreachable when nothing answers at url, the matching CloudletError on an error."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    query = {k: _encode(v) for k, v in (params or {}).items() if v is not None}
    target = path + ("?" + urlencode(query) if query else "")
    hdrs = {"Accept": "application/json", **(headers or {})}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    body: Any = None
    if json_body is not None:
        body = json.dumps(json_body).encode()
        hdrs["Content-Type"] = "application/json"
    elif content is not None:
        body = content
        hdrs["Transfer-Encoding"] = "chunked"
    try:
        conn.request(method, target, body=body, headers=hdrs, encode_chunked=content is not None)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as exc:
        raise Unreachable(f"{what} unreachable at {url}; start it with 'cloudlet up'") from exc
    finally:
        conn.close()
    if resp.status >= 400:
        try:
            err = json.loads(data)["error"]
            cls = ERRORS_BY_CODE.get(err["code"], CloudletError)
        except (ValueError, KeyError, TypeError):
            raise CloudletError(f"{what} answered {resp.status}: {data[:200].decode(errors='replace')}") from None
        raise cls(err["message"])
    return json.loads(data) if data else None


class Client:
    def __init__(self, url: str, token: str, timeout: float = 120.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        return call(self.url, method, path, self.token, self.timeout, params, json, content, headers)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def connect(config: Config | None = None) -> Client:
    config = config or load_config()
    url = os.environ.get("CLOUDLET_URL") or str(config.endpoint().get("url") or "")
    if not url:
        raise CloudletError(f"cloudletd is not running (no {config.endpoint_file}); start it with 'cloudlet up'")
    token = os.environ.get("CLOUDLET_TOKEN", "")
    if not token:
        try:
            token = config.token_file.read_text().strip()
        except OSError:
            raise CloudletError(f"no token: set CLOUDLET_TOKEN or make {config.token_file} readable") from None
    return Client(url, token)
