"""cloudlet tenant create|list (admin)."""

from __future__ import annotations

__all__ = ["app"]

from typing import Annotated

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, OutputOpt, emit, say

app = typer.Typer(help="Tenants: each sees only its own resources.", no_args_is_help=True)


@app.command()
def create(name: str, output: OutputOpt = Format.table) -> None:
    """Create a tenant and print its token (shown once)."""
    view = connect().post("/v1/tenants", {"name": name})
    if output == Format.table:
        say(f"Tenant {name} created; its token (use as CLOUDLET_TOKEN):")
        print(view["token"])
    else:
        emit(view, output)


@app.command()
def quota(
    name: str,
    volumes: Annotated[int | None, typer.Option(help="most volumes")] = None,
    gib: Annotated[int | None, typer.Option(help="most GiB of volumes in all")] = None,
    snapshots: Annotated[int | None, typer.Option(help="most snapshots")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Set a tenant's storage quota (admin); limits not given stay as they are."""
    view = connect().request(
        "PUT", f"/v1/tenants/{name}/quota", json={"volumes": volumes, "volume_gib": gib, "snapshots": snapshots}
    )
    emit(view["quota"], output) if output != Format.table else say(f"Tenant {name} quota: {view['quota']}")


@app.command("list")
def list_(output: OutputOpt = Format.table) -> None:
    """List tenants."""
    emit(connect().get("/v1/tenants")["items"], output, ["name", "created_at"])
