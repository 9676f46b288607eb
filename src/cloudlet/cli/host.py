"""cloudlet host list|show|add|remove|partition (admin): each host's agent, zone, capacity, version and last
heartbeat; added hosts are namespaces of this machine with their own agent and pool (cli/daemons.py)."""

from __future__ import annotations

__all__ = ["app"]

import time
from typing import Annotated

import typer

from cloudlet.cli import daemons
from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, OutputOpt, SelectorOpt, emit, say
from cloudlet.core.config import load_config

app = typer.Typer(help="Hosts: where instances run, each served by its own agent.", no_args_is_help=True)
COLUMNS = ["name", "zone", "state", "cordoned", "cpus", "memory_mib", "version", "heartbeat_age_s", "endpoint"]


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List hosts."""
    emit(connect().get("/v1/hosts", {"selector": selector})["items"], output, COLUMNS)


app.command("ls", hidden=True)(list_)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show one host."""
    emit(connect().get(f"/v1/hosts/{name}"), output)


@app.command()
def add(
    name: str,
    zone: Annotated[str, typer.Option(help="the host's zone (fixed while it exists)")],
    output: OutputOpt = Format.table,
) -> None:
    """Add a host on this machine: its own namespace on the underlay, pool and agent (again: rejoin it)."""
    emit(daemons.add_host(load_config(), name, zone), output)


@app.command()
def remove(
    name: str,
    force: Annotated[
        bool, typer.Option("--force", help="kill everything it runs; its instances are placed again elsewhere")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Remove an added host that holds nothing (or, with --force, whatever it holds)."""
    result = daemons.remove_host(load_config(), name, force)
    if output == Format.table:
        say(f"host {name} removed" + (f"; {len(result['released'])} records released" if result["released"] else ""))
    else:
        emit(result, output)


@app.command()
def partition(
    name: str,
    heal: Annotated[bool, typer.Option("--heal", help="reconnect it")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Cut an added host off the underlay (its peers and the control plane), or reconnect it."""
    daemons.partition_host(load_config(), name, not heal)
    if output == Format.table:
        say(f"host {name} {'reconnected' if heal else 'partitioned'}")
    else:
        emit({"name": name, "partitioned": not heal}, output)


def _cordon(name: str, action: str, output: Format) -> None:
    view = connect().post(f"/v1/hosts/{name}/{action}")
    if output == Format.table:
        say(f"host {name} {action}ed")
    else:
        emit(view, output)


@app.command()
def cordon(name: str, output: OutputOpt = Format.table) -> None:
    """Place nothing new on the host; what runs there stays."""
    _cordon(name, "cordon", output)


@app.command()
def uncordon(name: str, output: OutputOpt = Format.table) -> None:
    """Let placement use the host again."""
    _cordon(name, "uncordon", output)


@app.command()
def drain(
    name: str,
    wait: Annotated[bool, typer.Option("--wait", help="follow it, a line per instance, until it ends")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Cordon the host and move every instance off it (stop, ship the last disk delta, start on another host)."""
    api = connect()
    state = api.post(f"/v1/hosts/{name}/drain")
    if not wait:
        if output == Format.table:
            say(
                f"host {name} draining: {state.get('total', 0)} instances; follow it with 'cloudlet host drain {name} --wait'"
            )
        else:
            emit(state, output)
        return
    seen: set[str] = set()
    while True:
        for m in state.get("moves", []):
            if m["instance"] not in seen and output == Format.table:
                down = f"down {m['downtime_s']:.2f} s" if m.get("downtime_s") is not None else "stopped"
                say(f"moved {m['instance']} to {m['to']} ({down}, {m['bytes']} bytes shipped)")
            seen.add(m["instance"])
        for f in state.get("failed", []):
            if f"failed:{f['instance']}" not in seen and output == Format.table:
                say(f"not moved {f['instance']}: {f['reason']}")
            seen.add(f"failed:{f['instance']}")
        if state.get("state") != "running":
            break
        time.sleep(0.5)
        state = api.get(f"/v1/hosts/{name}/drain")
    if output != Format.table:
        emit(state, output)
    else:
        downs = sorted(m["downtime_s"] for m in state.get("moves", []) if m.get("downtime_s") is not None)
        p50 = f"; downtime p50 {downs[len(downs) // 2]:.2f} s, max {downs[-1]:.2f} s" if downs else ""
        say(
            f"host {name} drain {state.get('state')}: {state.get('moved', 0)} of {state.get('total', 0)} moved "
            f"in {state.get('took_s') or 0:.1f} s{p50}" + (f"; {state['message']}" if state.get("message") else "")
        )
    if state.get("state") != "done":
        raise typer.Exit(1)
