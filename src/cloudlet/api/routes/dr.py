"""DR drills: start one of a stack (202, it runs in the background), list them, show one (with its report)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cloudlet.api.deps import NamePath, caller, get_cloud, page
from cloudlet.core.context import Caller, Cloud
from cloudlet.resilience import drills
from cloudlet.resilience.drill_resource import DRILL

router = APIRouter(prefix="/v1", tags=["dr"])


@router.post("/stacks/{name}/drills", status_code=202)
def start_drill(
    name: NamePath, body: drills.DrillRequest, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Rebuilds the stack in another zone from its replicas, timing each step; GET /v1/drills/{drill} follows it.
    404 unknown stack, 422 a zone with no live host, 409 data with no copy there or a drill already running."""
    return drills.start_drill(cloud, who, name, body)


@router.get("/drills")
def list_drills(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """The caller's drills, newest first, each with its RTO, RPO and verdict."""
    return page(drills.list_drills(cloud, who))


@router.get("/drills/{name}")
def show_drill(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    view = drills.drill_view(cloud.store.get(DRILL, who.tenant, name))
    return {**view, "summary": drills.summary(view)}
