"""Images: list, show, build (debootstrap, async), import (raw tarball body), delete."""

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
from cloudlet.core.errors import PayloadTooLarge
from cloudlet.core.labels import Selector

router = APIRouter(prefix="/v1/images", tags=["images"])


@router.get("")
def list_images(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    """The public images and the caller's own."""
    held = images.holders(cloud)
    return page([images.image_view(r, held) for r in images.visible_images(cloud, who) if sel.matches(r.labels)])


@router.get("/{name}")
def show_image(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return images.image_view(images.get_image(cloud, who, name), images.holders(cloud))


@router.post("", status_code=202)
def build_image(
    body: images.ImageBuild, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Builds (or rebuilds) the caller's own image, or with the admin token a public one."""
    return images.image_view(images.request_build(cloud, who, body), images.holders(cloud))


@router.delete("/{name}", status_code=202)
def delete_image(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Refused (409, naming them) while instances, snapshots or backups boot from it."""
    return images.image_view(images.delete_image(cloud, who, name), images.holders(cloud))


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
    """Name, quota and declared size are checked before a byte of the body is read; the body is then streamed to
    a file next to the images with a running count; past the upload cap nothing more is kept (413). Nothing is
    left of a refused or failed upload."""
    length = request.headers.get("content-length", "")
    await run_in_threadpool(images.check_import, cloud, who, name, int(length) if length.isdigit() else None)
    cap = cloud.config.max_upload_bytes
    with images.upload_slot(who):
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tar", dir=images.uploads_dir(cloud))
        try:
            received = 0
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received <= cap:
                        out.write(chunk)
                    elif not out.closed:  # over the cap: nothing more is kept, what came is dropped at once
                        out.close()
                        Path(tmp).unlink(missing_ok=True)
            if received > cap:  # answered once the client has sent it all: one that sends first hears why
                raise PayloadTooLarge(f"the tarball is {received} bytes, more than an image upload may be ({cap})")
            res = await run_in_threadpool(images.import_image, cloud, who, name, Path(tmp), received)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return images.image_view(res, images.holders(cloud))
