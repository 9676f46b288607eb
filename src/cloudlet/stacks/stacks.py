"""Stack kind: service functions for the API (plan, apply, delete, flags, read-only mode, rolling deploy) and the
control plane's StackReconciler, which makes what the document asks for and runs the instances' lifecycle.

A stack owns what it makes (`owner` = the stack's id), so deleting it removes everything (core/collect.py). Its
instances are named LAYER-N and stay unique per tenant: a second stack (or a hand-made instance) already holding
a name is a 409 naming it. Owned networks, security groups, LBs and EIPs are named STACK-KEY unless the YAML names
them; volumes LAYER-N-VOLUME. Image recipes build once per content (plan.recipe_image) and are not owned: they
are a cache that outlives the stack.
"""

from __future__ import annotations

__all__ = [
    "KIND",
    "StackSource",
    "FlagsUpdate",
    "ReadonlyRequest",
    "DeployRequest",
    "plan_stack",
    "apply_stack",
    "delete_stack",
    "set_flags",
    "set_readonly",
    "rolling_deploy",
    "start_deploy",
    "deploy_state",
    "MAX_PER_TENANT",
    "stack_view",
    "StackReconciler",
]

import hashlib
import importlib
import json
import time
from concurrent.futures import Future
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudlet.compute import images, instances
from cloudlet.compute.resource import HOST, INSTANCE, ImageStatus, InstanceStatus
from cloudlet.core import quota
from cloudlet.core.context import ADMIN_TENANT, SYSTEM_TENANT, Caller, Cloud
from cloudlet.core.errors import BadRequest, CloudletError, Conflict, NotFound
from cloudlet.core.kinds import kinds
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import FINALIZER, NameRef, Resource, record_view
from cloudlet.network import networks
from cloudlet.network.resource import NETWORK
from cloudlet.stacks import hooks
from cloudlet.stacks.deploys import DEPLOYS
from cloudlet.stacks.hookpool import POOL
from cloudlet.stacks.plan import KIND_ORDER, Action, desired, plan, recipe_image
from cloudlet.stacks.resource import (
    DR_ZONE_LABEL,
    IN_SERVICE,
    LAYER_LABEL,
    LIFECYCLE_LABEL,
    STACK,
    STACK_LABEL,
    Member,
    StackSpec,
    StackStatus,
)
from cloudlet.stacks.spec import MAX_FLAGS, FlagValue, ImageRecipe, StackDoc, check_flag_key, parse_stack
from cloudlet.storage import volumes
from cloudlet.storage.resource import VOLUME, VolumeSpec

KIND = STACK
# kinds other modules provide: (module, what the YAML section is called); a stack using one that is not there
# gets a 400 saying so
_OPTIONAL = {
    "SecurityGroup": ("cloudlet.network.secgroups", "security_groups"),
    "LoadBalancer": ("cloudlet.lb.loadbalancers", "load_balancers"),
    "ElasticIP": ("cloudlet.network.eips", "eips"),
}
POLL = 2.0  # while instances boot or old ones go, look again this often (watches wake it sooner)
# seconds to wait for the LBs to confirm a member drained before going on without it: the change goes through
# the member's agent, its HAProxy and back, which takes under a second here but longer on a loaded host
DRAIN_WAIT = 30.0
GRACE = 0.05  # seconds a reconcile pass waits for the hooks it started: a quick one is taken in the same pass
MAX_PER_TENANT = 20  # stacks of a tenant (quota "stacks", the admin may set another)
HookKey = tuple[str, str, str, str]  # a hook run on the pool: (stack id, instance id, event, what it ran for)
quota.register_meter(quota.Meter("stacks", KIND, lambda r: 0 if r.deleting else 1, MAX_PER_TENANT))


class StackSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    yaml: str = Field(max_length=1 << 20, description="the stack document (YAML)")


class FlagsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flags: dict[str, FlagValue | None] = Field(
        description=f"KEY: VALUE to set, KEY: null to remove; a stack holds at most {MAX_FLAGS}", max_length=MAX_FLAGS
    )


class ReadonlyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool = Field(strict=True)


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layer: NameRef
    batch: int = Field(1, ge=1, le=500, description="instances deployed at once")


def _caller_of(tenant: str) -> Caller:
    return Caller(tenant, "admin" if tenant == ADMIN_TENANT else "member")


def _module(kind: str) -> Any:
    name, section = _OPTIONAL[kind]
    try:
        return importlib.import_module(name)
    except ImportError:
        raise BadRequest(f"{section}: not supported yet by this cloud ({kind} is not installed)") from None


def _zones(cloud: Cloud) -> list[str]:
    return sorted({h.zone or cloud.config.zone for h in cloud.store.cached(HOST).list(SYSTEM_TENANT)})


def _owned(cloud: Cloud, stack: Resource | None) -> list[Resource]:
    return cloud.store.list(owner=stack.id) if stack is not None else []


def _find(cloud: Cloud, tenant: str, name: str) -> Resource | None:
    found = cloud.store.list(KIND, tenant=tenant, name=name)
    return found[0] if found else None


