"""cloudlet snapshot create|list|show|delete."""

from __future__ import annotations

__all__ = ["app"]

from typing import Annotated

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, LabelOpt, OutputOpt, SelectorOpt, bulk, emit, labels_of, say
from cloudlet.cli.volume import Cascade, wait_ready

app = typer.Typer(
    help="Snapshots of volumes and instances (instances are frozen while their disk is taken).", no_args_is_help=True
)
COLUMNS = ["name", "source_kind", "source", "state", "frozen", "took_ms"]


@app.command()
def create(
    source: Annotated[str, typer.Argument(help="volume or instance name")],
    name: Annotated[str | None, typer.Option(help="snapshot name (default SOURCE-date)")] = None,
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Snapshot a volume, or an instance's root disk (a bootable snapshot)."""
    client = connect()
    view = client.post("/v1/snapshots", {"source": source, "name": name, "labels": labels_of(label)})
    view = wait_ready(client, "/v1/snapshots", view["name"])
    say(f"Snapshot {view['name']} of {source} taken") if output == Format.table else emit(view, output)


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List snapshots."""
    emit(connect().get("/v1/snapshots", {"selector": selector})["items"], output, COLUMNS)


app.command("ls", hidden=True)(list_)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show one snapshot and what depends on it."""
    emit(connect().get(f"/v1/snapshots/{name}"), output)


@app.command()
def delete(
    names: list[str],
    cascade: Cascade = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Delete snapshots (refused while clones depend on them, unless --cascade)."""
    client = connect()
    bulk(
        names,
        lambda n: client.request("DELETE", f"/v1/snapshots/{n}", params={"cascade": cascade}),
        lambda n: f"Snapshot {n} deleted",
        quiet,
        output,
    )


app.command("rm", hidden=True)(delete)
