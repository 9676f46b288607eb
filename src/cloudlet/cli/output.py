"""Rendering for every command: -o table (default), json or yaml. Tables are plain aligned columns, and rich
(progress spinners) and yaml are imported only when used: imports are most of a CLI command's latency."""

from __future__ import annotations

__all__ = ["OutputOpt", "LabelOpt", "SelectorOpt", "emit", "say", "bulk", "console", "labels_of"]

import functools
import json
import sys
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudlet.core.errors import CloudletError

if TYPE_CHECKING:
    from rich.console import Console


class Format(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOpt = Annotated[Format, typer.Option("-o", "--output", help="table, json or yaml")]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", help="label KEY=VALUE (repeatable)")]
SelectorOpt = Annotated[
    str | None,
    typer.Option("-l", "--selector", help="only those whose labels match: k=v, k!=v, k or !k, joined by ','"),
]


def labels_of(pairs: list[str] | None) -> dict[str, str]:
    """KEY=VALUE options as a dict; the server checks the keys and values."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CloudletError(f"label {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


@functools.cache
def console() -> Console:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


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
        return
    if fmt == Format.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
        return
    rows = data if isinstance(data, list) else [{"key": k, "value": data.get(k)} for k in columns or list(data)]
    cols = (columns or (list(data[0]) if data else [])) if isinstance(data, list) else ["key", "value"]
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    if isinstance(data, list):
        cells.insert(0, [c.upper() for c in cols])
    widths = [max((len(r[i]) for r in cells), default=0) for i in range(len(cols))]
    for r in cells:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)


def bulk(
    names: list[str], op: Callable[[str], dict[str, Any]], done: Callable[[str], str], quiet: bool, fmt: Format
) -> None:
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