def _check(cloud: Cloud, caller: Caller, doc: StackDoc, stack: Resource | None, actions: list[Action]) -> None:
    """Refuses a document whose names are taken by records this stack does not own, that names an image the
    caller cannot see, or that needs a kind this cloud lacks."""
    tenant = caller.tenant
    for kind, (_, section) in _OPTIONAL.items():
        if getattr(doc, section):
            _module(kind)
    for key, layer in doc.layers.items():
        if isinstance(layer.image, str):
            try:
                images.get_image(cloud, caller, layer.image)
            except NotFound as exc:
                raise NotFound(f"layers.{key}.image: {exc.message}") from None
    mine = stack.id if stack is not None else None
    by_kind: dict[str, set[str]] = {}
    for a in actions:
        if a.op == "create" and a.id is None:
            by_kind.setdefault(a.kind, set()).add(a.name)
    taken = []
    for kind, names in by_kind.items():
        for res in cloud.store.list(kind, tenant=tenant):
            if res.name in names and res.owner != mine:
                whose = res.labels.get(STACK_LABEL)
                taken.append(f"{kind.lower()} {res.name} ({f'of stack {whose}' if whose else 'not in a stack'})")
    if taken:
        raise Conflict(
            f"stack {doc.name}: names already taken: {', '.join(sorted(taken))}; rename the layer or key, or delete them"
        )


def _plan_of(cloud: Cloud, tenant: str, doc: StackDoc) -> tuple[Resource | None, list[Action]]:
    stack = _find(cloud, tenant, doc.name)
    if stack is not None and (stack.deleting or StackSpec.of(stack).delete):
        raise Conflict(f"stack {doc.name} is being deleted; apply again once it is gone")
    pin = stack.labels.get(DR_ZONE_LABEL) if stack is not None else None
    return stack, plan(desired(doc, _zones(cloud), pin), _owned(cloud, stack))


def _plan_view(doc: StackDoc, stack: Resource | None, actions: list[Action]) -> dict[str, Any]:
    summary = {op: 0 for op in ("create", "update", "replace", "delete", "unchanged")}
    for a in actions:
        summary[a.op] += 1
    fields = [] if stack is None else _diff(StackSpec.of(stack).document, doc.model_dump(mode="json"))
    stack_op = "create" if stack is None else ("update" if fields else "unchanged")
    changed = [a.view() for a in actions if a.op != "unchanged"]
    return {"stack": doc.name, "stack_op": stack_op, "stack_fields": fields, "actions": changed, "summary": summary}


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    """The paths where two documents differ (layers.web.hooks.setup), at most 20."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return out[:20]
    return [] if old == new else [path or "(document)"]


def plan_stack(cloud: Cloud, caller: Caller, text: str) -> dict[str, Any]:
    doc = parse_stack(text)
    stack, actions = _plan_of(cloud, caller.tenant, doc)
    _check(cloud, caller, doc, stack, actions)
    return _plan_view(doc, stack, actions)


def apply_stack(cloud: Cloud, caller: Caller, text: str) -> dict[str, Any]:
    """Stores the document; the reconciler makes it so. Applying the same document again writes nothing."""
    doc = parse_stack(text)
    stack, actions = _plan_of(cloud, caller.tenant, doc)
    _check(cloud, caller, doc, stack, actions)
    view = _plan_view(doc, stack, actions)
    document = doc.model_dump(mode="json")
    if stack is None:
        spec = StackSpec(document=document, source=text, flags=dict(doc.flags))
        stack = Resource(
            kind=KIND, tenant=caller.tenant, name=doc.name, spec=spec.dump(), finalizers=[FINALIZER], zone=doc.zone
        )
        cloud.store.create(
            stack,
            created=f"stack {doc.name} applied: {_summary(view)}",
            guard=quota.guard(caller.tenant, {"stacks": 1}),
        )
    elif view["stack_op"] == "update":
        spec = StackSpec.of(stack)
        spec.flags = {**spec.flags, **doc.flags}
        if len(spec.flags) > MAX_FLAGS:
            raise BadRequest(
                f"stack {doc.name} would have {len(spec.flags)} flags (its own and those set with 'stack flag'), "
                f"the most is {MAX_FLAGS}; remove some first"
            )
        spec.document, spec.source = document, text
        stack = cloud.store.update_spec(stack.id, spec.dump())
        cloud.store.add_event(stack, "Applied", f"stack {doc.name} applied: {_summary(view)}")
    return {**view, "stack_view": stack_view(stack)}


def _summary(view: dict[str, Any]) -> str:
    return ", ".join(f"{n} to {op}" for op, n in view["summary"].items() if n and op != "unchanged") or "no changes"


def delete_stack(cloud: Cloud, caller: Caller, name: str) -> Resource:
    """Deletes the stack and everything it made (core/collect.py), the stack record once the last of them is gone.
    Its in-service instances' shutdown hooks run first, in the background (StackReconciler): until they are done
    the stack shows as deleting and cannot be applied again."""
    stack = cloud.store.get(KIND, caller.tenant, name)
    spec = StackSpec.of(stack)
    if stack.deleting or spec.delete:
        return stack
    if not _shutdown_jobs(cloud, stack):
        return _mark_deleted(cloud, stack)
    spec.delete = True
    stack = cloud.store.update_spec(stack.id, spec.dump())
    cloud.store.add_event(stack, "ShuttingDown", f"stack {name}: running shutdown hooks, then deleting it")
    return stack


def _mark_deleted(cloud: Cloud, stack: Resource) -> Resource:
    stack = cloud.store.mark_deleted(stack.id)
    cloud.store.add_event(stack, "Deleting", f"stack {stack.name} and everything it made marked for deletion")
    DEPLOYS.forget(stack.id)
    return stack


def _shutdown_jobs(cloud: Cloud, stack: Resource) -> list[tuple[Resource, str, str, dict[str, str]]]:
    """(instance, event, script, env) of the shutdown hook of each in-service instance of the stack."""
    try:
        doc = StackDoc.model_validate(StackSpec.of(stack).document)
    except ValidationError:  # a document stored before a check existed: it cannot say what to run
        return []
    status = StackStatus.of(stack)
    jobs = []
    for inst in cloud.store.list(INSTANCE, tenant=stack.tenant, owner=stack.id):
        member = status.members.get(inst.name)
        script = doc.layers[member.layer].hooks.shutdown if member and member.layer in doc.layers else None
        if member and member.state == IN_SERVICE and script and not inst.deleting:
            env = hooks.hook_env(doc.name, member.layer, inst.name, "shutdown", status.membership)
            jobs.append((inst, "shutdown", script, env))
    return jobs


def set_flags(cloud: Cloud, caller: Caller, name: str, flags: dict[str, str | None]) -> Resource:
    stack = cloud.store.get(KIND, caller.tenant, name)
    for key in flags:
        check_flag_key(key)
    spec = StackSpec.of(stack)
    new = {k: v for k, v in {**spec.flags, **flags}.items() if v is not None}
    if len(new) > MAX_FLAGS:
        raise BadRequest(
            f"stack {name} would have {len(new)} flags, the most is {MAX_FLAGS}; remove some (KEY: null) first"
        )
    if new != spec.flags:
        message = _flags_message(spec.flags, new, flags)
        spec.flags = new
        stack = cloud.store.update_spec(stack.id, spec.dump())
        cloud.store.add_event(stack, "FlagsChanged", message)
    return stack


def _flags_message(old: dict[str, str], new: dict[str, str], asked: dict[str, str | None]) -> str:
    """Which keys changed, not their values (up to 256 characters each): the event stays one short line."""
    changed = sorted(k for k in asked if old.get(k) != new.get(k))
    shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    return f"flags changed: {shown}"[:200]


def set_readonly(cloud: Cloud, caller: Caller, name: str, on: bool) -> Resource:
    """Browsing-only mode: the stack's LBs serve GET and HEAD only, and the flag readonly=true tells its apps."""
    stack = cloud.store.get(KIND, caller.tenant, name)
    lbs = cloud.store.list("LoadBalancer", tenant=stack.tenant, owner=stack.id) if "LoadBalancer" in _kinds() else []
    if lbs:
        lb_mod = _module("LoadBalancer")
        for lb in lbs:
            lb_mod.set_readonly(cloud, caller, lb.name, on)
    stack = set_flags(cloud, caller, name, {"readonly": "true" if on else None})
    spec = StackSpec.of(stack)
    if spec.readonly != on:
        spec.readonly = on
        stack = cloud.store.update_spec(stack.id, spec.dump())
    return stack


