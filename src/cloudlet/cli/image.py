"""cloudlet image list|show|build|import|delete."""

from __future__ import annotations

__all__ = ["app"]

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, OutputOpt, SelectorOpt, console, emit, say
from cloudlet.core.errors import CloudletError

app = typer.Typer(
    help="Images instances boot from: busybox (built in), Debian (debootstrap), imported tarballs.",
    no_args_is_help=True,
)
COLUMNS = ["name", "tenant", "source", "state", "packages", "size_mib", "hosts", "digest"]


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List images: the public ones and your own."""
    emit(connect().get("/v1/images", {"selector": selector})["items"], output, COLUMNS)


app.command("ls", hidden=True)(list_)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show one image."""
    emit(connect().get(f"/v1/images/{name}"), output)


@app.command()
def build(
    name: Annotated[str, typer.Argument(help="image name, e.g. debian-12")],
    packages: Annotated[str, typer.Option(help="comma-separated Debian packages to include")] = "",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the build")] = True,
    output: OutputOpt = Format.table,
) -> None:
    """Build a Debian image with debootstrap (cached by content): your own, or with the admin token a public one."""
    client = connect()
    pkgs = [p.strip() for p in packages.split(",") if p.strip()]
    view = client.post("/v1/images", {"name": name, "packages": pkgs})
    if wait:
        started = time.monotonic()
        with console().status(f"{name}: {view['state']}") as status:
            while view["state"] not in ("ready", "failed"):
                time.sleep(1)
                view = client.get(f"/v1/images/{name}")
                status.update(f"{name}: {view['state']} ({time.monotonic() - started:.0f} s)")
        if view["state"] == "failed":
            raise CloudletError(f"image {name} failed to build: {view['message']}")
    if output == Format.table:
        say(f"Image {name} {view['state']}")
    else:
        emit(view, output)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="rootfs tarball (.tar or .tar.gz)")],
    name: str,
    output: OutputOpt = Format.table,
) -> None:
    """Import a root filesystem tarball as image NAME."""
    if not file.is_file():
        raise CloudletError(f"{file} is not a readable file")

    def chunks() -> Iterator[bytes]:
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                yield block

    view = connect().request(
        "PUT", f"/v1/images/{name}/rootfs", content=chunks(), headers={"Content-Type": "application/octet-stream"}
    )
    if output == Format.table:
        say(f"Image {name} imported")
    else:
        emit(view, output)


@app.command()
def delete(name: str, output: OutputOpt = Format.table) -> None:
    """Delete one of your images (public ones: admin only); refused while anything boots from it."""
    view = connect().request("DELETE", f"/v1/images/{name}")
    if output == Format.table:
        say(f"Image {name} deleted")
    else:
        emit(view, output)
