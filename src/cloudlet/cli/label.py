"""cloudlet label KIND NAME k=v k- ...: set and remove labels on any kind."""

from __future__ import annotations

__all__ = ["register"]

from typing import Annotated

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, OutputOpt, emit, say
from cloudlet.core.errors import CloudletError

# what users type -> the API's path segment
PLURALS = {
    "instance": "instances",
    "network": "networks",
    "eip": "eips",
    "volume": "volumes",
    "snapshot": "snapshots",
    "image": "images",
    "backup": "backups",
    "backup-target": "backup-targets",
    "backup-policy": "backup-policies",
    "host": "hosts",
}


def register(app: typer.Typer) -> None:
    @app.command()
    def label(
        kind: Annotated[str, typer.Argument(help=", ".join(PLURALS))],
        name: str,
        changes: Annotated[list[str], typer.Argument(help="KEY=VALUE sets, KEY- removes")],
        output: OutputOpt = Format.table,
    ) -> None:
        """Set and remove labels: cloudlet label instance web-1 tier=web env- ."""
        plural = PLURALS.get(kind) or (kind if kind in PLURALS.values() else None)
        if plural is None:
            raise CloudletError(f"unknown kind {kind!r}; choose one of {', '.join(PLURALS)}")
        set_, remove = {}, []
        for change in changes:
            if change.endswith("-") and "=" not in change:
                remove.append(change[:-1])
            elif "=" in change:
                key, _, value = change.partition("=")
                set_[key] = value
            else:
                raise CloudletError(f"{change!r}: write KEY=VALUE to set a label or KEY- to remove it")
        view = connect().request("PATCH", f"/v1/{plural}/{name}/labels", json={"set": set_, "remove": remove})
        if output == Format.table:
            say(
                f"{kind.capitalize()} {name} labels: "
                + (", ".join(f"{k}={v}" for k, v in view["labels"].items()) or "none")
            )
        else:
            emit(view, output)