def _kinds() -> set[str]:
    return {k.name for k in kinds()}


def _lbs_of_layer(cloud: Cloud, stack: Resource, layer: str) -> list[Resource]:
    if "LoadBalancer" not in _kinds():
        return []
    return [
        lb
        for lb in cloud.store.list("LoadBalancer", tenant=stack.tenant, owner=stack.id)
        if lb.spec.get("layer") == f"{stack.name}/{layer}" and not lb.deleting
    ]


def _drain(cloud: Cloud, stack: Resource, layer: str, member: str, drained: bool) -> None:
    lbs = _lbs_of_layer(cloud, stack, layer)
    if lbs:
        lb_mod = _module("LoadBalancer")
        for lb in lbs:
            lb_mod.set_member_drained(cloud, _caller_of(stack.tenant), lb.name, member, drained)


def _member_states(cloud: Cloud, stack: Resource, layer: str, member: str) -> list[dict[str, Any] | None]:
    """What each LB of the layer last reported of `member` (None: not among its members)."""
    out = []
    for lb in _lbs_of_layer(cloud, stack, layer):
        fresh = cloud.store.get_by_id(lb.id) or lb
        out.append(next((m for m in fresh.status.get("members", []) if m.get("name") == member), None))
    return out


def _healthy_in_lbs(cloud: Cloud, stack: Resource, layer: str, member: str) -> bool:
    """Whether every LB of the layer reports `member` up and taking requests (no LB: true)."""
    return all(
        m is not None and m.get("state") == "up" and m.get("weight", 0) > 0
        for m in _member_states(cloud, stack, layer, member)
    )


