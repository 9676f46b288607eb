"""Instance commands, at the top level as in incus: launch, list, show, start, stop, restart, delete, exec,
console, events."""

from __future__ import annotations

__all__ = ["register"]

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudlet.cli.client import Client, connect
from cloudlet.cli.output import Format, LabelOpt, OutputOpt, SelectorOpt, bulk, console, emit, labels_of, say
from cloudlet.core.errors import CloudletError, NotFound

COLUMNS = ["name", "state", "image", "network", "ip", "dns_name", "host", "zone", "cpus", "memory_mib"]
Wait = Annotated[bool, typer.Option("--wait", help="wait until done")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q")]
TERMINAL = {"running", "exited", "failed", "unschedulable", "stopped"}
CONSOLE_PAGE = 1 << 20  # the largest console page the API gives


def wait_for(client: Client, name: str, want: set[str], timeout: float = 180.0, gone: bool = False) -> dict[str, Any]:
    """Polls the instance, showing its state, until it reaches one of `want` (or disappears, with gone)."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    with console().status(f"{name}: waiting", spinner="dots") as status:
        while time.monotonic() < deadline:
            try:
                view = client.get(f"/v1/instances/{name}")
            except NotFound:
                if gone:
                    return {}
                raise
            status.update(f"{name}: {view['state']} {view.get('message') or ''}")
            if not gone and view["state"] in want and view["observed_generation"] == view["generation"]:
                return view
            time.sleep(0.1)
    raise CloudletError(f"timed out after {timeout:.0f} s waiting for {name} (last state {view.get('state')})")


def _read_user_data(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CloudletError(f"cannot read the user-data file {path}: {exc}") from None


def _exec_many(client: Client, selector: str, command: list[str], timeout: float, output: Format) -> int:
    """Runs command on every running instance the selector matches, in parallel; prints each exit code and
    output, in name order; returns the largest exit code (0 when all succeeded)."""
    from concurrent.futures import ThreadPoolExecutor

    found = client.get("/v1/instances", {"selector": selector})["items"]
    names = sorted(i["name"] for i in found if i["state"] == "running")
    if not names:
        raise CloudletError(f"no running instance matches {selector!r}")

    def one(name: str) -> dict[str, Any]:
        try:
            result: dict[str, Any] = client.post(f"/v1/instances/{name}/exec", {"command": command, "timeout": timeout})
        except CloudletError as exc:
            return {"name": name, "exit_code": -1, "stdout": "", "stderr": exc.message + "\n"}
        return {"name": name, **result}

    with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        results = list(pool.map(one, names))
    if output != Format.table:
        emit(results, output)
    else:
        for r in results:
            sys.stdout.write(f"=== {r['name']}: exit {r['exit_code']}\n{r['stdout']}{r['stderr']}")
    return max((abs(r["exit_code"]) for r in results), default=0)


def health_check(what: str | None, interval: float | None, fall: int | None, rise: int | None) -> dict[str, Any] | None:
    """--health tcp:PORT | http:PORT[/PATH] | process:NAME as the API's health object (cloudletd validates it)."""
    timing = {k: v for k, v in (("interval_s", interval), ("fall", fall), ("rise", rise)) if v is not None}
    if what is None:
        if timing:
            raise CloudletError("--health-interval, --health-fall and --health-rise need --health")
        return None
    kind, _, arg = what.partition(":")
    check: dict[str, Any] = {"type": kind, **timing}
    if interval is not None:  # the default timeout (1 s) must stay below a short interval
        check["timeout_s"] = min(1.0, interval / 2)
    if kind == "process" and arg:
        check["process"] = arg
    elif kind in ("tcp", "http") and arg:
        port, slash, path = arg.partition("/")
        if not port.isdigit() or (kind == "tcp" and slash):
            raise CloudletError(f"--health {what}: give tcp:PORT or http:PORT/PATH (PORT a number)")
        check["port"] = int(port)
        if slash:
            check["path"] = "/" + path
    else:
        raise CloudletError(f"--health {what}: give tcp:PORT, http:PORT/PATH or process:NAME")
    return check


def _health_line(view: dict[str, Any]) -> str | None:
    """healthy since 12:00:01 (http:80/ every 2 s, fall 3, rise 2): the show table's one line for health."""
    check, health = view.get("health_check"), view.get("health") or {}
    if not check:
        return None
    what = {"tcp": str(check["port"]), "http": f"{check['port']}{check['path']}"}.get(check["type"], check["process"])
    line = f"{health.get('state', 'unknown')}"
    if health.get("since"):
        line += " since " + time.strftime("%H:%M:%S", time.localtime(health["since"]))
    line += f" ({check['type']}:{what} every {check['interval_s']:g} s, fall {check['fall']}, rise {check['rise']})"
    if health.get("state") == "unhealthy" and health.get("last_error"):
        line += f": {health['last_error']}"
    return line


def _check_reached(view: dict[str, Any], want: str) -> None:
    if view["state"] != want:
        raise CloudletError(f"instance {view['name']} is {view['state']}: {view.get('message') or 'see events'}")


def _why(name: str, output: Format) -> None:
    view = connect().get(f"/v1/instances/{name}/why")
    if output != Format.table:
        emit(view, output)
        return
    where = f"on {view['host']} ({view['zone']})" if view["host"] else "on no host"
    say(f"Instance {name} is {view['state']} {where}" + (f": {view['message']}" if view["message"] else ""))
    if not view["hosts"]:
        say("no placement recorded yet")
        return
    rows = []
    for h in view["hosts"]:
        if h["verdict"] == "rejected":
            reason = f"{h['filter']['name']}: {h['filter']['reason']}"
        else:
            reason = " ".join(f"{k}={v:g}" for k, v in h["weights"].items())
            if h.get("decided_by"):
                reason = f"behind on {h['decided_by']}; {reason}"
        rows.append({**h, "total": None if h.get("total") is None else f"{h['total']:g}", "why": reason})
    emit(rows, output, ["host", "zone", "verdict", "total", "why"])
    if view["more"]:
        say(f"... and {view['more']} more hosts")
    multipliers = ", ".join(f"{k} x{v:g}" for k, v in view["multipliers"].items())
    say(f"weights (value x multiplier, highest total wins): {multipliers}")


def register(app: typer.Typer) -> None:
    @app.command()
    def launch(
        image: Annotated[str, typer.Argument(help="image to boot (or, with --from-snapshot, the NAME)")],
        name: Annotated[str | None, typer.Argument()] = None,
        from_snapshot: Annotated[str | None, typer.Option(help="boot a copy of this instance snapshot")] = None,
        network: Annotated[str, typer.Option(help="network to attach to")] = "default",
        cpus: Annotated[float, typer.Option(help="CPU limit (cores)")] = 1.0,
        memory: Annotated[int, typer.Option(help="memory limit in MiB")] = 256,
        disk: Annotated[int, typer.Option("--disk-gib", help="root disk size limit in GiB")] = 2,
        restart: Annotated[str, typer.Option(help="always or never")] = "always",
        net_raw: Annotated[
            bool, typer.Option("--net-raw", help="allow raw sockets (CAP_NET_RAW) in its netns")
        ] = False,
        command: Annotated[str | None, typer.Option(help="shell command to run instead of the image's")] = None,
        zone: Annotated[str | None, typer.Option(help="place only in this zone")] = None,
        group: Annotated[
            str | None, typer.Option(help="placement group: its instances spread over zones, then hosts")
        ] = None,
        anti_affinity: Annotated[
            str, typer.Option(help="prefer: avoid a host holding one of the group; hosts: never share one")
        ] = "prefer",
        secgroup: Annotated[
            list[str] | None, typer.Option("--secgroup", help="security group (repeatable; default: default)")
        ] = None,
        user_data: Annotated[
            Path | None, typer.Option("--user-data", help="script (#!...) or cloud-config to run at boot")
        ] = None,
        replicas: Annotated[
            int, typer.Option(help="1: keep a copy of its root disk on a host in another zone", min=0, max=1)
        ] = 0,
        replica_interval: Annotated[float, typer.Option(help="seconds between replica updates")] = 5.0,
        ha: Annotated[bool, typer.Option("--ha", help="restart it on another host when its host fails")] = False,
        health: Annotated[
            str | None, typer.Option(help="health check: tcp:PORT, http:PORT/PATH (expects 200) or process:NAME")
        ] = None,
        health_interval: Annotated[float | None, typer.Option(help="seconds between probes (default 2)")] = None,
        health_fall: Annotated[int | None, typer.Option(help="failures that make it unhealthy (default 3)")] = None,
        health_rise: Annotated[int | None, typer.Option(help="successes that make it healthy (default 2)")] = None,
        label: LabelOpt = None,
        wait: Annotated[bool, typer.Option("--wait", help="wait until running, showing progress")] = False,
        output: OutputOpt = Format.table,
    ) -> None:
        """Launch an instance of IMAGE named NAME, or a copy of a snapshot: launch --from-snapshot SNAP NAME."""
        if from_snapshot:
            if name is not None:
                raise CloudletError("with --from-snapshot give only the new instance's NAME")
            name, image_name = image, None
        elif name is None:
            raise CloudletError("missing NAME: cloudlet launch IMAGE NAME")
        else:
            image_name = image
        client = connect()
        body = {
            "name": name,
            "image": image_name,
            "from_snapshot": from_snapshot,
            "network": network,
            "cpus": cpus,
            "memory_mib": memory,
            "disk_gib": disk,
            "restart": restart,
            "net_raw": net_raw,
            "zone": zone,
            "group": group,
            "anti_affinity": anti_affinity,
            "command": ["/bin/sh", "-c", command] if command else None,
            "labels": labels_of(label),
            "secgroups": secgroup or [],
            "user_data": _read_user_data(user_data) if user_data else None,
            "replicas": replicas,
            "replica_interval_s": replica_interval,
            "ha": ha,
            "health": health_check(health, health_interval, health_fall, health_rise),
        }
        view = client.post("/v1/instances", body)
        if wait:
            view = wait_for(client, name, TERMINAL)
            _check_reached(view, "running")
        if output == Format.table:
            say(f"Instance {name} {'running at ' + str(view['ip']) if view['state'] == 'running' else 'created'}")
        else:
            emit(view, output)

    @app.command("list")
    def list_(selector: SelectorOpt = None, output: OutputOpt = Format.table) -> None:
        """List instances."""
        client = connect()
        items: list[dict[str, Any]] = []
        after = None
        while True:
            resp = client.get("/v1/instances", params={"after": after, "selector": selector})
            items += resp["items"]
            after = resp.get("next")
            if not after:
                break
        emit(items, output, COLUMNS)

    app.command("ls", hidden=True)(list_)

    @app.command()
    def show(name: str, output: OutputOpt = Format.table) -> None:
        """Show one instance."""
        view = connect().get(f"/v1/instances/{name}")
        if output == Format.table:
            view = {k: v for k, v in view.items() if k != "health_check"} | {"health": _health_line(view)}
        emit(view, output)

    def _action(action: str, names: list[str], wait: bool, quiet: bool, want: str, output: Format) -> None:
        client = connect()

        def one(name: str) -> dict[str, Any]:
            view: dict[str, Any] = client.post(f"/v1/instances/{name}/actions", {"action": action})
            if wait:
                view = wait_for(client, name, TERMINAL)
                _check_reached(view, want)
            return view

        bulk(names, one, lambda n: f"Instance {n} {action} {'done' if wait else 'requested'}", quiet, output)

    @app.command()
    def start(names: list[str], wait: Wait = False, quiet: Quiet = False, output: OutputOpt = Format.table) -> None:
        """Start stopped instances."""
        _action("start", names, wait, quiet, "running", output)

    @app.command()
    def stop(names: list[str], wait: Wait = False, quiet: Quiet = False, output: OutputOpt = Format.table) -> None:
        """Stop instances (their files are kept)."""
        _action("stop", names, wait, quiet, "stopped", output)

    @app.command()
    def restart(names: list[str], wait: Wait = False, quiet: Quiet = False, output: OutputOpt = Format.table) -> None:
        """Restart instances."""
        _action("restart", names, wait, quiet, "running", output)

    @app.command()
    def delete(
        names: list[str],
        wait: Wait = False,
        quiet: Quiet = False,
        cascade: Annotated[bool, typer.Option("--cascade", help="also its snapshots and their clones")] = False,
        output: OutputOpt = Format.table,
    ) -> None:
        """Delete instances and everything they own; carries on past failures and reports them all."""
        client = connect()

        def one(name: str) -> dict[str, Any]:
            view: dict[str, Any] = client.request("DELETE", f"/v1/instances/{name}", params={"cascade": cascade})
            if wait:
                wait_for(client, name, set(), gone=True)
            return view

        bulk(names, one, lambda n: f"Instance {n} deleted", quiet, output)

    app.command("rm", hidden=True)(delete)

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def exec(
        name: str,
        command: Annotated[list[str] | None, typer.Argument(help="command after --")] = None,
        timeout: Annotated[float, typer.Option(help="seconds before the command is killed (exit code 124)")] = 60.0,
        selector: Annotated[
            str | None, typer.Option("-l", "--selector", help="run on every running instance matching KEY=VALUE,...")
        ] = None,
        output: OutputOpt = Format.table,
    ) -> None:
        """Run a command in an instance: cloudlet exec NAME -- CMD...; its exit code passes through. Output past
        the cloud's cap (1 MiB a stream by default) is dropped, and a last line says so. With -l SELECTOR (exec
        -l KEY=VALUE -- CMD...), on every matching instance at once, printing each one's exit code and output."""
        client = connect()
        client.timeout = timeout + 30  # the answer comes when the command ends
        if selector is not None:  # there is no NAME: the first word is the command's
            raise typer.Exit(_exec_many(client, selector, [name, *(command or [])], timeout, output))
        if not command:
            raise CloudletError("missing command: cloudlet exec NAME -- CMD...")
        result = client.post(f"/v1/instances/{name}/exec", {"command": command, "timeout": timeout})
        if output != Format.table:
            emit(result, output)
        else:
            sys.stdout.write(result["stdout"])
            sys.stderr.write(result["stderr"])
        raise typer.Exit(result["exit_code"])

    @app.command()
    def metadata(
        name: str,
        path: Annotated[str | None, typer.Argument(help="one document, e.g. meta-data/instance-id")] = None,
        output: OutputOpt = Format.table,
    ) -> None:
        """Show what the instance reads from http://169.254.169.254/latest/ (every document, or the one at PATH)."""
        docs: dict[str, str] = connect().get(f"/v1/instances/{name}/metadata")["documents"]
        if path is None:
            # a table shows each document's first line (user-data and JSON documents span several)
            emit(docs if output != Format.table else {k: v.partition("\n")[0] for k, v in docs.items()}, output)
            return
        key = path.strip("/").removeprefix("latest/")
        if key not in docs:
            raise NotFound(f"instance {name} has no metadata document {key}; 'cloudlet metadata {name}' lists them")
        sys.stdout.write(docs[key] if docs[key].endswith("\n") else docs[key] + "\n")

    @app.command("console")
    def console_(
        name: str,
        offset: Annotated[int | None, typer.Option(help="print from this byte on, not just the last 64 KiB")] = None,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing what the instance prints")] = False,
        output: OutputOpt = Format.table,
    ) -> None:
        """Show what the instance printed: the last 64 KiB, or everything from --offset; -f keeps reading."""
        client = connect()
        path = f"/v1/instances/{name}/console"
        page = client.get(path, None if offset is None else {"offset": offset, "limit": CONSOLE_PAGE})
        if output != Format.table:
            emit(page, output)
            return
        try:
            while True:
                sys.stdout.write(page["output"])
                sys.stdout.flush()
                at = page["next_offset"]
                if at >= page["size"]:
                    if not follow:
                        return
                    time.sleep(0.5)
                page = client.get(path, {"offset": at, "limit": CONSOLE_PAGE})
                if page["size"] < at:  # the log was rotated: read the new one from its start
                    page = client.get(path, {"offset": 0, "limit": CONSOLE_PAGE})
        except KeyboardInterrupt:
            return

    @app.command()
    def why(name: str, output: OutputOpt = Format.table) -> None:
        """Why the instance is on its host, or on none: every host placement weighed, with its verdict and the
        filter that rejected it or the weights that ranked it (highest total wins)."""
        _why(name, output)

    @app.command()
    def recover(name: str, output: OutputOpt = Format.table) -> None:
        """Fence the instance, keep a forensic snapshot of its disk and start a replacement (from its replica,
        else its newest snapshot, else its image), as a failed health check does; see `cloudlet events NAME`."""
        view = connect().post(f"/v1/instances/{name}/recover")
        if output == Format.table:
            say(f"recovering instance {name} (follow it with 'cloudlet events {name}')")
        else:
            emit(view, output)

    def replace(
        name: str,
        from_snapshot: Annotated[str, typer.Option("--from-snapshot", help="an instance snapshot on its host")],
        output: OutputOpt = Format.table,
    ) -> None:
        """Swap the instance's root disk for a clone of a snapshot and restart it: same names, address, EIP and
        load balancer membership."""
        view = connect().post(f"/v1/instances/{name}/replace", {"from_snapshot": from_snapshot})
        if output == Format.table:
            say(f"instance {name} is restarting from snapshot {from_snapshot}")
        else:
            emit(view, output)

    group = typer.Typer(help="Instance commands (the others are at the top level: launch, list, show...).")
    group.command("why")(why)
    group.command("replace")(replace)
    group.command("recover")(recover)
    app.add_typer(group, name="instance")

    @app.command()
    def events(
        name: Annotated[str | None, typer.Argument()] = None,
        limit: Annotated[int, typer.Option(help="most recent N")] = 50,
        output: OutputOpt = Format.table,
    ) -> None:
        """Show what happened, and why (all resources, or one by NAME)."""
        params: dict[str, Any] = {"limit": limit}
        if name:
            params["name"] = name
        emit(
            connect().get("/v1/events", params=params)["items"],
            output,
            ["time", "kind", "name", "type", "reason", "message"],
        )
