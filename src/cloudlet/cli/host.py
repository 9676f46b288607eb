"""cloudlet host list|show|add|remove|partition (admin): each host's agent, zone, capacity, version and last
heartbeat; added hosts are namespaces of this machine with their own agent and pool (cli/daemons.py)."""

from __future__ import annotations

__all__ = ["app"]

from typing import Annotated

import typer

from cloudlet.cli import daemons
from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, OutputOpt, SelectorOpt, emit, say
from cloudlet.core.config import load_config

app = typer.Typer(help="Hosts: where instances run, each served by its own agent.", no_args_is_help=True)
COLUMNS = ["name", "zone", "state", "cpus", "memory_mib", "version", "heartbeat_age_s", "endpoint"]


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List hosts."""
    emit(connect().get("/v1/hosts", {"selector": selector})["items"], output, COLUMNS)


app.command("ls", hidden=True)(list_)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show one host."""
    emit(connect().get(f"/v1/hosts/{name}"), output)


@app.command()
def add(
    name: str,
    zone: Annotated[str, typer.Option(help="the host's zone (fixed while it exists)")],
    output: OutputOpt = Format.table,
) -> None:
    """Add a host on this machine: its own namespace on the underlay, pool and agent (again: rejoin it)."""
    emit(daemons.add_host(load_config(), name, zone), output)


@app.command()
def remove(
    name: str,
    force: Annotated[
        bool, typer.Option("--force", help="kill everything it runs; its instances are placed again elsewhere")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Remove an added host that holds nothing (or, with --force, whatever it holds)."""
    result = daemons.remove_host(load_config(), name, force)
    if output == Format.table:
        say(f"host {name} removed" + (f"; {len(result['released'])} records released" if result["released"] else ""))
    else:
        emit(result, output)


@app.command()
def partition(name: str, heal: Annotated[bool, typer.Option("--heal", help="reconnect it")] = False) -> None:
    """Cut an added host off the underlay (its peers and the control plane), or reconnect it."""
    daemons.partition_host(load_config(), name, not heal)
    say(f"host {name} {'reconnected' if heal else 'partitioned'}")


@app.command()
def cordon(name: str, output: OutputOpt = Format.table) -> None:
    """Place nothing new on the host; what runs there stays."""
    view = connect().post(f"/v1/hosts/{name}/cordon")
    if output == Format.table:
        say(f"host {name} cordoned")
    else:
        emit(view, output)


@app.command()
def uncordon(name: str, output: OutputOpt = Format.table) -> None:
    """Let placement use the host again."""
    view = connect().post(f"/v1/hosts/{name}/uncordon")
    if output == Format.table:
        say(f"host {name} uncordoned")
    else:
        emit(view, output)