def _wait_drained(cloud: Cloud, stack: Resource, layer: str, member: str, wait: float = DRAIN_WAIT) -> None:
    """Until every LB of the layer gives `member` no new requests (weight 0, or not a member), at most `wait`
    seconds: an agent reports a drain as soon as its HAProxy took it."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if all(m is None or m.get("weight", 0) == 0 for m in _member_states(cloud, stack, layer, member)):
            return
        time.sleep(0.2)
    message = f"the load balancers of layer {layer} did not confirm {member} drained within {wait:.0f} s; went on"
    cloud.store.add_event(stack, "DrainUnconfirmed", message, "Warning")


def _deploy_targets(cloud: Cloud, caller: Caller, name: str, layer: str) -> tuple[Resource, StackDoc, list[Resource]]:
    """The stack, its document and the layer's instances a deploy goes to (in name order); 404/409 otherwise."""
    stack = cloud.store.get(KIND, caller.tenant, name)
    if stack.deleting or StackSpec.of(stack).delete:
        raise Conflict(f"stack {name} is being deleted")
    try:
        doc = StackDoc.model_validate(StackSpec.of(stack).document)
    except ValidationError as exc:
        raise Conflict(f"stack {name}: its document is not valid any more; apply a fixed one: {_brief(exc)}") from None
    if layer not in doc.layers:
        raise NotFound(f"stack {name} has no layer {layer!r}; its layers: {', '.join(doc.layers) or 'none'}")
    targets = sorted(
        (i for i in cloud.store.list(INSTANCE, tenant=stack.tenant, owner=stack.id) if not i.deleting),
        key=lambda i: (len(i.name), i.name),
    )
    # a member a failed deploy left out of its LBs is deployed again
    serving = (IN_SERVICE, "deploying")
    targets = [i for i in targets if i.labels.get(LAYER_LABEL) == layer and i.labels.get(LIFECYCLE_LABEL) in serving]
    if not targets:
        raise Conflict(f"layer {layer} of stack {name} has no instance in service to deploy to")
    return stack, doc, targets


def start_deploy(cloud: Cloud, caller: Caller, name: str, layer: str, batch: int) -> dict[str, Any]:
    """Starts a rolling deploy in the background (stacks/deploys.py): 409 while one of this stack runs, 429
    beyond the tenant's or the cloud's limit. Answers its state; deploy_state() follows it."""
    stack, _, _ = _deploy_targets(cloud, caller, name, layer)
    run = partial(rolling_deploy, cloud, caller, name, layer, batch)
    return DEPLOYS.start(stack.id, stack.tenant, {"stack": name, "layer": layer, "batch": batch}, run)


def deploy_state(cloud: Cloud, caller: Caller, name: str) -> dict[str, Any]:
    """The running or last rolling deploy of the stack: state running, succeeded or failed, with each hook run."""
    stack = cloud.store.get(KIND, caller.tenant, name)
    found = DEPLOYS.state(stack.id)
    if found is None:
        raise NotFound(
            f"stack {name} has had no deploy since cloudletd started; start one with 'cloudlet stack deploy'"
        )
    return found


def rolling_deploy(
    cloud: Cloud, caller: Caller, name: str, layer: str, batch: int, wait: float = 120.0
) -> dict[str, Any]:
    """Runs `deploy` on the layer's in-service instances a batch at a time: each taken out of its LBs first
    (undeploy runs then), put back once deploy succeeded and the LBs see it healthy again."""
    stack, doc, targets = _deploy_targets(cloud, caller, name, layer)
    status = StackStatus.of(stack)
    script_deploy, script_undeploy = doc.layers[layer].hooks.deploy, doc.layers[layer].hooks.undeploy
    runs: list[hooks.HookRun] = []
    for start in range(0, len(targets), batch):
        group = targets[start : start + batch]
        for inst in group:
            _drain(cloud, stack, layer, inst.name, True)
            cloud.store.edit_labels(inst.id, {LIFECYCLE_LABEL: "deploying"})
        for inst in group:
            _wait_drained(cloud, stack, layer, inst.name)
        env = {i.name: hooks.hook_env(name, layer, i.name, "deploy", status.membership) for i in group}
        if script_undeploy:
            runs += hooks.run_many(cloud, stack.tenant, [(i, "undeploy", script_undeploy, env[i.name]) for i in group])
        deploys = [(i, "deploy", script_deploy, env[i.name]) for i in group] if script_deploy else []
        done = hooks.run_many(cloud, stack.tenant, deploys)
        runs += done
        failed = [r for r in done if not r.ok]
        for inst in group:
            if any(r.instance == inst.name for r in failed):
                continue  # stays out of its LB: serving the old code half-deployed would be worse
            cloud.store.edit_labels(inst.id, {LIFECYCLE_LABEL: IN_SERVICE})
            _drain(cloud, stack, layer, inst.name, False)
            deadline = time.monotonic() + wait
            while not _healthy_in_lbs(cloud, stack, layer, inst.name):
                if time.monotonic() > deadline:
                    raise Conflict(f"{inst.name} did not become healthy in its load balancer within {wait:.0f} s")
                time.sleep(0.2)
        if failed:
            _record_runs(cloud, stack, runs)
            raise Conflict(
                f"deploy failed on {', '.join(r.instance for r in failed)}: {failed[0].output.strip()[-300:]}"
            )
    _record_runs(cloud, stack, runs)
    return {"stack": name, "layer": layer, "runs": [r.__dict__ for r in runs]}


def _record_runs(cloud: Cloud, stack: Resource, runs: list[hooks.HookRun]) -> None:
    for r in runs:
        reason = "HookSucceeded" if r.ok else "HookFailed"
        tail = "" if r.ok else f": exit {r.exit_code}: {r.output.strip()[-200:]}"
        cloud.store.add_event(stack, reason, f"{r.event} on {r.instance}{tail}", "Normal" if r.ok else "Warning")


def stack_view(res: Resource) -> dict[str, Any]:
    spec, st = StackSpec.of(res), StackStatus.of(res)
    return record_view(
        res,
        state="deleting" if res.deleting or spec.delete else res.phase,
        layers={k: v.get("count", 1) for k, v in spec.document.get("layers", {}).items()},
        flags=spec.flags,
        readonly=spec.readonly,
        members={k: v.dump() for k, v in st.members.items()},
        membership=st.membership,
        progress=st.progress,
        message=st.message,
        generation=res.generation,
        observed_generation=res.observed_generation,
    )


