"""The processes `cloudlet up`, `down` and `host add|remove` start and stop on this machine: cloudletd, the agent of
host `local` (in the root namespace) and the agents of added hosts, each inside its host's namespace on the
underlay (network/underlay.py), with its own state directory, pool and log."""

from __future__ import annotations

__all__ = [
    "alive",
    "start_control_plane",
    "start_agent",
    "shutdown_agent",
    "stop_process",
    "add_host",
    "remove_host",
    "partition_host",
    "start_added_hosts",
    "shutdown_added_hosts",
]

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudlet.cli.client import Client, call, connect
from cloudlet.core.config import MACHINE_NETNS_FD, Config
from cloudlet.core.errors import CloudletError
from cloudlet.network.underlay import Underlay, host_netns
from cloudlet.resilience.fence import NetnsFence


def alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"cloudlet" in cmdline else None


def _last_log_line(log_file: Path) -> str:
    """What a daemon said last, without its timestamp: why it stopped."""
    try:
        line = log_file.read_text(errors="replace").strip().splitlines()[-1]
    except (OSError, IndexError):
        return f"no log in {log_file}"
    return line.split(": ", 1)[-1] + f" (log: {log_file})"


def _in_netns(netns: str | None) -> list[str]:
    """nsenter switches the network namespace only: the agent shares the machine's mounts, so its pool and the
    namespaces it names in /run/netns are seen by everyone (`ip netns exec` would give it private ones)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []


def _spawn(argv: list[str], log_file: Path, netns: str | None = None) -> subprocess.Popen[bytes]:
    """A daemon; one started inside netns (an added host's agent) keeps a handle on this machine's own network
    namespace (MACHINE_NETNS_FD): it builds images from the machine's mirror, as a real host would from its own.
    /proc/1/ns/net is not readable on every machine; what this process holds is."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    machine = os.open("/proc/self/ns/net", os.O_RDONLY) if netns else None
    env = {**os.environ, MACHINE_NETNS_FD: str(machine)} if machine is not None else None
    try:
        with open(log_file, "ab") as log:
            return subprocess.Popen(
                [*_in_netns(netns), sys.executable, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                pass_fds=(machine,) if machine is not None else (),
            )
    finally:
        if machine is not None:
            os.close(machine)


def _wait_until(proc: subprocess.Popen[bytes], what: str, log_file: Path, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if proc.poll() is not None:
            raise CloudletError(f"{what} could not start: {_last_log_line(log_file)}")
        if time.monotonic() > deadline:
            raise CloudletError(f"{what} did not come up within 60 s: {_last_log_line(log_file)}")
        time.sleep(0.05)


def start_control_plane(cfg: Config) -> None:
    if cfg.compute_driver != "fake":
        Underlay(cfg.cloud_id(), cfg.home).ensure()  # cloudletd listens on it too
    proc = _spawn(["-m", "cloudlet.daemon"], cfg.log_file)

    def ready() -> bool:
        url = cfg.endpoint().get("url")
        if not url or cfg.endpoint().get("pid") != proc.pid:
            return False
        try:
            return bool(call(str(url), "GET", "/healthz", timeout=1))
        except CloudletError:
            return False

    _wait_until(proc, "cloudletd", cfg.log_file, ready)


def _agent_argv(cfg: Config, host: str, zone: str, api: str, listen: str | None) -> list[str]:
    argv = ["-m", "cloudlet.cli.main", "agent", "--host", host, "--zone", zone, "--api", api]
    argv += ["--token-file", str(cfg.host_token_file(host))]
    return argv + (["--listen", listen] if listen else [])


def _added(cfg: Config, host: str) -> tuple[str | None, str | None, str]:
    """(netns, listen address, API URL) of host's agent: on the underlay, where its peers reach it (replicas)."""
    if host == cfg.host:
        listen = Underlay(cfg.cloud_id(), cfg.home).control_address if cfg.compute_driver != "fake" else None
        return None, listen, str(cfg.endpoint()["url"])
    underlay = Underlay(cfg.cloud_id(), cfg.home)
    slot = underlay.slot(host)
    if slot is None:
        raise CloudletError(f"host {host} has no place on this machine's underlay; add it with 'cloudlet host add'")
    return host_netns(cfg.cloud_id(), host), underlay.address(slot), str(cfg.endpoint()["underlay_url"])


def start_agent(cfg: Config, host: str, zone: str) -> None:
    netns, listen, api = _added(cfg, host)
    adir = cfg.agent_dir(host)
    log_file = adir / "agent.log"
    proc = _spawn(_agent_argv(cfg, host, zone, api, listen), log_file, netns)
    client = connect(cfg)

    def ready() -> bool:
        if cfg.endpoint(adir / "endpoint.json").get("pid") != proc.pid:
            return False
        view = client.get(f"/v1/hosts/{host}") if _has_host(client, host) else {}
        return bool(view) and view["state"] == "up" and view["endpoint"] == cfg.endpoint(adir / "endpoint.json")["url"]

    _wait_until(proc, f"the agent of host {host}", log_file, ready)


def _has_host(client: Client, host: str) -> bool:
    return any(h["name"] == host for h in client.get("/v1/hosts")["items"])


def stop_process(pid: int | None) -> None:
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not Path(f"/proc/{pid}").exists():
            return


def shutdown_agent(cfg: Config, host: str, zone: str, purge: bool) -> None:
    """Through the agent's API; if it is not running, a one-off agent cleans up from its disk cache."""
    adir = cfg.agent_dir(host)
    pid = alive(adir / "agent.pid")
    endpoint = cfg.endpoint(adir / "endpoint.json")
    if pid is not None and endpoint.get("url"):
        try:
            call(
                str(endpoint["url"]),
                "POST",
                "/shutdown",
                str(endpoint["key"]),
                json_body={"purge": purge},
                what=f"the agent of host {host}",
            )
            stop_process(pid if Path(f"/proc/{pid}").exists() else None)
            return
        except CloudletError:
            stop_process(pid)
    if not adir.exists():
        return
    netns = host_netns(cfg.cloud_id(), host) if host != cfg.host else None
    if netns and not Path(f"/run/netns/{netns}").exists():
        netns = None  # its namespace is gone already: what is left is files and mounts
    api = str(cfg.endpoint().get("url") or "http://127.0.0.1:1")
    argv = _agent_argv(cfg, host, zone, api, None) + ["--shutdown"] + (["--purge"] if purge else [])
    proc = subprocess.run([*_in_netns(netns), sys.executable, *argv], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise CloudletError(f"cleaning up host {host} failed: {proc.stderr.strip().splitlines()[-1:]}")


def _zones(cfg: Config) -> dict[str, str]:
    """Added hosts' zones, as recorded beside their state (`up` restarts them without the control plane's help)."""
    out: dict[str, str] = {}
    for host in Underlay(cfg.cloud_id(), cfg.home).hosts():
        try:
            out[host] = (cfg.agent_dir(host) / "zone").read_text().strip()
        except OSError:
            continue
    return out


def add_host(cfg: Config, name: str, zone: str) -> dict[str, Any]:
    """Registers the host, makes its namespace on the underlay, writes its token and starts its agent."""
    if name == cfg.host:
        raise CloudletError(f"host {name} is this machine's own host; choose another name")
    client = connect(cfg)
    joined = client.post("/v1/hosts", {"name": name, "zone": zone})
    underlay = Underlay(cfg.cloud_id(), cfg.home)
    underlay.attach(name)
    token_file = cfg.host_token_file(name)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_file.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(joined["token"] + "\n")
    os.replace(token_file.with_suffix(".tmp"), token_file)
    adir = cfg.agent_dir(name)
    adir.mkdir(parents=True, exist_ok=True)
    (adir / "zone").write_text(zone + "\n")
    pid = alive(adir / "agent.pid")
    if pid is not None:
        stop_process(pid)  # an agent holding the old token
    start_agent(cfg, name, zone)
    view: dict[str, Any] = client.get(f"/v1/hosts/{name}")
    return view


def remove_host(cfg: Config, name: str, force: bool) -> dict[str, Any]:
    """Removes the host from the control plane, then from this machine: its agent stops (with force, every process
    of its namespaces is killed) and its namespaces, pool and state go."""
    client = connect(cfg)
    if force:  # first: nothing of it may run on once its instances are placed elsewhere (this refuses `local`)
        NetnsFence(cfg.cloud_id(), cfg.host).fence(name)
    result: dict[str, Any] = client.delete(f"/v1/hosts/{name}?force={str(force).lower()}")
    zone = _zones(cfg).get(name, "")
    try:
        shutdown_agent(cfg, name, zone or "zone-a", purge=True)
    finally:
        Underlay(cfg.cloud_id(), cfg.home).detach(name)
        cfg.host_token_file(name).unlink(missing_ok=True)
    return result


def partition_host(cfg: Config, name: str, cut: bool) -> None:
    Underlay(cfg.cloud_id(), cfg.home).partition(name, cut)


def start_added_hosts(cfg: Config) -> None:
    underlay = Underlay(cfg.cloud_id(), cfg.home)
    for host, zone in _zones(cfg).items():
        if alive(cfg.agent_dir(host) / "agent.pid") is None:
            underlay.attach(host)
            start_agent(cfg, host, zone)


def shutdown_added_hosts(cfg: Config, purge: bool) -> None:
    for host, zone in _zones(cfg).items():
        shutdown_agent(cfg, host, zone, purge)
    # every namespace goes; without purge the hosts keep their places for the next `up`
    Underlay(cfg.cloud_id(), cfg.home).teardown(keep_slots=not purge)
