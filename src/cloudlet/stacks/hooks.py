"""Lifecycle hooks (OpsWorks' setup, configure, deploy, undeploy, shutdown) run inside a stack's instances through
their host agent's exec, each with the stack's current membership in its environment."""

from __future__ import annotations

__all__ = ["HookRun", "hook_env", "run_hook", "run_many", "TIMEOUT", "UNREACHED"]

import json
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from cloudlet.core.context import Cloud
from cloudlet.core.errors import CloudletError
from cloudlet.core.records import Resource
from cloudlet.stacks.hookpool import POOL

log = logging.getLogger("cloudlet.stacks")
TIMEOUT = 600.0  # a hook may install packages; the cloud's exec cap still applies
ENV_MAX = 64 * 1024  # bytes of CLOUDLET_MEMBERSHIP; beyond, hooks read /latest/meta-data/stack/membership
UNREACHED = -1  # the exit code of a hook that did not run: the agent did not answer, or the instance is not running


@dataclass(frozen=True)
class HookRun:
    instance: str
    event: str
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def hook_env(
    stack: str, layer: str, instance: str, event: str, membership: dict[str, list[dict[str, Any]]]
) -> dict[str, str]:
    """What a hook sees: who it is, and every member of the stack (CLOUDLET_LAYER_<LAYER>_IPS per layer, all of it
    as JSON in CLOUDLET_MEMBERSHIP up to ENV_MAX), so a web tier finds its database without a lookup."""
    whole = json.dumps(membership, sort_keys=True, separators=(",", ":"))
    env = {
        "CLOUDLET_STACK": stack,
        "CLOUDLET_LAYER": layer,
        "CLOUDLET_INSTANCE": instance,
        "CLOUDLET_EVENT": event,
        # one argument may not pass the kernel's 128 KiB (MAX_ARG_STRLEN): a larger stack's is in the metadata
        "CLOUDLET_MEMBERSHIP": whole if len(whole) <= ENV_MAX else "",
    }
    for lname, members in membership.items():
        ips = " ".join(m["ip"] for m in members if m.get("ip") and m.get("state") == "in-service")
        env[f"CLOUDLET_LAYER_{lname.upper().replace('-', '_')}_IPS"] = ips
    return env


def run_hook(cloud: Cloud, inst: Resource, event: str, script: str, env: dict[str, str]) -> HookRun:
    """Runs `script` with sh inside `inst`; exit code UNREACHED if it could not be run at all."""
    argv = ["env", *(f"{k}={v}" for k, v in sorted(env.items())), "sh", "-c", script]
    timeout = min(TIMEOUT, cloud.config.exec_max_timeout)
    try:
        if inst.host is None:
            raise CloudletError(f"instance {inst.name} is not placed")
        result = cloud.hosts.agent(inst.host).exec_instance(inst.id, argv, timeout)
    except CloudletError as exc:
        return HookRun(inst.name, event, UNREACHED, exc.message)
    output = (result.get("stdout") or "") + (result.get("stderr") or "")
    return HookRun(inst.name, event, int(result["exit_code"]), output[-2000:])


def run_many(cloud: Cloud, tenant: str, jobs: list[tuple[Resource, str, str, dict[str, str]]]) -> list[HookRun]:
    """(instance, event, script, env) jobs on the hook pool, within the tenant's share; waits for them all and
    answers the results in job order. For a caller with a thread of its own (a rolling deploy), never a
    reconcile worker."""
    futures = [POOL.submit(tenant, partial(run_hook, cloud, *job)) for job in jobs]
    return [f.result() for f in futures]