class StackReconciler(KindReconciler):
    """Control plane: makes what the stack's document asks for, removes what it no longer does (instances: the
    newest first, each drained from its LBs and shut down first), and runs the lifecycle events."""

    kind = KIND

    def __init__(self, cloud: Cloud) -> None:
        super().__init__(cloud.store)
        self.cloud = cloud
        owned = lambda r: [r.owner] if r.owner and STACK_LABEL in r.labels else []
        self.watches = {INSTANCE: owned, VOLUME: owned, NETWORK: owned}

    def cleanup(self, res: Resource) -> None:
        POOL.drop(POOL.keys(lambda k: isinstance(k, tuple) and k[0] == res.id))
        left = [r for r in self.cloud.store.list(owner=res.id)]
        if left:  # the collector is removing them; the stack goes last so `stack show` tells how far it got
            raise Conflict(f"stack {res.name} still has {len(left)} resources being removed")

    def converge(self, res: Resource) -> Result:
        cloud = self.cloud
        spec = StackSpec.of(res)
        touched: set[HookKey] = set()  # the hook runs this pass looked at; others of this stack are stale
        if spec.delete:
            return self._shut_down(res, touched)
        try:
            doc = StackDoc.model_validate(spec.document)
        except ValidationError as exc:  # stored before a check existed: say so, and wait for a fixed document
            return self._failed(res, f"the stack document is not valid any more; apply a fixed one: {_brief(exc)}")
        caller = _caller_of(res.tenant)
        status = StackStatus.of(res)
        owned = _owned(cloud, res)
        actions = plan(desired(doc, _zones(cloud), res.labels.get(DR_ZONE_LABEL)), owned)
        problems: list[str] = []
        for layer in doc.layers.values():
            if isinstance(layer.image, ImageRecipe):
                build = images.ImageBuild(name=recipe_image(layer.image), packages=layer.image.packages)
                # a failed build is retried by a changed document or by hand, not on every pass
                image = images.request_build(
                    cloud, caller, build, retry_failed=res.observed_generation != res.generation
                )
                problem = (
                    f"image {image.name} failed to build ({ImageStatus.of(image).message}); to retry: cloudlet image "
                    f"build {image.name} --packages {','.join(build.packages)}"
                )
                if image.phase == "failed" and problem not in problems:
                    problems.append(problem)
        busy = False
        for a in actions:
            try:
                busy |= self._step(res, doc, caller, a, status, touched)
            except CloudletError as exc:
                problems.append(f"{a.op} {a.kind.lower()} {a.name}: {exc.message}")
            except ValidationError as exc:  # a value the kind's own model refuses: an error to show, not a retry
                problems.append(f"{a.op} {a.kind.lower()} {a.name}: invalid: {_brief(exc)}")
        self._attach_volumes(res, caller, doc)
        problems += self._complete_groups_and_eips(res, caller, doc)
        owned = _owned(cloud, res)
        busy |= self._lifecycle(res, doc, status, owned, touched)
        POOL.drop(POOL.keys(lambda k: isinstance(k, tuple) and k[0] == res.id and k not in touched))
        status.progress = [_progress(r) for r in sorted(owned, key=_making_order)]
        status.message = "; ".join(problems)
        ready = not busy and not problems and all(p["state"] in _READY_STATES for p in status.progress)
        phase = "ready" if ready else ("error" if problems else "applying")
        new = status.dump()
        if new != res.status or res.phase != phase or res.observed_generation != res.generation:
            if problems and problems != [p for p in StackStatus.of(res).message.split("; ") if p]:
                self.records.add_event(res, "ApplyFailed", status.message, "Warning")
            self.records.update_status(res.id, status=new, phase=phase, observed_generation=res.generation)
        return Result(requeue_after=None if ready else POLL)

    def _failed(self, res: Resource, message: str) -> Result:
        if res.phase != "error" or StackStatus.of(res).message != message:
            self.records.add_event(res, "ApplyFailed", message, "Warning")
            status = StackStatus.of(res)
            status.message = message
            self.records.update_status(res.id, status=status.dump(), phase="error", observed_generation=res.generation)
        return Result()

    def _shut_down(self, res: Resource, touched: set[HookKey]) -> Result:
        """Deletion was asked for: the shutdown hooks on the hook pool, then the record marked deleted."""
        jobs = _shutdown_jobs(self.cloud, res)
        runs, waiting = self._hooks(res, jobs, {job[0].name: "delete" for job in jobs}, touched)
        if waiting:
            return Result(requeue_after=POLL)
        _record_runs(self.cloud, res, list(runs.values()))
        POOL.drop(list(touched))
        _mark_deleted(self.cloud, res)
        return Result()

    def _hooks(
        self,
        res: Resource,
        jobs: list[tuple[Resource, str, str, dict[str, str]]],
        tokens: dict[str, str],
        touched: set[HookKey],
    ) -> tuple[dict[str, hooks.HookRun], set[str]]:
        """Starts each (instance, event, script, env) job on the hook pool unless it already ran for the instance's
        token (the boot, the membership...): never here, on a reconcile worker every tenant shares. Answers the
        runs that finished, by instance name, and the names of those still running; a finished run wakes the
        stack."""
        wake = partial(self.cloud.manager.enqueue, KIND, res.id)
        started: dict[str, Future[Any]] = {}
        new: list[Future[Any]] = []
        for inst, event, script, env in jobs:
            key = (res.id, inst.id, event, tokens[inst.name])
            touched.add(key)
            job = partial(hooks.run_hook, self.cloud, inst, event, script, env)
            started[inst.name], fresh = POOL.poll(key, res.tenant, job, wake)
            if fresh:
                new.append(started[inst.name])
        POOL.settle(new, GRACE)  # only for runs started now: a pass looking again at a slow one does not wait
        done = {name: f.result() for name, f in started.items() if f.done()}
        return done, set(started) - set(done)

    def _step(
        self, res: Resource, doc: StackDoc, caller: Caller, a: Action, status: StackStatus, touched: set[HookKey]
    ) -> bool:
        """Takes one action; True while it waits for something (an old record still going)."""
        cloud = self.cloud
        if a.op == "unchanged":
            return False
        if a.op == "create":
            if a.id is not None:
                return True  # the replaced one is still being removed
            assert a.desired is not None
            self._make(res, doc, caller, a)
            return True
        if a.op == "update":
            current = cloud.store.get_by_id(a.id or "")
            if current is not None and a.desired is not None:
                cloud.store.update_spec(current.id, {**current.spec, **a.desired.fields})
            return True
        current = cloud.store.get_by_id(a.id or "")
        if current is None or current.deleting:
            return True
        if current.kind == INSTANCE and not self._leave(res, doc, current, status, touched):
            return True  # its shutdown hook is running
        if a.op == "replace":
            cloud.store.add_event(res, "Replacing", f"{a.kind.lower()} {a.name}: {', '.join(a.forced_by)} changed")
        if current.kind in (INSTANCE, VOLUME):
            volumes.delete_resource(cloud, current, cascade=False)
        elif current.kind == NETWORK:
            networks.delete_network(cloud, caller, current.name)
        else:
            cloud.store.mark_deleted(current.id)
        return True

    def _make(self, res: Resource, doc: StackDoc, caller: Caller, a: Action) -> None:
        cloud, d = self.cloud, a.desired
        assert d is not None
        labels = {STACK_LABEL: res.name}
        if d.kind == NETWORK:
            networks.create_network(cloud, caller, d.name, d.fields.get("subnet"), labels, owner=res.id)
        elif d.kind == VOLUME:
            req = volumes.VolumeCreate.model_validate({**d.fields, "name": d.name, "labels": labels})
            volumes.create_volume(cloud, caller, req, owner=res.id)
        elif d.kind == INSTANCE:
            layer = d.params["layer"]
            body: dict[str, Any] = {**d.fields, "name": d.name}
            body["labels"] = {**labels, LAYER_LABEL: layer, LIFECYCLE_LABEL: "setup"}
            # a layer is a placement group: spread over zones then hosts, kept apart as its placement says
            body["group"] = f"{res.name}/{layer}"
            body["anti_affinity"] = (doc.layers[layer].placement or doc.placement).anti_affinity
            if body.get("command") is None:
                body.pop("command")
            if d.params["secgroups"]:
                _module("SecurityGroup")
                body["secgroups"] = d.params["secgroups"]
            # out of its LBs until setup and deploy succeeded
            _drain(cloud, res, layer, d.name, True)
            instances.launch(cloud, caller, instances.InstanceCreate.model_validate(body), owner=res.id)
        elif d.kind == "SecurityGroup":
            sg = _module(d.kind)
            # a rule naming a group of this stack made later is added once that group exists
            made = {g.name for g in cloud.store.list("SecurityGroup", tenant=res.tenant)} | {d.name}
            ready = [r for r in d.params["rules"] if r["source_group"] in (None, *made)]
            req = sg.SecGroupCreate(name=d.name, labels=labels, description=f"stack {res.name}", rules=ready)
            sg.create_secgroup(cloud, caller, req, owner=res.id)
        elif d.kind == "ElasticIP":
            _module(d.kind).allocate_eip(cloud, caller, d.name, labels, owner=res.id)
        else:
            lb = _module(d.kind)
            req = lb.LoadBalancerCreate.model_validate({**d.fields, "name": d.name, "labels": labels})
            made = lb.create_lb(cloud, caller, req, owner=res.id)
            # members still in setup join it drained (an LB added to a stack already running)
            layer = d.fields["layer"].split("/", 1)[1]
            for inst in cloud.store.list(INSTANCE, tenant=res.tenant, owner=res.id):
                if inst.labels.get(LAYER_LABEL) == layer and inst.labels.get(LIFECYCLE_LABEL) != IN_SERVICE:
                    lb.set_member_drained(cloud, caller, made.name, inst.name, True)

    def _attach_volumes(self, res: Resource, caller: Caller, doc: StackDoc) -> None:
        paths = {}
        for lname, layer in doc.layers.items():
            for n in range(1, layer.count + 1):
                for vdef in layer.volumes:
                    paths[f"{lname}-{n}-{vdef.name}"] = (f"{lname}-{n}", vdef.path)
        for vol in self.cloud.store.list(VOLUME, tenant=res.tenant, owner=res.id):
            if vol.name not in paths or vol.deleting or vol.phase != "ready" or VolumeSpec.of(vol).attachment:
                continue
            inst_name, path = paths[vol.name]
            try:
                volumes.attach_volume(
                    self.cloud, caller, vol.name, volumes.AttachRequest(instance=inst_name, path=path)
                )
            except (NotFound, Conflict):
                continue  # its instance is not there yet (or going): the next pass attaches it

    def _complete_groups_and_eips(self, res: Resource, caller: Caller, doc: StackDoc) -> list[str]:
        """The rules a group could not have at its creation (their source group came later), and each EIP
        associated with its holder once that exists. Returns what failed."""
        problems: list[str] = []
        wanted = {d.name: d for d in desired(doc) if d.kind in ("SecurityGroup", "ElasticIP")}
        if not wanted:
            return problems
        for rec in self.cloud.store.list(owner=res.id):
            d = wanted.get(rec.name)
            if d is None or rec.deleting or d.kind != rec.kind:
                continue
            try:
                if d.kind == "SecurityGroup":
                    sg = _module(d.kind)
                    have = {r["id"] for r in rec.spec.get("rules", [])}
                    for r in d.params["rules"]:
                        rid_source = None
                        if r["source_group"] is not None:
                            found = self.cloud.store.list("SecurityGroup", tenant=res.tenant, name=r["source_group"])
                            rid_source = found[0].id if found else None
                            if rid_source is None:
                                continue
                        if sg.rule_id(r["protocol"], r["ports"], r["cidr"], rid_source) not in have:
                            sg.add_rule(self.cloud, caller, rec.name, sg.RuleCreate.model_validate(r))
                else:
                    target = rec.spec.get("target") or {}
                    holder, kind = d.params["holder"], d.params["holder_kind"]
                    moved = target.get("name") != holder or target.get("kind") != kind
                    if moved and self.cloud.store.list(kind, tenant=res.tenant, name=holder):
                        _module(d.kind).associate_eip(self.cloud, caller, rec.name, kind, holder)
            except CloudletError as exc:
                problems.append(f"{d.kind.lower()} {d.name}: {exc.message}")
        return problems

    def _leave(self, res: Resource, doc: StackDoc, inst: Resource, status: StackStatus, touched: set[HookKey]) -> bool:
        """Takes an instance out of service before it is removed: out of its LBs, then the shutdown hook (on the
        hook pool, after the LBs confirm the drain). True once it may go."""
        member = status.members.get(inst.name)
        layer = inst.labels.get(LAYER_LABEL, "")
        if member is None or member.state not in (IN_SERVICE, "leaving"):
            return True
        if member.state == IN_SERVICE:
            member.state = "leaving"
            self.cloud.store.edit_labels(inst.id, {LIFECYCLE_LABEL: "leaving"})
            _drain(self.cloud, res, layer, inst.name, True)
        script = doc.layers[layer].hooks.shutdown if layer in doc.layers else None
        env = hooks.hook_env(res.name, layer, inst.name, "shutdown", status.membership)
        key = (res.id, inst.id, "shutdown", "leave")
        touched.add(key)
        job = partial(_drained_then, self.cloud, res, layer, inst, script, env)
        fut, fresh = POOL.poll(key, res.tenant, job, partial(self.cloud.manager.enqueue, KIND, res.id))
        POOL.settle([fut] if fresh else [], GRACE)
        if not fut.done():
            return False
        run = fut.result()
        _record_runs(self.cloud, res, [run] if run is not None else [])
        POOL.drop([key])
        return True

    def _run_event(
        self,
        res: Resource,
        doc: StackDoc,
        event: str,
        targets: list[Resource],
        membership: dict[str, Any],
        tokens: dict[str, str],
        touched: set[HookKey],
    ) -> tuple[dict[str, hooks.HookRun], set[str]]:
        """Starts the hook of `event` on each target whose layer has one (_hooks); the finished runs by instance
        name, and the instances whose run has not finished."""
        jobs = []
        for inst in targets:
            layer = inst.labels.get(LAYER_LABEL, "")
            script = getattr(doc.layers[layer].hooks, event) if layer in doc.layers else None
            if script:
                jobs.append((inst, event, script, hooks.hook_env(res.name, layer, inst.name, event, membership)))
        return self._hooks(res, jobs, tokens, touched)

    def _lifecycle(
        self, res: Resource, doc: StackDoc, status: StackStatus, owned: list[Resource], touched: set[HookKey]
    ) -> bool:
        """setup (then deploy) on each instance after it boots; configure on every in-service instance whenever
        membership changes. True while some instance is still on its way."""
        cloud = self.cloud
        live = {i.name: i for i in owned if i.kind == INSTANCE and not i.deleting}
        status.members = {n: m for n, m in status.members.items() if n in live}
        # a zone-free name keeps pointing where failover or DR put it while that instance lives
        ids = {i.id for i in live.values()}
        status.aliases = {n: status.aliases[n] if status.aliases.get(n) in ids else i.id for n, i in live.items()}
        booting: list[Resource] = []
        busy = False
        for name, inst in live.items():
            layer = inst.labels.get(LAYER_LABEL, "")
            ist = InstanceStatus.of(inst)
            member = status.members.get(name)
            if member is None or member.id != inst.id:
                member = status.members[name] = Member(layer=layer, id=inst.id)
            member.ip = ist.ip
            running = ist.state == "running" and ist.ip is not None
            if not running:
                if member.state == IN_SERVICE:
                    member.state = "down"
                busy |= member.state != "failed"
            elif member.started_at != ist.started_at:  # a boot setup has not run after (a failed one stays failed)
                booting.append(inst)
        membership = _membership(doc, status)
        # keyed by the boot they follow: setup (then deploy) runs once per boot, whatever passes it takes
        boot = {i.name: f"boot {InstanceStatus.of(i).started_at}" for i in booting}
        setup_runs, hooked = self._run_event(res, doc, "setup", booting, membership, boot, touched)
        set_up = [i for i in booting if i.name not in hooked and (i.name not in setup_runs or setup_runs[i.name].ok)]
        deploy_runs, deploying = self._run_event(res, doc, "deploy", set_up, membership, boot, touched)
        hooked |= deploying
        for inst in booting:
            if inst.name in hooked:
                busy = True
                continue
            member = status.members[inst.name]
            ran = [r for r in (setup_runs.get(inst.name), deploy_runs.get(inst.name)) if r]
            _record_runs(cloud, res, ran)
            POOL.drop([(res.id, inst.id, event, boot[inst.name]) for event in ("setup", "deploy")])
            failed = next((r for r in ran if not r.ok), None)
            if failed is not None and failed.exit_code == hooks.UNREACHED:
                busy = True  # its agent did not answer, or it stopped meanwhile: not the hook's failure; again later
                continue
            member.started_at = InstanceStatus.of(inst).started_at
            if failed is not None:
                member.state = "failed"
                member.message = f"{failed.event} exited {failed.exit_code}: {failed.output.strip()[-200:]}"
            else:
                member.state, member.message = IN_SERVICE, ""
        for name, inst in live.items():
            member = status.members[name]
            label = member.state if member.state != "booting" else "setup"
            if inst.labels.get(LIFECYCLE_LABEL) != label and inst.labels.get(LIFECYCLE_LABEL) != "deploying":
                cloud.store.edit_labels(inst.id, {LIFECYCLE_LABEL: label})
                # out of its LBs whenever it leaves service (down: after a restart it runs setup again first)
                _drain(cloud, res, member.layer, name, member.state != IN_SERVICE)
        status.membership = _membership(doc, status)
        eips = {e.name: e.spec.get("target") for e in cloud.store.list("ElasticIP", tenant=res.tenant, owner=res.id)}
        lbs = [lb.id for lb in _all_lbs(cloud, res)]
        fingerprint = json.dumps({"members": _in_service(status.membership), "lbs": lbs, "eips": eips}, sort_keys=True)
        if fingerprint != status.configured:
            serving = [live[n] for n, m in status.members.items() if m.state == IN_SERVICE]
            token = "membership " + hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
            tokens = {i.name: token for i in serving}
            runs, waiting = self._run_event(res, doc, "configure", serving, status.membership, tokens, touched)
            if waiting:
                return True
            _record_runs(cloud, res, list(runs.values()))
            POOL.drop([k for k in touched if k[2] == "configure"])
            status.configured = fingerprint
        return busy


