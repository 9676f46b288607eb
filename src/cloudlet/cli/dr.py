"""cloudlet dr drill|show|status|schedule: DR drills, a stack rebuilt in another zone with its RTO and RPO
measured, by hand or on a schedule."""

from __future__ import annotations

__all__ = ["app"]

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, OutputOpt, emit, say
from cloudlet.core.errors import CloudletError

app = typer.Typer(
    help="DR drills: rebuild a stack in another zone from its replicas, measure RTO and RPO, fail back.",
    no_args_is_help=True,
)
COLUMNS = ["stack", "name", "state", "to_zone", "rto", "rpo", "failback_rto", "verdict", "finished", "schedule"]
POLICY_COLUMNS = ["policy", "verify", "last_verified", "result"]
# the stack labels a schedule is kept in (resilience/drills.py DrillScheduler reads them); spelt here because the
# CLI imports no server code
EVERY, TO_ZONE, SINCE = "cloudlet.io/dr-every", "cloudlet.io/dr-to-zone", "cloudlet.io/dr-since"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _steps(view: dict[str, Any]) -> list[str]:
    """One line per finished step, as the CLI shows progress."""
    return [
        f"{leg['leg']} to {leg['to_zone']}: {s['step']} {s['took_s']:.2f}s  {s['detail']}"
        for leg in view["legs"]
        for s in leg["steps"]
        if s["took_s"] is not None
    ]


@app.command()
def drill(
    stack: str,
    to_zone: Annotated[str, typer.Option("--to-zone", help="the zone to rebuild the stack in")],
    from_backups: Annotated[bool, typer.Option("--from-backups", help="restore from offsite backups")] = False,
    failback: Annotated[bool, typer.Option("--failback", help="then back to the zone it ran in, timed apart")] = False,
    report: Annotated[Path | None, typer.Option(help="also write the JSON report here (implies --wait)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow it, step by step, until it finished")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Start a drill (cloudletd runs it in the background). With --wait, show each step as it finishes and the
    report; exit 1 if the drill failed."""
    client = connect()
    body = {"to_zone": to_zone, "from_backups": from_backups, "failback": failback}
    view = client.post(f"/v1/stacks/{stack}/drills", body)
    if not (wait or report):
        if output == Format.table:
            say(f"Drill {view['name']} of stack {stack} to zone {to_zone} started; see it with 'cloudlet dr show'")
        else:
            emit(view, output)
        return
    shown = 0
    while True:
        view = client.get(f"/v1/drills/{view['name']}")
        lines = _steps(view)
        if output == Format.table:
            for line in lines[shown:]:
                say(line)
        shown = len(lines)
        if view["state"] != "running":
            break
        time.sleep(0.5)
    if report is not None:
        saved = {k: v for k, v in view.items() if k != "summary"}
        try:
            report.write_text(json.dumps(saved, indent=2) + "\n")
        except OSError as exc:
            raise CloudletError(f"cannot write the report to {report}: {exc}") from None
    if output == Format.table:
        say(view["summary"].rstrip())
    else:
        emit(view, output)
    if view["state"] == "failed":
        raise CloudletError(f"drill {view['name']} failed: {view['message']}")


@app.command()
def show(name: str, output: OutputOpt = Format.table) -> None:
    """A drill's report: each step with its time, RTO, RPO and verdict."""
    view = connect().get(f"/v1/drills/{name}")
    if output == Format.table:
        say(view["summary"].rstrip())
    else:
        emit(view, output)


def _age(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    seconds = max(0, int(now - at))
    unit = next((u for u in ("d", "h", "m") if seconds >= UNITS[u]), "s")
    return f"{seconds // UNITS[unit]}{unit} ago"


def _policy_rows(policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each backup policy's last verified restore (storage/verify.py) and how its last verification went."""
    now, rows = time.time(), []
    for p in policies:
        last = p["last_verify"]
        result = "verifying" if p["verifying"] else "-" if last is None else "ok" if last["ok"] else "failed"
        if last is not None and not last["ok"] and not p["verifying"]:
            result += f": {last['message']}"
        verify = "on" if p["verify"] else "off"
        rows.append(
            {"policy": p["name"], "verify": verify, "last_verified": _age(p["last_verified_at"], now), "result": result}
        )
    return rows


@app.command()
def status(output: OutputOpt = Format.table) -> None:
    """Each stack's last drill with its RTO and RPO, and its drill schedule; each backup policy's last verified
    restore. JSON and YAML: {"stacks": [...], "backup_policies": [...]}."""
    client = connect()
    last: dict[str, dict[str, Any]] = {}
    for d in client.get("/v1/drills")["items"]:  # newest first
        last.setdefault(d["stack"], d)
    schedules = {
        st["name"]: f"every {_every(st['labels'][EVERY])} to {st['labels'].get(TO_ZONE, '?')}"
        for st in client.get("/v1/stacks")["items"]
        if EVERY in st["labels"]
    }
    rows = [
        {
            **d,
            "rto": _s(d["rto_s"]),
            "rpo": _s(d["rpo_s"]),
            "failback_rto": _s(d["failback_rto_s"]),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["finished_at"])) if d["finished_at"] else "-",
            "schedule": schedules.get(stack, "-"),
        }
        for stack, d in last.items()
    ]
    rows += [{"stack": stack, "schedule": text} for stack, text in schedules.items() if stack not in last]
    policies = _policy_rows(client.get("/v1/backup-policies")["items"])
    if output != Format.table:
        emit({"stacks": rows, "backup_policies": policies}, output)
        return
    emit(rows, output, COLUMNS)
    if policies:
        say("")
        emit(policies, output, POLICY_COLUMNS)


def _every(seconds: str) -> str:
    try:
        n = int(float(seconds))
    except ValueError:
        return seconds
    if n <= 0:
        return seconds
    unit = next(u for u in ("d", "h", "m", "s") if n % UNITS[u] == 0)
    return f"{n // UNITS[unit]}{unit}"


@app.command()
def schedule(
    stack: str,
    every: Annotated[str | None, typer.Option(help="how often: 14d, 12h, 30m (at least 1m)")] = None,
    to_zone: Annotated[
        str | None, typer.Option("--to-zone", help="the zone each drill goes to and fails back from")
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="no more scheduled drills")] = False,
) -> None:
    """Drill the stack on a schedule (each to --to-zone and back, --failback); the first a period from now."""
    client = connect()
    if off:
        client.request("PATCH", f"/v1/stacks/{stack}/labels", json={"set": {}, "remove": [EVERY, TO_ZONE, SINCE]})
        say(f"Stack {stack}: no scheduled drills")
        return
    found = re.fullmatch(r"(\d+)([smhd])", every or "")
    if found is None or to_zone is None:
        raise CloudletError("give --every N[s|m|h|d] and --to-zone ZONE (or --off)")
    seconds = int(found[1]) * UNITS[found[2]]
    if seconds < 60:
        raise CloudletError(f"--every {every}: at least 1m (a drill moves the whole stack)")
    labels = {EVERY: str(seconds), TO_ZONE: to_zone, SINCE: str(int(time.time()))}
    client.request("PATCH", f"/v1/stacks/{stack}/labels", json={"set": labels, "remove": []})
    say(f"Stack {stack}: a drill to zone {to_zone} and back every {every}, the first in {every}")
