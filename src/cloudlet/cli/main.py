"""cloudlet: the command line. One handler at the bottom turns every CloudletError into one line and exit 1."""

from __future__ import annotations

__all__ = ["app", "run"]

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from cloudlet.cli import (
    backup,
    eip,
    host,
    image,
    instance,
    label,
    lb,
    network,
    secgroup,
    snapshot,
    stack,
    storage,
    tenant,
    volume,
)
from cloudlet.cli.client import Client, call, connect
from cloudlet.cli.output import Format, OutputOpt, emit, say
from cloudlet.core.config import Config, load_config
from cloudlet.core.errors import CloudletError

app = typer.Typer(
    help="cloudlet: a cloud in a box. Start with 'cloudlet up'.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(network.app, name="network")
app.add_typer(lb.app, name="lb")
app.add_typer(stack.app, name="stack")
app.add_typer(secgroup.app, name="secgroup")
app.add_typer(eip.app, name="eip")
app.add_typer(image.app, name="image")
app.add_typer(tenant.app, name="tenant")
app.add_typer(volume.app, name="volume")
app.add_typer(snapshot.app, name="snapshot")
app.add_typer(storage.app, name="storage")
app.add_typer(backup.app, name="backup")
app.add_typer(host.app, name="host")
instance.register(app)
label.register(app)


def _alive(pid_file: Path) -> int | None:
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


def _spawn(argv: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_until(proc: subprocess.Popen[bytes], what: str, log_file: Path, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if proc.poll() is not None:
            raise CloudletError(f"{what} could not start: {_last_log_line(log_file)}")
        if time.monotonic() > deadline:
            raise CloudletError(f"{what} did not come up within 60 s: {_last_log_line(log_file)}")
        time.sleep(0.05)


def _start_control_plane(cfg: Config) -> None:
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


def _start_agent(cfg: Config, url: str) -> None:
    host, adir = cfg.host, cfg.agent_dir(cfg.host)
    log_file = adir / "agent.log"
    proc = _spawn(
        [
            "-m",
            "cloudlet.cli.main",
            "agent",
            "--host",
            host,
            "--zone",
            cfg.zone,
            "--api",
            url,
            "--token-file",
            str(cfg.host_token_file(host)),
        ],
        log_file,
    )
    client = connect(cfg)

    def ready() -> bool:
        if cfg.endpoint(adir / "endpoint.json").get("pid") != proc.pid:
            return False
        view = client.get(f"/v1/hosts/{host}") if _has_host(client, host) else {}
        return bool(view) and view["state"] == "up" and view["endpoint"] == cfg.endpoint(adir / "endpoint.json")["url"]

    _wait_until(proc, f"the agent of host {host}", log_file, ready)


def _has_host(client: Client, host: str) -> bool:
    return any(h["name"] == host for h in client.get("/v1/hosts")["items"])


@app.command()
def up(output: OutputOpt = Format.table) -> None:
    """Start cloudletd and the agent of host `local` in the background (pids and logs in $CLOUDLET_HOME)."""
    cfg = load_config()
    if cfg.compute_driver != "fake" and os.geteuid() != 0:
        raise CloudletError("cloudlet needs root for namespaces, mounts and runc; run it with sudo")
    cfg.home.mkdir(parents=True, exist_ok=True)
    if _alive(cfg.pid_file) is None:
        _start_control_plane(cfg)
    url = str(cfg.endpoint()["url"])
    if _alive(cfg.agent_dir(cfg.host) / "agent.pid") is None:
        _start_agent(cfg, url)
    data = connect(cfg).get("/v1/info")
    if output == Format.table:
        ports = ", ".join(f"{k} {v}" for k, v in data["ports"].items())
        say(f"cloudlet is up: API {data['api']} ({ports}), home {cfg.home}")
    else:
        emit(data, output)


def _stop(pid: int | None) -> None:
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


def _shutdown_agent(cfg: Config, purge: bool) -> None:
    """Through the agent's API; if it is not running, a one-off agent cleans up from its disk cache."""
    adir = cfg.agent_dir(cfg.host)
    pid = _alive(adir / "agent.pid")
    endpoint = cfg.endpoint(adir / "endpoint.json")
    if pid is not None and endpoint.get("url"):
        try:
            call(
                str(endpoint["url"]),
                "POST",
                "/shutdown",
                str(endpoint["key"]),
                json_body={"purge": purge},
                what=f"the agent of host {cfg.host}",
            )
            _stop(pid if Path(f"/proc/{pid}").exists() else None)
            return
        except CloudletError:
            _stop(pid)
    if not adir.exists():
        return
    argv = [
        sys.executable,
        "-m",
        "cloudlet.cli.main",
        "agent",
        "--host",
        cfg.host,
        "--zone",
        cfg.zone,
        "--api",
        str(cfg.endpoint().get("url") or "http://127.0.0.1:1"),
        "--token-file",
        str(cfg.host_token_file(cfg.host)),
        "--shutdown",
    ] + (["--purge"] if purge else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise CloudletError(f"cleaning up host {cfg.host} failed: {proc.stderr.strip().splitlines()[-1:]}")


@app.command()
def down(
    purge: Annotated[bool, typer.Option("--purge", help="also delete all state and files")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Stop the agent (and every instance) and cloudletd; --purge also removes all state."""
    cfg = load_config()
    if not cfg.home.exists():
        say("cloudlet is not set up here; nothing to do")
        return
    _shutdown_agent(cfg, purge)  # first, so it can still report the stopped instances
    pid = _alive(cfg.pid_file)
    if pid is not None:
        try:
            connect(cfg).post("/v1/shutdown")
        except CloudletError:
            pass  # not answering: the signal below stops it
        _stop(pid)
    if purge:
        shutil.rmtree(cfg.home, ignore_errors=True)
    result = {"stopped": pid is not None, "purged": purge, "home": str(cfg.home)}
    if output == Format.table:
        say("cloudlet is down" + (f"; removed {cfg.home}" if purge else "; state kept (use --purge to remove)"))
    else:
        emit(result, output)


@app.command()
def agent(
    host: Annotated[str, typer.Option(help="this host's name")] = "local",
    zone: Annotated[str, typer.Option(help="its zone")] = "zone-a",
    api: Annotated[str, typer.Option(help="the control plane's URL")] = "http://127.0.0.1:8470",
    token_file: Annotated[
        Path | None, typer.Option(help="the host token [default: $CLOUDLET_HOME/hosts/HOST.token]")
    ] = None,
    shutdown: Annotated[bool, typer.Option("--shutdown", help="stop this host's instances and exit")] = False,
    purge: Annotated[bool, typer.Option("--purge", help="with --shutdown: remove every artefact")] = False,
) -> None:
    """Run a host agent in the foreground: the data plane of one host."""
    from cloudlet.agent.main import run_agent

    run_agent(host, zone, api, token_file or load_config().host_token_file(host), shutdown=shutdown, purge=purge)


@app.command()
def info(output: OutputOpt = Format.table) -> None:
    """Show the API URL, every port, the hosts, and who you are."""
    data = connect().get("/v1/info")
    if output == Format.table:
        data = {
            **data,
            "ports": ", ".join(f"{k}={v}" for k, v in data["ports"].items()),
            "hosts": ", ".join(f"{h['name']} ({h['zone']}, {h['state']})" for h in data["hosts"]),
        }
    emit(data, output)


@app.command()
def repair(
    check: Annotated[bool, typer.Option("--check", help="only report; exit 1 if anything is wrong")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Find (and fix) orphaned artefacts and resources whose artefacts vanished."""
    client = connect()
    if check:
        findings = client.get("/v1/repair")["items"]
        if findings or output != Format.table:
            emit(findings, output, ["problem", "kind", "name", "id", "artefact", "detail"])
        else:
            say("nothing to repair")
        raise typer.Exit(1 if findings else 0)
    result = client.post("/v1/repair")
    if output == Format.table:
        for action in result["actions"] or ["nothing to repair"]:
            say(action)
    else:
        emit(result, output)


def run() -> None:
    try:
        app()
    except CloudletError as exc:
        sys.stderr.write(f"Error: {exc.message}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
