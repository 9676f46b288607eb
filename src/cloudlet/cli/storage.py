"""cloudlet storage usage|gc."""

from __future__ import annotations

__all__ = ["app"]

from typing import Annotated

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, OutputOpt, emit, say

app = typer.Typer(help="The storage pool: what uses space, and what holds space for nothing.", no_args_is_help=True)


@app.command()
def usage(output: OutputOpt = Format.table) -> None:
    """Logical vs physical bytes per volume and per tenant."""
    report = connect().get("/v1/storage/usage")
    if output != Format.table:
        emit(report, output)
        return
    say(
        f"pool {report['pool']}: {report['logical_bytes'] / 2**20:.1f} MiB logical, "
        f"{report['physical_bytes'] / 2**20:.1f} MiB physical"
    )
    emit(report["volumes"], output, ["volume", "kind", "tenant", "name", "logical_bytes", "exclusive_bytes"])
    emit(report["tenants"], output, ["tenant", "logical_bytes", "exclusive_bytes"])


@app.command()
def gc(
    check: Annotated[bool, typer.Option("--check", help="only report; exit 1 if anything is held")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Free pool space that no record owns (or, with --check, only report it)."""
    client = connect()
    items = client.get("/v1/storage/gc")["items"] if check else client.post("/v1/storage/gc")["items"]
    if output != Format.table:
        emit(items, output)
    elif items:
        emit(items, output, ["volume", "bytes", "reason"])
    else:
        say("no garbage")
    if check and items:
        raise typer.Exit(1)
