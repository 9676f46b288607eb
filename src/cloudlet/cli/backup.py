"""cloudlet backup create|list|show|restore|delete, backup target add|list, backup endpoint allow|list|remove
(admin) and backup policy create|list|verify|delete."""

from __future__ import annotations

__all__ = ["app"]

import re
import time
from typing import Annotated, Any

import typer

from cloudlet.cli.client import Client, connect
from cloudlet.cli.output import Format, LabelOpt, OutputOpt, SelectorOpt, bulk, console, emit, labels_of, say
from cloudlet.cli.volume import wait_ready
from cloudlet.core.errors import CloudletError, NotFound

app = typer.Typer(
    help="Backups of snapshots, volumes and instances, shipped to S3-compatible storage.", no_args_is_help=True
)
target_app = typer.Typer(
    help="Where backups go: any S3-compatible endpoint (for tenants, one the admin allowed).", no_args_is_help=True
)
app.add_typer(target_app, name="target")
endpoint_app = typer.Typer(
    help="The S3 endpoints tenants' backup targets may use (the admin's own targets may point anywhere).",
    no_args_is_help=True,
)
app.add_typer(endpoint_app, name="endpoint")
COLUMNS = ["name", "source_kind", "source", "target", "state", "bytes", "compressed_bytes", "seconds"]


