"""Images: list, show, build (debootstrap, async), import (raw tarball body)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from cloudlet.api.deps import NamePath, caller, get_cloud, page
from cloudlet.api.routes.labels import label_selector
from cloudlet.compute import images
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.labels import Selector

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.get("")
def list_images(cloud: Cloud = Depends(get_cloud), sel: Selector = Depends(label_selector)) -> dict[str, Any]:
    return page([images.image_view(r) for r in cloud.store.list(images.KIND) if sel.matches(r.labels)])


@router.get("/{name}")
def show_image(name: NamePath, cloud: Cloud = Depends(get_cloud)) -> dict[str, Any]:
    return images.image_view(images.get_image(cloud, name))


@router.post("", status_code=202)
def build_image(
    body: images.ImageBuild, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return images.image_view(images.request_build(cloud, who, body))


@router.put(
    "/{name}/rootfs",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "required": True,
        }
    },
)
async def import_image(
    name: NamePath, request: Request, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """The body is streamed to a file next to the images, never held in memory whole."""
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tar", dir=images.uploads_dir(cloud))
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
        res = await run_in_threadpool(images.import_image, cloud, who, name, Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)
    return images.image_view(res)
