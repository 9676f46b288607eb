"""cloudlet secgroup create|list|show|delete, secgroup rule add|delete, secgroup attach|detach."""

from __future__ import annotations

__all__ = ["app"]

from typing import Annotated, Any

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, LabelOpt, OutputOpt, SelectorOpt, bulk, emit, labels_of, say
from cloudlet.core.errors import CloudletError

app = typer.Typer(
    help="Security groups: ingress rules for instances (default: only members of the same group get in).",
    no_args_is_help=True,
)
rule_app = typer.Typer(help="Rules of a security group.", no_args_is_help=True)
app.add_typer(rule_app, name="rule")
COLUMNS = ["name", "description", "rules", "members", "state"]
RULE_COLUMNS = ["id", "protocol", "ports", "cidr", "source_group"]


@app.command()
def create(
    name: str,
    description: Annotated[str, typer.Option(help="what the group is for")] = "",
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a security group (no rules yet: only its own members get in)."""
    view = connect().post("/v1/secgroups", {"name": name, "description": description, "labels": labels_of(label)})
    if output == Format.table:
        say(f"Security group {name} created")
    else:
        emit(view, output)


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List security groups (the tenant's default group is made on first use)."""
    items = connect().get("/v1/secgroups", {"selector": selector})["items"]
    if output == Format.table:
        items = [{**g, "rules": len(g["rules"]), "members": ",".join(g["members"])} for g in items]
    emit(items, output, COLUMNS)


app.command("ls", hidden=True)(list_)


def _show(view: dict[str, Any], output: Format) -> None:
    if output != Format.table:
        emit(view, output)
        return
    say(f"{view['name']}: {view['description'] or '(no description)'}")
    say(f"members: {', '.join(view['members']) or '(none)'}")
    say("rules (besides: members of this group get in):")
    emit(view["rules"], output, RULE_COLUMNS)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show a group: its rules with their ids, and its member instances."""
    _show(connect().get(f"/v1/secgroups/{name}"), output)


@app.command()
def delete(
    names: list[str], quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False, output: OutputOpt = Format.table
) -> None:
    """Delete security groups (refused while instances are in them)."""
    client = connect()
    bulk(names, lambda n: client.delete(f"/v1/secgroups/{n}"), lambda n: f"Security group {n} deleted", quiet, output)


app.command("rm", hidden=True)(delete)


@rule_app.command("add")
def rule_add(
    group: str,
    protocol: Annotated[str, typer.Argument(help="tcp, udp, icmp or all")],
    ports: Annotated[str | None, typer.Argument(help='tcp/udp: "80" or "8000-8100" (omit: every port)')] = None,
    cidr: Annotated[str | None, typer.Option(help="from this IPv4 network, e.g. 0.0.0.0/0")] = None,
    source_group: Annotated[str | None, typer.Option("--source-group", help="from members of this group")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Let traffic in: cloudlet secgroup rule add web tcp 80 --cidr 0.0.0.0/0."""
    if (cidr is None) == (source_group is None):
        raise CloudletError("give exactly one of --cidr or --source-group")
    body = {"protocol": protocol, "ports": ports, "cidr": cidr, "source_group": source_group}
    view = connect().post(f"/v1/secgroups/{group}/rules", body)
    if output == Format.table:
        say(f"Rule added to security group {group}")
        emit(view["rules"], output, RULE_COLUMNS)
    else:
        emit(view, output)


@rule_app.command("delete")
def rule_delete(group: str, rule_id: str, output: OutputOpt = Format.table) -> None:
    """Delete a rule by the id secgroup show lists."""
    view = connect().delete(f"/v1/secgroups/{group}/rules/{rule_id}")
    if output == Format.table:
        say(f"Rule {rule_id} deleted from security group {group}")
    else:
        emit(view, output)


rule_app.command("rm", hidden=True)(rule_delete)


@app.command()
def attach(group: str, instance: str, output: OutputOpt = Format.table) -> None:
    """Put an instance (running or not) into a group; its rules apply within a second."""
    view = connect().post(f"/v1/secgroups/{group}/members", {"instance": instance})
    if output == Format.table:
        say(f"Instance {instance} attached to security group {group}")
    else:
        emit(view, output)


@app.command()
def detach(group: str, instance: str, output: OutputOpt = Format.table) -> None:
    """Take an instance out of a group (it must stay in at least one)."""
    view = connect().delete(f"/v1/secgroups/{group}/members/{instance}")
    if output == Format.table:
        say(f"Instance {instance} detached from security group {group}")
    else:
        emit(view, output)
