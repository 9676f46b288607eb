"""cloudlet host list|show (admin): each host's agent, zone, capacity, version and last heartbeat."""

from __future__ import annotations

__all__ = ["app"]

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, OutputOpt, SelectorOpt, emit

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