def _drained_then(
    cloud: Cloud, stack: Resource, layer: str, inst: Resource, script: str | None, env: dict[str, str]
) -> hooks.HookRun | None:
    """Waits until a leaving member's LBs give it no new requests (or DRAIN_WAIT passed), then runs its shutdown
    hook if it has one: on the hook pool, as the wait may take seconds."""
    _wait_drained(cloud, stack, layer, inst.name)
    return hooks.run_hook(cloud, inst, "shutdown", script, env) if script else None


def _brief(exc: ValidationError) -> str:
    """A pydantic error in one short line: where and what, of the first problems."""
    shown = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:3]]
    return "; ".join(shown)[:300]


def _all_lbs(cloud: Cloud, stack: Resource) -> list[Resource]:
    if "LoadBalancer" not in _kinds():
        return []
    return [lb for lb in cloud.store.list("LoadBalancer", tenant=stack.tenant, owner=stack.id) if not lb.deleting]


def _membership(doc: StackDoc, status: StackStatus) -> dict[str, list[dict[str, Any]]]:
    zone = doc.zone
    out: dict[str, list[dict[str, Any]]] = {layer: [] for layer in doc.layers}
    for name in sorted(status.members, key=lambda n: (len(n), n)):
        m = status.members[name]
        dns = f"{name}.{doc.name}.cloudlet" if zone is None else f"{name}.{doc.name}.{zone}.cloudlet"
        out.setdefault(m.layer, []).append({"name": name, "ip": m.ip, "dns": dns, "state": m.state})
    return out


def _in_service(membership: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {k: [f"{m['name']}={m['ip']}" for m in v if m["state"] == IN_SERVICE] for k, v in membership.items()}


_READY_STATES = {"ready", "running", "up", "allocated", "associated"}


def _progress(r: Resource) -> dict[str, Any]:
    state = "deleting" if r.deleting else r.phase
    if r.kind == INSTANCE:
        lifecycle = r.labels.get(LIFECYCLE_LABEL)
        state = (
            "deleting"
            if r.deleting
            else (InstanceStatus.of(r).state if lifecycle == IN_SERVICE else lifecycle or r.phase)
        )
    return {"kind": r.kind, "name": r.name, "state": state}


def _making_order(r: Resource) -> tuple[int, float]:
    return (KIND_ORDER.index(r.kind) if r.kind in KIND_ORDER else len(KIND_ORDER), r.created_at)
