"""One HTTP client shape for both directions between control plane and agents: a bearer token, and replies
turned back into the error tree (core/errors.py), with "unreachable" when nothing answers."""

from __future__ import annotations

__all__ = ["ApiClient"]

from typing import Any

import httpx

from cloudlet.core.errors import ERRORS_BY_CODE, CloudletError, Unreachable


class ApiClient:
    def __init__(self, url: str, token: str, who: str) -> None:
        self.url = url
        self.who = who  # how errors name the other side: "control plane", "agent of host h1"
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def call(self, method: str, path: str, timeout: float = 30, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, timeout=timeout, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"{self.who} unreachable at {self.url}") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise CloudletError(f"{self.who} answered {resp.status_code}: {resp.text[:200]}") from None
            raise ERRORS_BY_CODE.get(err["code"], CloudletError)(err["message"])
        return resp.json()
