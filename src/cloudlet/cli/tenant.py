"""cloudlet tenant create|list|show|quota (admin; a tenant may show itself)."""

from __future__ import annotations

__all__ = ["app"]

from typing import Annotated, Any

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


def _emit_quota(view: dict[str, Any], output: Format) -> None:
    if output != Format.table:
        emit(view, output)
        return
    rows = [{"quota": k, "used": v["used"], "limit": v["limit"]} for k, v in view["quota"].items()]
    emit(rows, output, ["quota", "used", "limit"])


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """A tenant's quota: used and limit of each (no limit: the admin)."""
    _emit_quota(connect().get(f"/v1/tenants/{name}"), output)


@app.command()
def quota(
    name: str,
    instances: Annotated[int | None, typer.Option(help="most instances")] = None,
    vcpus: Annotated[int | None, typer.Option(help="most vCPUs of all instances")] = None,
    memory_mib: Annotated[int | None, typer.Option(help="most MiB of memory of all instances")] = None,
    networks: Annotated[int | None, typer.Option(help="most networks")] = None,
    addresses: Annotated[int | None, typer.Option(help="most instance addresses")] = None,
    volumes: Annotated[int | None, typer.Option(help="most volumes")] = None,
    gib: Annotated[int | None, typer.Option(help="most GiB of volumes in all")] = None,
    snapshots: Annotated[int | None, typer.Option(help="most snapshots")] = None,
    eips: Annotated[int | None, typer.Option(help="most elastic IPs")] = None,
    stacks: Annotated[int | None, typer.Option(help="most stacks")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Set a tenant's quota (admin); limits not given stay as they are. Shows used and limit of each."""
    limits = {
        "instances": instances,
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "networks": networks,
        "addresses": addresses,
        "volumes": volumes,
        "volume_gib": gib,
        "snapshots": snapshots,
        "eips": eips,
        "stacks": stacks,
    }
    _emit_quota(connect().request("PUT", f"/v1/tenants/{name}/quota", json=limits), output)


@app.command("list")
def list_(output: OutputOpt = Format.table) -> None:
    """List tenants."""
    emit(connect().get("/v1/tenants")["items"], output, ["name", "created_at"])
