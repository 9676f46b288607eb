"""Labels on any kind (PATCH /v1/{kinds}/{name}/labels) and the label selector every list takes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

import cloudlet.domains  # noqa: F401  registers every kind before _plurals() lists them
from cloudlet.api.deps import caller, get_cloud
from cloudlet.core.context import PUBLIC_TENANT, SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.errors import NotFound
from cloudlet.core.kinds import by_plural, kinds
from cloudlet.core.labels import KEY_PATTERN, SELECTOR_PATTERN, Labels, Selector, edit_labels, parse_selector

router = APIRouter(tags=["labels"])


def label_selector(
    selector: str | None = Query(
        None,
        max_length=1024,
        pattern=SELECTOR_PATTERN,
        description="only records whose labels match: k=v, k!=v, k or !k, joined by ','",
    ),
) -> Selector:
    return parse_selector(selector)


class LabelEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    set: Labels = {}
    remove: list[Annotated[str, Field(pattern=KEY_PATTERN, max_length=63)]] = Field(default_factory=list, max_length=64)


def _plurals() -> str:
    return "^(" + "|".join(sorted(k.plural for k in kinds() if k.labelled)) + ")$"  # not import order


@router.patch("/v1/{kinds}/{name}/labels")
def edit(
    body: LabelEdit,
    kinds: str = Path(pattern=_plurals()),
    name: str = Path(max_length=63),
    cloud: Cloud = Depends(get_cloud),
    who: Caller = Depends(caller),
) -> dict[str, Any]:
    """Sets and removes labels (`cloudlet label KIND NAME k=v k-`); shared kinds need the admin token."""
    info = by_plural(kinds)
    if info is None or not info.labelled:
        raise NotFound(f"no kind {kinds!r} takes labels")
    if info.tenant_scoped:
        res = cloud.store.get(info.name, who.tenant, name)
    else:
        who.require_admin(f"labelling {kinds}")
        res = cloud.store.get(info.name, None, name)
        if res.tenant not in (PUBLIC_TENANT, SYSTEM_TENANT) and res.tenant != who.tenant:
            raise NotFound(f"{info.name} {name!r} not found")
    wanted = edit_labels(res.labels, body.set, body.remove)  # checked against the labels it has (limits, keys)
    changes: dict[str, str | None] = {key: None for key in body.remove}
    changes.update({k: v for k, v in wanted.items() if k in body.set})
    res = cloud.store.edit_labels(res.id, changes)
    return {"kind": res.kind, "name": res.name, "labels": res.labels}
