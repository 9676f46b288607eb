"""Events: what happened to a tenant's resources, and why."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query

from cloudlet.api.deps import caller, get_cloud, page
from cloudlet.core.context import Caller, Cloud

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get("")
def list_events(
    name: str | None = Query(None, max_length=64),
    limit: int = Query(200, ge=1, le=10000),
    cloud: Cloud = Depends(get_cloud),
    who: Caller = Depends(caller),
) -> dict[str, Any]:
    return page([asdict(e) for e in cloud.store.list_events(who.tenant, name, limit)])
