"""cloudlet's chaos actions: functions the `python` provider calls, from `cloudlet chaos run` or from the
`chaostoolkit` CLI itself (`{"type": "python", "module": "cloudlet.chaos.actions", "func": "kill_instance",
"arguments": {"name": "web-1"}}`).

They reach the cloud as the CLI does: `CLOUDLET_HOME` (or `CLOUDLET_URL`) and the CLI's token (`CLOUDLET_TOKEN`, else
the home's admin token). Instance targets are `name` (one name or a list) or `selector` (selectors.py): under
`cloudlet chaos run` the selector was resolved once at the start and arrives as `name`; under chaostoolkit it is
resolved at each call. Each returns what it did, per target.

Who may do what:
- **Instance faults** go through the API (`POST /v1/instances/NAME/chaos`, then the instance's agent): any tenant,
  on its own instances only (another tenant's are not found), each a Warning event on the instance. Every fault has
  its undo, listed beside it; all die with the instance's cgroup or network namespace (stop, restart, `down`).
- **Load balancer members** through the API's drain (`stop_lb_member` drains, `start_lb_member` undrains): the LB's
  owner.
- **Host and control-plane faults** act on this machine's processes and namespaces through `cloudlet.cli.daemons`,
  so they need root on the cloud's machine and the admin token (checked with the API before anything is done):
  only the operator breaks a host.

| action | undo |
|---|---|
| kill_instance (SIGKILL of init) | start_instance (the restart policy usually is first) |
| pause_instance (cgroup freezer) | resume_instance |
| throttle_cpu (CPU quota, `percent` of one core) | restore_cpu |
| drop_packets (`percent`, nftables `numgen random`) / partition_instance | heal_instance |
| limit_bandwidth (tbf, `rate_kbit`) / add_latency (netem: refused on kernels without sch_netem) | unshape_instance |
| fill_volume (`percent` of the volume, at most `max_mib` written) | clean_volume |
| stop_lb_member | start_lb_member |
| kill_host (SIGKILL of everything in its namespaces) | start_host |
| partition_host (underlay drop) / drop_host_packets (`percent`, nftables in the host's namespace) | heal_host |
| kill_control_plane (SIGKILL of cloudletd) | start_control_plane |
"""

from __future__ import annotations

__all__ = [
    "kill_instance",
    "start_instance",
    "pause_instance",
    "resume_instance",
    "throttle_cpu",
    "restore_cpu",
    "drop_packets",
    "partition_instance",
    "heal_instance",
    "limit_bandwidth",
    "add_latency",
    "unshape_instance",
    "fill_volume",
    "clean_volume",
    "stop_lb_member",
    "start_lb_member",
    "kill_host",
    "start_host",
    "drop_host_packets",
    "partition_host",
    "heal_host",
    "kill_control_plane",
    "start_control_plane",
]

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cloudlet.chaos import faults
from cloudlet.chaos.selectors import Selector, resolve
from cloudlet.cli import daemons
from cloudlet.cli.client import Client, connect
from cloudlet.core.config import Config, load_config
from cloudlet.core.errors import CloudletError, Conflict, Forbidden, NotFound, NotSupported
from cloudlet.network.underlay import host_netns
from cloudlet.resilience.fence import NetnsFence

Names = str | list[str] | None
FILL = ".cloudlet-chaos-fill"  # the files fill_volume writes, and clean_volume removes
SETTLED = ("fenced", "lease-expired", "down")  # host phases the monitor has finished with (resilience/monitor.py)


def targets(client: Client, name: Names, selector: dict[str, Any] | None) -> list[str]:
    """The instance names an action works on: `name` as given, else the selector's pick now."""
    if name:
        return [name] if isinstance(name, str) else list(name)
    if selector is None:
        raise CloudletError("give the target: name (one or a list) or selector")
    import random

    return resolve(Selector.model_validate(selector), client, random.Random())


def _fault(name: Names, selector: dict[str, Any] | None, fault: str, **params: Any) -> list[dict[str, Any]]:
    client = connect()
    body = {"fault": fault, **{k: v for k, v in params.items() if v is not None}}
    return [client.post(f"/v1/instances/{n}/chaos", body) for n in targets(client, name, selector)]


