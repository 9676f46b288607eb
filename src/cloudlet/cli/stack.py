"""cloudlet stack plan|apply|list|show|delete|schema|deploy|flag|readonly: whole environments from YAML."""

from __future__ import annotations

__all__ = ["app"]

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudlet.cli.client import Client, connect
from cloudlet.cli.output import Format, OutputOpt, SelectorOpt, emit, say
from cloudlet.core.errors import CloudletError, NotFound

app = typer.Typer(
    help="Stacks: environments described in YAML (layers, networks, LBs, EIPs, hooks).", no_args_is_help=True
)
COLUMNS = ["name", "state", "layers", "flags", "message"]
File = Annotated[Path, typer.Argument(help="the stack document (YAML)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q")]
SYMBOL = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CloudletError(f"cannot read {path}: {exc}") from None


def _print_plan(view: dict[str, Any]) -> None:
    if view["stack_op"] != "unchanged":
        fields = view.get("stack_fields") or []
        say(
            f"{SYMBOL.get(view['stack_op'], '~')} stack {view['stack']}"
            + (f"  ({', '.join(fields)})" if fields else "")
        )
    for a in view["actions"]:
        line = f"{SYMBOL[a['op']]:>3} {a['kind'].lower()} {a['name']}"
        changes = a.get("changes") or {}
        if changes:
            line += "  (" + ", ".join(f"{k}: {v['from']!r} -> {v['to']!r}" for k, v in changes.items()) + ")"
        if a.get("forced_by"):
            line += f"  forces replacement: {', '.join(a['forced_by'])}"
        say(line)
    s = view["summary"]
    say(
        f"Plan: {s['create']} to create, {s['update']} to update, {s['replace']} to replace, {s['delete']} to delete"
        f" ({s['unchanged']} unchanged)"
    )


@app.command()
def plan(file: File, output: OutputOpt = Format.table) -> None:
    """Show what applying FILE would change: create, update, replace or delete per resource."""
    view = connect().post("/v1/stacks/plan", {"yaml": _read(file)})
    if output != Format.table:
        emit(view, output)
    else:
        _print_plan(view)


ERROR_GRACE = 5.0  # seconds a stack may stay in error before --wait gives up


def _wait(client: Client, name: str, timeout: float) -> dict[str, Any]:
    """Prints one line per resource as it becomes ready, until the stack is ready (or fails to be)."""
    deadline = time.monotonic() + timeout
    seen: dict[tuple[str, str], str] = {}
    start = time.monotonic()
    view: dict[str, Any] = {}
    error_since: float | None = None
    while time.monotonic() < deadline:
        view = client.get(f"/v1/stacks/{name}")
        for p in view["progress"]:
            key = (p["kind"], p["name"])
            if seen.get(key) != p["state"]:
                seen[key] = p["state"]
                say(f"{time.monotonic() - start:6.1f}s  {p['kind'].lower()} {p['name']}: {p['state']}")
        if view["state"] == "ready" and view["observed_generation"] == view["generation"]:
            say(f"Stack {name} ready in {time.monotonic() - start:.1f} s")
            return view
        failed = [n for n, m in view["members"].items() if m["state"] == "failed"]
        if failed:
            raise CloudletError(f"stack {name}: {', '.join(failed)} failed: {view['members'][failed[0]]['message']}")
        # an error can be passing (a name still being freed): give up on one that lasts
        error_since = (error_since or time.monotonic()) if view["state"] == "error" else None
        if error_since is not None and time.monotonic() - error_since > ERROR_GRACE:
            raise CloudletError(f"stack {name}: {view['message']}")
        time.sleep(0.3)
    raise CloudletError(
        f"timed out after {timeout:.0f} s waiting for stack {name}: {view.get('message') or view.get('state')}"
    )


@app.command()
def apply(
    file: File,
    wait: Annotated[bool, typer.Option("--wait", help="wait until every resource is ready, showing progress")] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits")] = 600.0,
    output: OutputOpt = Format.table,
) -> None:
    """Create or update the stack FILE describes; applying the same file again changes nothing."""
    client = connect()
    view = client.post("/v1/stacks", {"yaml": _read(file)})
    if output != Format.table:
        emit(view, output)
    else:
        _print_plan(view)
    if wait:
        _wait(client, view["stack"], timeout)


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List stacks."""
    emit(connect().get("/v1/stacks", {"selector": selector})["items"], output, COLUMNS)


app.command("ls", hidden=True)(list_)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show a stack: its members with their lifecycle state, flags and progress."""
    view = connect().get(f"/v1/stacks/{name}")
    if output != Format.table:
        emit(view, output)
        return
    say(f"stack {view['name']}: {view['state']}  flags {json.dumps(view['flags'])}  readonly {view['readonly']}")
    if view["message"]:
        say(f"  {view['message']}")
    rows = [{"name": p["name"], "kind": p["kind"], "state": p["state"]} for p in view["progress"]]
    for row in rows:
        m = view["members"].get(row["name"]) if row["kind"] == "Instance" else None
        row["ip"] = m["ip"] if m else None
    emit(rows, Format.table, ["name", "kind", "state", "ip"])


