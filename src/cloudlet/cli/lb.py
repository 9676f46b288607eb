"""cloudlet lb create|list|show|delete|readonly|members|drain."""

from __future__ import annotations

__all__ = ["app"]

from typing import Annotated, Any

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, LabelOpt, OutputOpt, SelectorOpt, bulk, emit, labels_of, say
from cloudlet.core.errors import CloudletError

app = typer.Typer(help="Load balancers: one HAProxy per LB, latency-aware weights.", no_args_is_help=True)
COLUMNS = ["name", "state", "network", "ip", "port", "balance", "readonly", "host"]
MEMBER_COLUMNS = ["name", "ip", "state", "weight", "ewma_ms", "error_rate"]


@app.command()
def create(
    name: str,
    port: Annotated[int, typer.Option(help="port it listens on")] = 80,
    members: Annotated[str | None, typer.Option(help="instance names, comma-separated")] = None,
    layer: Annotated[str | None, typer.Option(help="STACK/LAYER: the live instances of that stack layer")] = None,
    health_check: Annotated[str, typer.Option(help="http:/PATH or tcp")] = "http:/health",
    balance: Annotated[str, typer.Option(help="latency (cloudlet's controller), roundrobin or leastconn")] = "latency",
    network: Annotated[str, typer.Option(help="network it gets its address on")] = "default",
    target_port: Annotated[int | None, typer.Option(help="the members' port (default: --port)")] = None,
    timeout_ms: Annotated[int, typer.Option(help="server timeout; idempotent requests retry elsewhere")] = 5000,
    readonly: Annotated[bool, typer.Option(help="start in browsing-only mode")] = False,
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a load balancer."""
    body: dict[str, Any] = {
        "name": name,
        "port": port,
        "members": [m for m in (members or "").split(",") if m],
        "layer": layer,
        "health_check": health_check,
        "balance": balance,
        "network": network,
        "target_port": target_port,
        "server_timeout_ms": timeout_ms,
        "readonly": readonly,
        "labels": labels_of(label),
    }
    view = connect().post("/v1/loadbalancers", body)
    if output == Format.table:
        say(f"Load balancer {name} created on port {port}")
    else:
        emit(view, output)


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List load balancers."""
    emit(connect().get("/v1/loadbalancers", {"selector": selector})["items"], output, COLUMNS)


app.command("ls", hidden=True)(list_)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show a load balancer and each member's state, weight, EWMA latency and error rate."""
    view = connect().get(f"/v1/loadbalancers/{name}")
    if output != Format.table:
        emit(view, output)
        return
    emit(view, output, [*COLUMNS, "target_port", "health_check", "layer", "members", "drained", "zone", "message"])
    print()
    emit(view["member_status"], output, MEMBER_COLUMNS)


@app.command()
def delete(
    names: list[str], quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False, output: OutputOpt = Format.table
) -> None:
    """Delete load balancers."""
    client = connect()
    bulk(
        names, lambda n: client.delete(f"/v1/loadbalancers/{n}"), lambda n: f"Load balancer {n} deleted", quiet, output
    )


app.command("rm", hidden=True)(delete)


@app.command()
def readonly(
    name: str, state: Annotated[str, typer.Argument(help="on or off")], output: OutputOpt = Format.table
) -> None:
    """Browsing-only mode: GET and HEAD are served, other methods get a 503 page saying so."""
    if state not in ("on", "off"):
        raise CloudletError(f"say 'on' or 'off', not {state!r}")
    view = connect().post(f"/v1/loadbalancers/{name}/readonly", {"on": state == "on"})
    if output == Format.table:
        say(f"Load balancer {name}: browsing-only mode {state}")
    else:
        emit(view, output)


@app.command()
def members(
    name: str,
    add: Annotated[list[str] | None, typer.Option("--add", help="instance to add (repeatable)")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="instance to remove (repeatable)")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Add or remove members by instance name."""
    view = connect().post(f"/v1/loadbalancers/{name}/members", {"add": add or [], "remove": remove or []})
    if output == Format.table:
        say(f"Load balancer {name} members: {', '.join(view['members']) or '(none)'}")
    else:
        emit(view, output)


@app.command()
def drain(
    name: str,
    member: str,
    undo: Annotated[bool, typer.Option("--undo", help="put the member back in service")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Take a member out of the LB (open requests finish), or back in with --undo."""
    view = connect().post(f"/v1/loadbalancers/{name}/drain", {"member": member, "drained": not undo})
    if output == Format.table:
        say(f"Member {member} of {name} {'back in service' if undo else 'drained'}")
    else:
        emit(view, output)