def kill_instance(name: Names = None, selector: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """SIGKILL of each instance's init: every process in it dies at once, as in a crash."""
    return _fault(name, selector, "kill")


def start_instance(
    name: Names = None, selector: dict[str, Any] | None = None, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Starts each instance that is not running (a killed one whose restart policy is `never`) and waits until all
    run again; answers their states."""
    client = connect()
    names = targets(client, name, selector)
    for n in names:
        if client.get(f"/v1/instances/{n}")["state"] not in ("running", "starting", "backoff"):
            client.post(f"/v1/instances/{n}/actions", {"action": "start"})
    deadline = time.monotonic() + timeout
    while True:
        views = [client.get(f"/v1/instances/{n}") for n in names]
        if all(v["state"] == "running" for v in views) or time.monotonic() > deadline:
            return [{"instance": v["name"], "state": v["state"]} for v in views]
        time.sleep(0.2)


def pause_instance(name: Names = None, selector: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Freezes every process of each instance (cgroup freezer): it answers nothing, and nothing restarts it."""
    return _fault(name, selector, "pause")


def resume_instance(name: Names = None, selector: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return _fault(name, selector, "resume")


def throttle_cpu(
    name: Names = None, selector: dict[str, Any] | None = None, percent: float = 10.0
) -> list[dict[str, Any]]:
    """Caps each instance at `percent` of one core (its cgroup's CPU quota): the slow server."""
    return _fault(name, selector, "throttle", percent=float(percent))


def restore_cpu(name: Names = None, selector: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Back to the quota of the instance's spec (its CPUs)."""
    return _fault(name, selector, "unthrottle")


def drop_packets(
    name: Names = None, selector: dict[str, Any] | None = None, percent: float = 30.0
) -> list[dict[str, Any]]:
    """Drops `percent` of the packets each instance sends and receives (loopback spared), at random."""
    return _fault(name, selector, "drop", percent=float(percent))


def partition_instance(name: Names = None, selector: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Cuts each instance off the network (everything but its loopback dropped); it keeps running."""
    return _fault(name, selector, "partition")


def heal_instance(name: Names = None, selector: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Undoes drop_packets and partition_instance."""
    return _fault(name, selector, "heal")


def limit_bandwidth(
    name: Names = None, selector: dict[str, Any] | None = None, rate_kbit: int = 1000
) -> list[dict[str, Any]]:
    """Limits what each instance sends to `rate_kbit` (a tbf qdisc on its eth0)."""
    return _fault(name, selector, "bandwidth", rate_kbit=int(rate_kbit))


def add_latency(
    name: Names = None, selector: dict[str, Any] | None = None, delay_ms: int = 100
) -> list[dict[str, Any]]:
    """Delays what each instance sends by `delay_ms` (netem). Kernels without sch_netem (this machine's) refuse it
    with NotSupported: use throttle_cpu or pause_instance for a slow server there."""
    return _fault(name, selector, "latency", delay_ms=int(delay_ms))


def unshape_instance(name: Names = None, selector: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Undoes limit_bandwidth and add_latency."""
    return _fault(name, selector, "unshape")


def _attached(client: Client, volume: str) -> tuple[dict[str, Any], str]:
    """The volume's view and the name of the running instance it is attached to."""
    view: dict[str, Any] = client.get(f"/v1/volumes/{volume}")
    if not view.get("attached_to") or not view.get("path"):
        raise Conflict(f"volume {volume} is not attached to an instance: fill_volume writes from inside one")
    return view, str(view["attached_to"])


def fill_volume(volume: str, percent: float = 90.0, max_mib: int = 1024) -> dict[str, Any]:
    """Writes zeros into the volume, from inside the instance it is attached to, until it is `percent` full (by
    its size), never more than `max_mib` in one call: a disk filling up, as the tenant's own writes would."""
    if not 0 < percent <= 100 or not 0 < max_mib <= 16384:
        raise CloudletError("fill_volume: percent in (0, 100], max_mib in (0, 16384]")
    client = connect()
    view, instance = _attached(client, volume)
    want = view["size_gib"] * (1 << 30) * percent / 100 - int(view.get("logical_bytes") or 0)
    mib = max(0, min(max_mib, math.ceil(want / (1 << 20))))
    if mib == 0:
        return {"volume": volume, "instance": instance, "written_mib": 0}
    target = f"{view['path'].rstrip('/')}/{FILL}-{time.time_ns()}"
    script = 'dd if=/dev/zero of="$0" bs=1048576 count="$1" 2>&1 && sync'
    result = client.post(
        f"/v1/instances/{instance}/exec", {"command": ["sh", "-c", script, target, str(mib)], "timeout": 300}
    )
    if result["exit_code"] != 0:  # a full disk is a finding, not a failure of the action: say what dd said
        return {"volume": volume, "instance": instance, "written_mib": None, "dd": result["stdout"].strip()[-300:]}
    return {"volume": volume, "instance": instance, "written_mib": mib, "file": target}


def clean_volume(volume: str) -> dict[str, Any]:
    """Removes what fill_volume wrote."""
    client = connect()
    view, instance = _attached(client, volume)
    script = 'rm -f "$0"/' + FILL + "-*"
    result = client.post(
        f"/v1/instances/{instance}/exec", {"command": ["sh", "-c", script, view["path"]], "timeout": 60}
    )
    return {"volume": volume, "instance": instance, "exit_code": result["exit_code"]}


def stop_lb_member(lb: str, member: str) -> dict[str, Any]:
    """Drains the member: the load balancer sends it nothing new (its own health checks go on)."""
    view: dict[str, Any] = connect().post(f"/v1/loadbalancers/{lb}/drain", {"member": member, "drained": True})
    return {"lb": lb, "member": member, "drained": view["drained"]}


def start_lb_member(lb: str, member: str) -> dict[str, Any]:
    view: dict[str, Any] = connect().post(f"/v1/loadbalancers/{lb}/drain", {"member": member, "drained": False})
    return {"lb": lb, "member": member, "drained": view["drained"]}


def operator(what: str, ask_api: bool = True) -> Config:
    """Host faults are the operator's: root on the cloud's machine and, while cloudletd answers, the admin token."""
    if os.geteuid() != 0:
        raise Forbidden(
            f"{what} acts on this machine's processes and namespaces: run it as root on the cloud's machine"
        )
    cfg = load_config()
    if not cfg.pid_file.parent.exists():
        raise NotFound(f"no cloud at {cfg.home}: set CLOUDLET_HOME to the cloud's home")
    if ask_api and connect(cfg).get("/v1/info")["role"] != "admin":
        raise Forbidden(f"{what} needs the admin token: a tenant breaks only its own instances")
    return cfg


def kill_host(host: str) -> dict[str, Any]:
    """Pulls the host's plug: SIGKILL of every process in its namespaces (its agent, instances and load
    balancers), as the netns fence does. Host `local` (the machine's root namespace) is refused."""
    cfg = operator(f"kill_host {host}")
    result = NetnsFence(cfg.cloud_id(), cfg.host).fence(host)
    return {"host": host, "killed": result.killed, "took_s": round(result.took_s, 3)}


def _up() -> None:
    """`cloudlet up` in a process of its own: it starts whatever of this cloud's daemons is down, and exits, so
    they are not children of the experiment's process (which would leave them unreaped once they stop)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cloudlet.cli.main", "up"], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise CloudletError(f"cloudlet up failed: {proc.stderr.strip()}")


def start_host(host: str, settle_s: float = 30.0) -> dict[str, Any]:
    """Starts the host's agent again (it adopts or restarts its instances), through `cloudlet up`, once the control
    plane has taken the host for gone (fenced, lease-expired or down; at most `settle_s`): its fence, decided on
    the silence, would otherwise kill the new agent too, as it would a real host rebooting into it."""
    cfg = operator(f"start_host {host}")
    if daemons.alive(cfg.agent_dir(host) / "agent.pid") is None:
        client, deadline = connect(cfg), time.monotonic() + settle_s
        while client.get(f"/v1/hosts/{host}")["state"] not in SETTLED and time.monotonic() < deadline:
            time.sleep(0.2)
        _up()
    return {"host": host, "running": daemons.alive(cfg.agent_dir(host) / "agent.pid")}


def _host_netns(cfg: Config, host: str) -> str:
    if host == cfg.host:
        raise NotSupported(
            f"host {host} is this machine's root namespace: a packet fault there hits the machine itself"
        )
    path = Path("/run/netns") / host_netns(cfg.cloud_id(), host)
    if not path.exists():
        raise NotFound(f"host {host} has no namespace on this machine (see 'cloudlet host list')")
    return str(path)


def drop_host_packets(host: str, percent: float = 30.0) -> dict[str, Any]:
    """Drops `percent` of the packets of the host's own namespace, in and out (its agent's heartbeats and watch,
    its VXLAN tunnels): a flaky host link. Added hosts only; heal_host undoes it."""
    if not 0 < percent <= 100:
        raise CloudletError("drop_host_packets: percent in (0, 100]")
    cfg = operator(f"drop_host_packets {host}")
    faults.nft_load(_host_netns(cfg, host), faults.nft_ruleset(percent), f"host {host}'s namespace")
    return {"host": host, "dropping_percent": percent}


def partition_host(host: str) -> dict[str, Any]:
    """Cuts the host off the underlay (its agent and instances run on, unreachable)."""
    daemons.partition_host(operator(f"partition_host {host}"), host, True)
    return {"host": host, "partitioned": True}


def heal_host(host: str) -> dict[str, Any]:
    """Undoes partition_host and drop_host_packets."""
    cfg = operator(f"heal_host {host}")
    daemons.partition_host(cfg, host, False)
    if host != cfg.host:
        faults.nft_load(_host_netns(cfg, host), faults.NFT_REMOVE, f"host {host}'s namespace")
    return {"host": host, "partitioned": False, "dropping_percent": 0}


def kill_control_plane() -> dict[str, Any]:
    """SIGKILL of cloudletd: agents serve from their caches, instances run on, the API is gone until it restarts."""
    cfg = operator("kill_control_plane")
    pid = daemons.alive(cfg.pid_file)
    if pid is None:
        raise Conflict("cloudletd is not running")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"killed": pid}


def _dead(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet (it holds no port any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def start_control_plane() -> dict[str, Any]:
    """Starts cloudletd again through `cloudlet up`, unless it runs (the API is down, so only root on the machine
    is asked for)."""
    cfg = operator("start_control_plane", ask_api=False)
    if daemons.alive(cfg.pid_file) is None:
        _up()
    return {"running": daemons.alive(cfg.pid_file)}
