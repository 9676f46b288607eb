"""cloudlet: the command line. One handler at the bottom turns every CloudletError into one line and exit 1."""

from __future__ import annotations

__all__ = ["app", "run"]

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from cloudlet.cli import (
    backup,
    chaos,
    dr,
    eip,
    host,
    image,
    instance,
    label,
    lb,
    network,
    secgroup,
    sim,
    snapshot,
    stack,
    storage,
    tenant,
    volume,
)
from cloudlet.cli.client import connect
from cloudlet.cli.daemons import (
    alive,
    shutdown_added_hosts,
    shutdown_agent,
    start_added_hosts,
    start_agent,
    start_control_plane,
    stop_process,
)
from cloudlet.cli.output import Format, OutputOpt, emit, say
from cloudlet.core.config import load_config
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
app.add_typer(chaos.app, name="chaos")
app.add_typer(sim.app, name="sim")
app.add_typer(dr.app, name="dr")
instance.register(app)
label.register(app)


@app.command()
def up(output: OutputOpt = Format.table) -> None:
    """Start cloudletd and the agent of host `local` in the background (pids and logs in $CLOUDLET_HOME)."""
    cfg = load_config()
    if cfg.compute_driver != "fake" and os.geteuid() != 0:
        raise CloudletError("cloudlet needs root for namespaces, mounts and runc; run it with sudo")
    cfg.home.mkdir(parents=True, exist_ok=True)
    if alive(cfg.pid_file) is None:
        start_control_plane(cfg)
    if alive(cfg.agent_dir(cfg.host) / "agent.pid") is None:
        start_agent(cfg, cfg.host, cfg.zone)
    start_added_hosts(cfg)
    data = connect(cfg).get("/v1/info")
    if output == Format.table:
        ports = ", ".join(f"{k} {v}" for k, v in data["ports"].items())
        say(f"cloudlet is up: API {data['api']} ({ports}), home {cfg.home}")
    else:
        emit(data, output)


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
    # agents first, so they can still report the stopped instances
    shutdown_added_hosts(cfg, purge)
    shutdown_agent(cfg, cfg.host, cfg.zone, purge)
    pid = alive(cfg.pid_file)
    if pid is not None:
        try:
            connect(cfg).post("/v1/shutdown")
        except CloudletError:
            pass  # not answering: the signal below stops it
        stop_process(pid)
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
    listen: Annotated[str, typer.Option(help="the address the agent's API listens on")] = "127.0.0.1",
) -> None:
    """Run a host agent in the foreground: the data plane of one host."""
    from cloudlet.agent.main import run_agent

    token = token_file or load_config().host_token_file(host)
    run_agent(host, zone, api, token, shutdown=shutdown, purge=purge, listen=listen)


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
