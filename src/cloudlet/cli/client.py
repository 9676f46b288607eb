"""HTTP client for cloudletd: turns {"error": ...} replies back into the matching CloudletError."""

from __future__ import annotations

__all__ = ["Client", "connect"]

import os
from typing import Any

import httpx

from cloudlet.core.config import Config, load_config
from cloudlet.core.errors import ERRORS_BY_CODE, CloudletError, Unreachable


class Client:
    def __init__(self, url: str, token: str, timeout: float = 120.0) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"control plane unreachable at {self.url}; start it with 'cloudlet up'") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                cls = ERRORS_BY_CODE.get(err["code"], CloudletError)
                raise cls(err["message"])
            except (ValueError, KeyError, TypeError):
                raise CloudletError(f"cloudletd answered {resp.status_code}: {resp.text[:200]}") from None
        return resp.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs)

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
