"""Faults a host's agent injects into one of its instances, for `cloudlet chaos` (`POST /v1/instances/NAME/chaos`).

Each fault is a real kernel object of the instance's own, and each has its undo:

| fault | what it does | undone by |
|---|---|---|
| kill | SIGKILL of the instance's init (tini): its PID namespace, and every process in it, goes | the restart policy, or `start` |
| pause | the cgroup freezer (`runc pause`) | resume |
| throttle | the cgroup v1 CPU quota: `percent` of one core | unthrottle (back to the spec's CPUs) |
| drop | nft table `inet cl_chaos` in the instance's netns: `numgen random mod 100 < percent` drop, both ways | heal |
| partition | the same table dropping everything but loopback | heal |
| bandwidth | a `tbf` root qdisc on the instance's eth0 (what it sends) | unshape |
| latency | a `netem` root qdisc: on kernels without sch_netem a NotSupported naming the way out | unshape |

Network faults run `nft` and `tc` under `nsenter --net=/proc/<init>/ns/net`: only ever the instance's namespace,
never the agent's (a reused pid would be the agent's own and is refused). They die with the namespace, so a restart
of the instance, a stop or `cloudlet down` leaves nothing behind; the cgroup ones die with the cgroup.
"""

from __future__ import annotations

__all__ = ["FAULTS", "TABLE", "NFT_REMOVE", "FaultRequest", "nft_ruleset", "nft_load", "inject", "inject_fault"]

import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute.drivers.base import InstanceState
from cloudlet.compute.resource import INSTANCE, InstanceSpec
from cloudlet.core.errors import BadRequest, Conflict, DriverError, NotSupported

if TYPE_CHECKING:
    from cloudlet.core.context import Caller, Cloud, HostContext
    from cloudlet.core.records import Resource

FAULTS = (
    "kill",
    "pause",
    "resume",
    "throttle",
    "unthrottle",
    "drop",
    "partition",
    "heal",
    "bandwidth",
    "latency",
    "unshape",
)
Fault = Literal[
    "kill", "pause", "resume", "throttle", "unthrottle", "drop", "partition", "heal", "bandwidth", "latency", "unshape"
]
CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
TABLE = "cl_chaos"
NFT_REMOVE = f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"  # removes the table, there or not
NO_NETEM = (
    "this kernel has no sch_netem (tc: 'Specified qdisc kind is unknown'), so latency cannot be added here; "
    "make the server slow instead with throttle_cpu (cgroup CPU quota) or pause_instance (cgroup freezer)"
)


class FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fault: Fault
    percent: float | None = Field(None, gt=0, le=100, strict=True)  # drop: of packets; throttle: of one core
    rate_kbit: int | None = Field(None, ge=8, le=10_000_000, strict=True)  # bandwidth
    delay_ms: int | None = Field(None, ge=1, le=60_000, strict=True)  # latency

    def need(self, field: str) -> Any:
        value = getattr(self, field)
        if value is None:
            raise BadRequest(f"fault {self.fault} needs {field}")
        return value


def inject(ctx: HostContext, res: Resource, req: FaultRequest) -> dict[str, Any]:
    """Applies (or undoes) one fault to the instance `res` of this host; answers what was done."""
    if not ctx.compute.capabilities.real_processes:  # a fake driver's pids are numbers, maybe of real processes
        raise Conflict(f"instance {res.name} runs on the {ctx.config.compute_driver} driver: no process to break")
    info = ctx.compute.get_instance(res.id)
    if req.fault == "resume":
        ctx.compute.resume_instance(res.id)
        return {"fault": "resume", "detail": "thawed"}
    if info.state not in (InstanceState.RUNNING, InstanceState.PAUSED) or not info.pid:
        raise Conflict(f"instance {res.name} is not running (state {info.state.value}); start it first")
    pid = info.pid
    if req.fault == "kill":
        os.kill(pid, signal.SIGKILL)
        return {"fault": "kill", "detail": f"SIGKILL to init (pid {pid})"}
    if req.fault == "pause":
        ctx.compute.pause_instance(res.id)
        return {"fault": "pause", "detail": "frozen (cgroup freezer)"}
    if req.fault in ("throttle", "unthrottle"):
        cpus = req.need("percent") / 100 if req.fault == "throttle" else InstanceSpec.of(res).cpus
        return _cpu_quota(ctx, res.id, int(cpus * CPU_PERIOD_US))
    return _network(pid, req)


