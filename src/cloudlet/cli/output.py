"""Rendering for every command: -o table (default), json or yaml."""

from __future__ import annotations

__all__ = ["OutputOpt", "emit", "say", "bulk"]

import json
import sys
import time
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from cloudlet.core.errors import CloudletError


class Format(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOpt = Annotated[Format, typer.Option("-o", "--output", help="table, json or yaml")]
console = Console(width=None if sys.stdout.isatty() else 200)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value > 1e9:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def emit(data: Any, fmt: Format, columns: list[str] | None = None) -> None:
    if fmt == Format.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif fmt == Format.yaml:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    elif isinstance(data, list):
        cols = columns or (list(data[0]) if data else [])
        table = Table(*[c.upper() for c in cols], box=None, pad_edge=False)
        for row in data:
            table.add_row(*[_cell(row.get(c)) for c in cols])
        console.print(table)
    else:
        table = Table(box=None, show_header=False, pad_edge=False)
        for key in columns or list(data):
            table.add_row(key, _cell(data.get(key)))
        console.print(table)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(message, highlight=False)


def bulk(names: list[str], op: Callable[[str], dict[str, Any]], done: Callable[[str], str], quiet: bool,
         fmt: Format) -> None:
    """Applies op to every name, carrying on past failures; reports each success, then all failures at once."""
    failures, views = [], []
    for name in names:
        try:
            views.append(op(name))
            say(done(name), quiet or fmt != Format.table)
        except CloudletError as exc:
            failures.append(f"{name}: {exc.message}")
    if fmt != Format.table:
        emit(views, fmt)
    if failures:
        raise CloudletError("; ".join(failures))