def _wait(client: Client, name: str, timeout: float = 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with console().status(f"{name}: waiting") as status:
        while time.monotonic() < deadline:
            view: dict[str, Any] = client.get(f"/v1/backups/{name}")
            status.update(f"{name}: {view['state']} {view['message']}")
            if view["state"] in ("ready", "failed"):
                if view["state"] == "failed":
                    raise CloudletError(f"backup {name} failed: {view['message']}")
                return view
            time.sleep(0.1)
    raise CloudletError(f"timed out waiting for backup {name}")


@target_app.command("add")
def target_add(
    name: str,
    endpoint: Annotated[
        str, typer.Option(help="e.g. https://s3.example.com; a tenant's must be allowed ('backup endpoint list')")
    ],
    bucket: Annotated[str, typer.Option()],
    access_key: Annotated[str, typer.Option()],
    secret_key: Annotated[str, typer.Option()],
    region: Annotated[str, typer.Option()] = "us-east-1",
    output: OutputOpt = Format.table,
) -> None:
    """Add an S3-compatible backup target."""
    view = connect().post(
        "/v1/backup-targets",
        {
            "name": name,
            "endpoint": endpoint,
            "bucket": bucket,
            "access_key": access_key,
            "secret_key": secret_key,
            "region": region,
        },
    )
    say(f"Backup target {name} added") if output == Format.table else emit(view, output)


@target_app.command("list")
def target_list(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List backup targets (secrets are never shown)."""
    emit(
        connect().get("/v1/backup-targets", {"selector": selector})["items"],
        output,
        ["name", "endpoint", "bucket", "access_key"],
    )


@endpoint_app.command("allow")
def endpoint_allow(
    url: Annotated[str, typer.Argument(help="the endpoint's origin: http(s)://host[:port]")],
    private: Annotated[
        bool,
        typer.Option(
            "--private", help="tenants' targets here may reach loopback, private and link-local addresses too"
        ),
    ] = False,
    name: Annotated[str | None, typer.Option(help="name of the entry (default: made from host and port)")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Admin: let tenants' backup targets use an endpoint (run again to change --private)."""
    view = connect().post("/v1/backup-endpoints", {"url": url, "private": private, "name": name})
    say(f"Backup endpoint {view['url']} allowed as {view['name']}") if output == Format.table else emit(view, output)


@endpoint_app.command("list")
def endpoint_list(output: OutputOpt = Format.table) -> None:
    """The endpoints tenants' backup targets may use."""
    emit(connect().get("/v1/backup-endpoints")["items"], output, ["name", "url", "private"])


@endpoint_app.command("remove")
def endpoint_remove(
    entry: Annotated[str, typer.Argument(help="name or URL of the entry")], output: OutputOpt = Format.table
) -> None:
    """Admin: refuse an endpoint to tenants from now on (their targets there stop working)."""
    client = connect()
    if "://" in entry:
        found = client.get("/v1/backup-endpoints", {"url": entry})["items"]
        if not found:
            raise NotFound(f"backup endpoint {entry} is not allowed; nothing to remove")
        entry = found[0]["name"]
    view = client.delete(f"/v1/backup-endpoints/{entry}")
    say(f"Backup endpoint {view['url']} removed") if output == Format.table else emit(view, output)


@app.command()
def create(
    source: Annotated[str, typer.Argument(help="snapshot, volume or instance")],
    target: Annotated[str | None, typer.Option(help="backup target (default: the only one)")] = None,
    name: Annotated[str | None, typer.Option(help="backup name")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
    label: LabelOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Back up a snapshot (a volume or instance is snapshotted first) to a target."""
    client = connect()
    view = client.post("/v1/backups", {"source": source, "target": target, "name": name, "labels": labels_of(label)})
    if wait:
        view = _wait(client, view["name"])
    say(f"Backup {view['name']} {view['state']}") if output == Format.table else emit(view, output)


@app.command("list")
def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List backups."""
    emit(connect().get("/v1/backups", {"selector": selector})["items"], output, COLUMNS)


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """Show one backup."""
    emit(connect().get(f"/v1/backups/{name}"), output)


@app.command()
def restore(
    name: str,
    new_name: Annotated[str, typer.Argument(help="volume (or bootable snapshot) to create")],
    output: OutputOpt = Format.table,
) -> None:
    """Restore a backup into a new volume, or a bootable snapshot for instance backups; checksum verified."""
    client = connect()
    view = client.post(f"/v1/backups/{name}/restore", {"name": new_name})
    path = "/v1/snapshots" if "source_kind" in view else "/v1/volumes"
    view = wait_ready(client, path, new_name, timeout=3600)
    if view["state"] != "ready":
        raise CloudletError(f"restore of {name} into {new_name} failed: {view['message']}")
    kind = "snapshot" if path.endswith("snapshots") else "volume"
    say(f"Backup {name} restored into {kind} {new_name}") if output == Format.table else emit(view, output)


@app.command()
def delete(
    names: list[str], quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False, output: OutputOpt = Format.table
) -> None:
    """Delete backups, from the target too."""
    client = connect()
    bulk(names, lambda n: client.delete(f"/v1/backups/{n}"), lambda n: f"Backup {n} deleted", quiet, output)


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not m or int(m.group(1)) == 0:
        raise CloudletError(f"interval {text!r} is not a duration such as 30s, 15m, 6h, 1d or 1w")
    return int(m.group(1)) * UNITS[m.group(2)]


policy_app = typer.Typer(help="Scheduled backups with retention, and verified restores.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("create")
def policy_create(
    name: str,
    every: Annotated[str | None, typer.Option(help="interval: 30s, 15m, 6h, 1d, 1w")] = None,
    cron: Annotated[str | None, typer.Option(help="or a cron schedule (UTC): '0 3 * * *'")] = None,
    volume: Annotated[list[str] | None, typer.Option(help="volume to back up (repeatable)")] = None,
    instance: Annotated[list[str] | None, typer.Option(help="instance to back up (repeatable)")] = None,
    selector: Annotated[
        str | None, typer.Option(help="and every volume and instance whose labels match, e.g. backup=nightly")
    ] = None,
    label: LabelOpt = None,
    keep_last: Annotated[int, typer.Option(help="keep the newest N")] = 7,
    keep_daily: Annotated[int, typer.Option(help="and the newest of each of D days")] = 0,
    keep_weekly: Annotated[int, typer.Option(help="and the newest of each of W weeks")] = 0,
    target: Annotated[str | None, typer.Option(help="backup target")] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="after each run, restore the backups into scratch instances and check them")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Back up volumes and instances on an interval or a cron schedule; older backups beyond the retention are
    deleted. With --verify each run's backups are restored, booted and checked, then the scratch copies deleted."""
    body = {
        "name": name,
        "interval_seconds": parse_duration(every) if every else None,
        "schedule": cron,
        "keep_last": keep_last,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "volumes": volume or [],
        "instances": instance or [],
        "selector": selector,
        "target": target,
        "verify": verify,
        "labels": labels_of(label),
    }
    view = connect().post("/v1/backup-policies", body)
    say(f"Backup policy {name} created") if output == Format.table else emit(view, output)


@policy_app.command("list")
def policy_list(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
    """List backup policies."""
    emit(
        connect().get("/v1/backup-policies", {"selector": selector})["items"],
        output,
        [
            "name",
            "interval_seconds",
            "schedule",
            "keep_last",
            "keep_daily",
            "keep_weekly",
            "volumes",
            "instances",
            "selector",
            "last_run",
            "verify",
            "last_verified_at",
        ],
    )


@policy_app.command("verify")
def policy_verify(
    name: str,
    wait: Annotated[bool, typer.Option("--wait", help="until it finished; exit 1 if it failed")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Restore the newest backup of each of the policy's sources into a scratch instance now, check it, delete it."""
    client = connect()
    view = client.post(f"/v1/backup-policies/{name}/verify", {})
    if not wait:
        say(f"Verifying backup policy {name}") if output == Format.table else emit(view, output)
        return
    deadline = time.monotonic() + 3600
    while view["verifying"]:
        if time.monotonic() > deadline:
            raise CloudletError(f"backup policy {name} is still verifying; see it with 'cloudlet dr status'")
        time.sleep(0.5)
        view = client.get(f"/v1/backup-policies/{name}")
    result = view["last_verify"]
    if output != Format.table:
        emit(view, output)
    if not result["ok"]:
        raise CloudletError(f"verifying backup policy {name} failed: {result['message']}")
    say(
        f"Backup policy {name}: {result['backups']} backups {result['message']} in {result['seconds']} s",
        output != Format.table,
    )


@policy_app.command("delete")
def policy_delete(name: str, output: OutputOpt = Format.table) -> None:
    """Delete a policy (the backups it made are kept)."""
    view = connect().delete(f"/v1/backup-policies/{name}")
    say(f"Backup policy {name} deleted") if output == Format.table else emit(view, output)