def _cpu_quota(ctx: HostContext, iid: str, quota_us: int) -> dict[str, Any]:
    parent = getattr(ctx.compute, "cgroup_parent", None)
    if parent is None:
        raise NotSupported(f"the {ctx.config.compute_driver} compute driver has no cgroups to throttle")
    path = CGROUP_ROOT / "cpu" / parent / iid / "cpu.cfs_quota_us"
    try:
        path.write_text(f"{max(quota_us, 1000)}\n")  # the kernel's least quota is 1 ms a period
    except OSError as exc:
        raise DriverError(f"setting the CPU quota in {path}: {exc}") from exc
    return {"fault": "cpu-quota", "detail": f"cpu.cfs_quota_us {max(quota_us, 1000)} of {CPU_PERIOD_US}"}


def nft_ruleset(percent: float | None) -> str:
    """The table dropping `percent` of the packets in and out of a namespace (None: all), loopback spared; an empty
    declaration first makes the delete safe when the table is not there, so it is one atomic replace."""
    verdict = "drop" if percent is None else f"numgen random mod 100 < {round(percent)} drop"
    chains = "".join(
        f'  chain {hook} {{ type filter hook {hook} priority -5; policy accept; {lo} "lo" accept; {verdict}; }}\n'
        for hook, lo in (("input", "iifname"), ("output", "oifname"))
    )
    return f"{NFT_REMOVE}table inet {TABLE} {{\n{chains}}}\n"


def _network(pid: int, req: FaultRequest) -> dict[str, Any]:
    ns = f"/proc/{pid}/ns/net"
    try:
        if os.stat(ns).st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise Conflict(f"pid {pid} is in the agent's own network namespace: not an instance's")
    except OSError as exc:
        raise Conflict(f"the instance's init (pid {pid}) is gone") from exc
    enter = ["nsenter", f"--net={ns}", "--"]
    if req.fault in ("drop", "partition"):
        nft_load(ns, nft_ruleset(None if req.fault == "partition" else req.need("percent")), "the instance's netns")
        return {"fault": req.fault, "detail": f"nft table inet {TABLE} in the instance's netns drops {_share(req)}"}
    if req.fault == "heal":
        nft_load(ns, NFT_REMOVE, "the instance's netns")
        return {"fault": "heal", "detail": f"nft table inet {TABLE} removed"}
    if req.fault == "unshape":
        proc = subprocess.run([*enter, "tc", "qdisc", "del", "dev", "eth0", "root"], capture_output=True, text=True)
        if proc.returncode != 0 and "handle of zero" not in proc.stderr and "No such file" not in proc.stderr:
            raise DriverError(f"tc qdisc del: {proc.stderr.strip()}")
        return {"fault": "unshape", "detail": "root qdisc of eth0 back to the default"}
    if req.fault == "bandwidth":
        rate = req.need("rate_kbit")
        qdisc = ["tbf", "rate", f"{rate}kbit", "burst", f"{max(32, rate // 100)}kbit", "latency", "400ms"]
    else:
        qdisc = ["netem", "delay", f"{req.need('delay_ms')}ms"]
    proc = subprocess.run(
        [*enter, "tc", "qdisc", "replace", "dev", "eth0", "root", *qdisc], capture_output=True, text=True
    )
    if proc.returncode != 0:
        if qdisc[0] == "netem" and "unknown" in proc.stderr.lower():
            raise NotSupported(NO_NETEM)
        raise DriverError(f"tc qdisc replace dev eth0 root {' '.join(qdisc)}: {proc.stderr.strip()}")
    return {"fault": req.fault, "detail": f"eth0 root qdisc {' '.join(qdisc)}"}


def _share(req: FaultRequest) -> str:
    return "every packet but loopback's" if req.fault == "partition" else f"{req.percent:g}% of packets"


def nft_load(netns: str, text: str, where: str) -> None:
    """`nft -f -` inside the network namespace whose nsfs file is `netns`, nothing else of the caller's changed."""
    argv = ["nsenter", f"--net={netns}", "--", "nft", "-f", "-"]
    proc = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise DriverError(f"nft in {where}: {proc.stderr.strip()}")


def inject_fault(cloud: Cloud, caller: Caller, name: str, req: FaultRequest) -> dict[str, Any]:
    """The control plane's side: the tenant's own instance only (another tenant's is NotFound, as everywhere), on
    its host's agent; each fault is a Warning event on the instance, so what a chaos run did stays on record."""
    res = cloud.store.get(INSTANCE, caller.tenant, name)
    if res.host is None:
        raise Conflict(f"instance {name} is not placed on a host yet")
    result: dict[str, Any] = cloud.hosts.agent(res.host).chaos_instance(res.id, req.model_dump(exclude_none=True))
    cloud.store.add_event(res, "ChaosFault", f"{req.fault}: {result['detail']}", "Warning")
    return {"instance": name, "host": res.host, **result}
