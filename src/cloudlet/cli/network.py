"""cloudlet network create|list|show|delete."""

from __future__ import annotations

__all__ = ["app"]

from typing import Annotated

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, LabelOpt, OutputOpt, SelectorOpt, bulk, emit, labels_of, say

app = typer.Typer(
    help="Tenant networks: a bridge, a subnet from 10.240.0.0/12, DNS on the gateway.", no_args_is_help=True
)
COLUMNS = ["name", "subnet", "gateway", "egress", "zone", "state"]


@app.command()
def create(
    name: str,
    subnet: Annotated[str | None, typer.Option(help="CIDR inside 10.240.0.0/12")] = None,
    egress: Annotated[bool, typer.Option("--egress", help="NAT traffic to the outside range (198.18.0.0/15)")] = False,
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a network."""
    body = {"name": name, "subnet": subnet, "egress": egress, "labels": labels_of(label)}
    view = connect().post("/v1/networks", body)
    if output == Format.table:
        say(f"Network {name} created with subnet {view['subnet']}")
    else:
        emit(view, output)


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List networks."""
    emit(connect().get("/v1/networks", {"selector": selector})["items"], output, COLUMNS)


app.command("ls", hidden=True)(list_)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show one network."""
    emit(connect().get(f"/v1/networks/{name}"), output)


@app.command()
def update(
    name: str,
    egress: Annotated[bool, typer.Option("--egress/--no-egress", help="NAT traffic to the outside range")],
    output: OutputOpt = Format.table,
) -> None:
    """Turn a network's egress NAT on or off."""
    view = connect().request("PATCH", f"/v1/networks/{name}", json={"egress": egress})
    if output == Format.table:
        say(f"Network {name} egress {'on' if view['egress'] else 'off'}")
    else:
        emit(view, output)


@app.command()
def delete(
    names: list[str], quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False, output: OutputOpt = Format.table
) -> None:
    """Delete networks (refused while instances use them)."""
    client = connect()
    bulk(names, lambda n: client.delete(f"/v1/networks/{n}"), lambda n: f"Network {n} deleted", quiet, output)


app.command("rm", hidden=True)(delete)
