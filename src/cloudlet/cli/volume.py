"""cloudlet volume create|list|show|delete|clone."""

from __future__ import annotations

__all__ = ["app"]

import time
from typing import Annotated, Any

import typer

from cloudlet.cli.client import Client, connect
from cloudlet.cli.output import Format, LabelOpt, OutputOpt, SelectorOpt, bulk, console, emit, labels_of, say
from cloudlet.core.errors import CloudletError

app = typer.Typer(help="Volumes: pool-backed disks with a size limit; snapshot and clone them.", no_args_is_help=True)
COLUMNS = ["name", "size_gib", "state", "attached_to", "path", "source_snapshot_id"]
Cascade = Annotated[bool, typer.Option("--cascade", help="also delete what depends on it")]


def wait_ready(client: Client, path: str, name: str, timeout: float = 60) -> dict[str, Any]:
    """Polls a volume or snapshot until it is ready; ready means the pool volume exists for real."""
    deadline = time.monotonic() + timeout
    with console().status(f"{name}: waiting"):
        while time.monotonic() < deadline:
            view: dict[str, Any] = client.get(f"{path}/{name}")
            if view["state"] in ("ready", "lost", "failed"):
                return view
            time.sleep(0.05)
    raise CloudletError(f"timed out waiting for {name}")


@app.command()
def create(
    name: str,
    size: Annotated[int, typer.Option("--size", help="size in GiB")],
    replicas: Annotated[int, typer.Option(help="1: keep a copy on a host in another zone", min=0, max=1)] = 0,
    replica_interval: Annotated[float, typer.Option(help="seconds between replica updates")] = 5.0,
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create an empty volume of SIZE GiB."""
    client = connect()
    body = {"name": name, "size_gib": size, "labels": labels_of(label), "replicas": replicas}
    client.post("/v1/volumes", {**body, "replica_interval_s": replica_interval})
    view = wait_ready(client, "/v1/volumes", name)
    say(f"Volume {name} created ({size} GiB)") if output == Format.table else emit(view, output)


@app.command()
def clone(snapshot: str, new_name: str, label: LabelOpt = None, output: OutputOpt = Format.table) -> None:
    """Create volume NEW_NAME as a copy-on-write clone of SNAPSHOT."""
    client = connect()
    client.post("/v1/volumes/clone", {"snapshot": snapshot, "name": new_name, "labels": labels_of(label)})
    view = wait_ready(client, "/v1/volumes", new_name)
    say(f"Volume {new_name} cloned from {snapshot}") if output == Format.table else emit(view, output)


def _wait_attached(client: Client, name: str, want: bool) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view: dict[str, Any] = client.get(f"/v1/volumes/{name}")
        if view["attached"] == want:
            return view
        if view.get("message"):
            raise CloudletError(f"volume {name} did not {'attach' if want else 'detach'}: {view['message']}")
        time.sleep(0.05)
    raise CloudletError(f"volume {name} did not {'attach' if want else 'detach'} within 30 s: see events")


@app.command()
def attach(
    name: str,
    instance: str,
    path: Annotated[str, typer.Option(help="mount point inside")] = "/data",
    output: OutputOpt = Format.table,
) -> None:
    """Attach a volume to an instance; a running instance sees it at once, and after every restart."""
    client = connect()
    client.post(f"/v1/volumes/{name}/attach", {"instance": instance, "path": path})
    view = _wait_attached(client, name, True)
    say(f"Volume {name} attached to {instance} at {path}") if output == Format.table else emit(view, output)


@app.command()
def detach(name: str, output: OutputOpt = Format.table) -> None:
    """Detach a volume from its instance."""
    client = connect()
    client.post(f"/v1/volumes/{name}/detach")
    view = _wait_attached(client, name, False)
    say(f"Volume {name} detached") if output == Format.table else emit(view, output)


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List volumes."""
    emit(connect().get("/v1/volumes", {"selector": selector})["items"], output, COLUMNS)


app.command("ls", hidden=True)(list_)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show one volume and what depends on it."""
    emit(connect().get(f"/v1/volumes/{name}"), output)


@app.command()
def delete(
    names: list[str],
    cascade: Cascade = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Delete volumes (refused while snapshots depend on them, unless --cascade)."""
    client = connect()
    bulk(
        names,
        lambda n: client.request("DELETE", f"/v1/volumes/{n}", params={"cascade": cascade}),
        lambda n: f"Volume {n} deleted",
        quiet,
        output,
    )


app.command("rm", hidden=True)(delete)