@app.command()
def delete(
    name: str,
    wait: Annotated[bool, typer.Option("--wait", help="wait until everything it made is gone")] = False,
    quiet: Quiet = False,
) -> None:
    """Delete a stack and everything it made (its shutdown hooks run first)."""
    client = connect()
    client.delete(f"/v1/stacks/{name}")
    if wait:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                client.get(f"/v1/stacks/{name}")
            except NotFound:
                break
            time.sleep(0.3)
        else:
            raise CloudletError(f"stack {name} is still being deleted after 300 s")
    say(f"Stack {name} deleted", quiet)


app.command("rm", hidden=True)(delete)


@app.command()
def schema() -> None:
    """Print the JSON Schema of stack documents (for editors: yaml-language-server's $schema)."""
    sys.stdout.write(json.dumps(connect().get("/v1/stacks/schema"), indent=2) + "\n")


@app.command()
def deploy(
    name: str,
    layer: Annotated[str | None, typer.Option(help="the layer to deploy")] = None,
    batch: Annotated[int, typer.Option(help="instances at a time")] = 1,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="follow it until it finished")] = True,
    status: Annotated[bool, typer.Option("--status", help="show the running or last deploy; start none")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Rolling deploy: each batch out of its LBs, deploy hook, back in once healthy. It runs in the background;
    this follows it (exits 1 if it failed) unless --no-wait."""
    client = connect()
    if status:
        result = client.get(f"/v1/stacks/{name}/deploy")
    elif layer is None:
        raise CloudletError("give --layer LAYER to deploy (or --status to see the last deploy)")
    else:
        result = client.post(f"/v1/stacks/{name}/deploy", {"layer": layer, "batch": batch})
    while wait and result["state"] == "running":
        time.sleep(0.5)
        result = client.get(f"/v1/stacks/{name}/deploy")
    if output != Format.table:
        emit(result, output)
    else:
        for r in result["runs"]:
            say(f"{r['instance']}: {r['event']} exit {r['exit_code']}")
    if result["state"] == "failed":
        raise CloudletError(f"deploy of layer {result['layer']} of stack {name} failed: {result['message']}")
    if output == Format.table:
        done = {"running": "is being deployed", "succeeded": "deployed"}[result["state"]]
        say(f"Layer {result['layer']} of stack {name} {done}")


@app.command()
def flag(
    name: str,
    pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE to set, KEY- to remove")],
    output: OutputOpt = Format.table,
) -> None:
    """Set feature flags: every instance's metadata has them at /latest/meta-data/flags/KEY."""
    flags: dict[str, str | None] = {}
    for pair in pairs:
        if pair.endswith("-") and "=" not in pair:
            flags[pair[:-1]] = None
        elif "=" in pair:
            key, _, value = pair.partition("=")
            flags[key] = value
        else:
            raise CloudletError(f"{pair!r}: use KEY=VALUE to set a flag or KEY- to remove it")
    view = connect().post(f"/v1/stacks/{name}/flags", {"flags": flags})
    if output != Format.table:
        emit(view, output)
    else:
        say(f"Stack {name} flags: {', '.join(f'{k}={v}' for k, v in view['flags'].items()) or 'none'}")


@app.command()
def readonly(
    name: str, state: Annotated[str, typer.Argument(help="on or off")], output: OutputOpt = Format.table
) -> None:
    """Browsing-only mode: the stack's LBs serve GET and HEAD only; flag readonly=true for its apps."""
    if state not in ("on", "off"):
        raise CloudletError(f"{state!r}: say on or off")
    view = connect().post(f"/v1/stacks/{name}/readonly", {"on": state == "on"})
    if output != Format.table:
        emit(view, output)
    else:
        say(f"Stack {name} is read-only" if state == "on" else f"Stack {name} is read-write")
