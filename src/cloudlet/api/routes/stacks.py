"""Stacks: plan, apply, list, show, delete, the document's JSON Schema, flags, read-only mode, rolling deploy."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cloudlet.api.deps import NamePath, caller, get_cloud, page
from cloudlet.api.routes.labels import label_selector
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.labels import Selector
from cloudlet.stacks import stacks
from cloudlet.stacks.spec import stack_schema

router = APIRouter(prefix="/v1/stacks", tags=["stacks"])


@router.get("")
def list_stacks(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    found = cloud.store.list(stacks.KIND, tenant=who.tenant)
    return page([stacks.stack_view(r) for r in found if sel.matches(r.labels)])


@router.get("/schema")
def schema() -> dict[str, Any]:
    """The JSON Schema of a stack document, for editors."""
    return stack_schema()


@router.post("/plan")
def plan(body: stacks.StackSource, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """What applying the document would do: create, update, replace or delete per resource, and which field
    forces each replace."""
    return stacks.plan_stack(cloud, who, body.yaml)


@router.post("", status_code=202)
def apply(body: stacks.StackSource, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Creates or updates the stack the document names; its reconciler makes the resources."""
    return stacks.apply_stack(cloud, who, body.yaml)


@router.get("/{name}")
def show(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return stacks.stack_view(cloud.store.get(stacks.KIND, who.tenant, name))


@router.delete("/{name}", status_code=202)
def delete(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Deletes the stack and everything it made, after its instances' shutdown hooks ran (in the background)."""
    return stacks.stack_view(stacks.delete_stack(cloud, who, name))


@router.post("/{name}/flags")
def flags(
    name: NamePath, body: stacks.FlagsUpdate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return stacks.stack_view(stacks.set_flags(cloud, who, name, body.flags))


@router.post("/{name}/readonly")
def readonly(
    name: NamePath, body: stacks.ReadonlyRequest, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return stacks.stack_view(stacks.set_readonly(cloud, who, name, body.on))


@router.post("/{name}/deploy", status_code=202)
def deploy(
    name: NamePath, body: stacks.DeployRequest, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Starts a rolling deploy of a layer in the background: a batch at a time out of its LBs, deploy, back in
    once healthy. One at a time per stack (409), a few per tenant (429); GET .../deploy follows it."""
    return stacks.start_deploy(cloud, who, name, body.layer, body.batch)


@router.get("/{name}/deploy")
def deploy_state(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """The running or last rolling deploy: state running, succeeded or failed, message, and each hook's exit code."""
    return stacks.deploy_state(cloud, who, name)
