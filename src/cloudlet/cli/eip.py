"""cloudlet eip allocate|associate|disassociate|release|list|show."""

from __future__ import annotations

__all__ = ["app"]

import secrets
from typing import Annotated

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, LabelOpt, OutputOpt, SelectorOpt, bulk, emit, labels_of, say
from cloudlet.core.errors import CloudletError

app = typer.Typer(
    help="Elastic IPs: public addresses (198.18.0.0/15, reached from the outside namespace and the host) that "
    "point at one instance or load balancer at a time.",
    no_args_is_help=True,
)
COLUMNS = ["name", "address", "target", "private_ip", "state"]


def _done(view: dict[str, object], output: Format, message: str) -> None:
    if output == Format.table:
        say(message)
    else:
        emit(view, output)


@app.command()
def allocate(
    name: Annotated[str | None, typer.Argument(help="its name; one is made up if omitted")] = None,
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Take a free address from the cloud's public pool."""
    name = name or f"eip-{secrets.token_hex(3)}"
    view = connect().post("/v1/eips", {"name": name, "labels": labels_of(label)})
    _done(view, output, f"EIP {name} allocated: {view['address']}")


@app.command()
def associate(
    eip: str,
    target: Annotated[str | None, typer.Argument(help="an instance, or lb:NAME for a load balancer")] = None,
    lb: Annotated[str | None, typer.Option("--lb", help="a load balancer instead of an instance")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Point EIP at an instance or load balancer (moving it if something else holds it)."""
    if (target is None) == (lb is None):
        raise CloudletError("associate needs one target: an instance name, lb:NAME or --lb NAME")
    kind, name = ("LoadBalancer", lb) if lb else ("Instance", target or "")
    if name.startswith("lb:"):
        kind, name = "LoadBalancer", name[3:]
    view = connect().post(f"/v1/eips/{eip}/association", {"target": name, "kind": kind})
    _done(view, output, f"EIP {eip} ({view['address']}) now points at {view['target']}")


@app.command()
def disassociate(eip: str, output: OutputOpt = Format.table) -> None:
    """Detach EIP from its holder; the address stays allocated."""
    view = connect().delete(f"/v1/eips/{eip}/association")
    _done(view, output, f"EIP {eip} ({view['address']}) disassociated")


@app.command()
def release(
    names: list[str],
    force: Annotated[bool, typer.Option("--force", help="also release an EIP that is associated")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Give EIPs back to the pool (refused while associated, unless --force)."""
    client = connect()
    query = "?force=true" if force else ""
    bulk(names, lambda n: client.delete(f"/v1/eips/{n}{query}"), lambda n: f"EIP {n} released", quiet, output)


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List elastic IPs."""
    emit(connect().get("/v1/eips", {"selector": selector})["items"], output, COLUMNS)


app.command("ls", hidden=True)(list_)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show one elastic IP."""
    emit(connect().get(f"/v1/eips/{name}"), output)
