"""cloudlet: the command line. One handler at the bottom turns every CloudletError into one line and exit 1."""

from __future__ import annotations

__all__ = ["app", "run"]

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from cloudlet.cli import backup, image, instance, network, snapshot, storage, tenant, volume
from cloudlet.cli.client import connect
from cloudlet.cli.output import Format, OutputOpt, emit, say
from cloudlet.core.config import Config, load_config
from cloudlet.core.errors import CloudletError

app = typer.Typer(help="cloudlet: a cloud in a box. Start with 'cloudlet up'.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(network.app, name="network")
app.add_typer(image.app, name="image")
app.add_typer(tenant.app, name="tenant")
app.add_typer(volume.app, name="volume")
app.add_typer(snapshot.app, name="snapshot")
app.add_typer(storage.app, name="storage")
app.add_typer(backup.app, name="backup")
instance.register(app)


def _daemon_pid(cfg: Config) -> int | None:
    try:
        pid = int(cfg.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"cloudlet" in cmdline else None


def _log_tail(cfg: Config, lines: int = 5) -> str:
    try:
        return " | ".join(cfg.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


@app.command()
def up(output: OutputOpt = Format.table) -> None:
    """Start cloudletd in the background (pid and log files in $CLOUDLET_HOME)."""
    cfg = load_config()
    if cfg.compute_driver != "fake" and os.geteuid() != 0:
        raise CloudletError("cloudlet needs root for namespaces, mounts and runc; run it with sudo")
    if _daemon_pid(cfg) is None:
        cfg.home.mkdir(parents=True, exist_ok=True)
        cfg.endpoint_file.unlink(missing_ok=True)
        with open(cfg.log_file, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "cloudlet.daemon"], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise CloudletError(f"cloudletd exited with {proc.returncode}: {_log_tail(cfg)}")
            url = cfg.endpoint().get("url")
            if url and cfg.endpoint().get("pid") == proc.pid:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise CloudletError(f"cloudletd did not answer within 60 s: {_log_tail(cfg)}")
            time.sleep(0.05)
    data = connect(cfg).get("/v1/info")
    if output == Format.table:
        say(f"cloudlet is up: API {cfg.endpoint()['url']}, DNS 127.0.0.1:{data['dns']['port']}, "
            f"home {cfg.home}")
    else:
        emit(data, output)


@app.command()
def down(purge: Annotated[bool, typer.Option("--purge", help="also delete all state and files")] = False,
         output: OutputOpt = Format.table) -> None:
    """Stop cloudletd and every instance; --purge also removes all state."""
    from cloudlet.daemon import shutdown_artefacts

    cfg = load_config()
    pid = _daemon_pid(cfg)
    if pid is not None:
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not Path(f"/proc/{pid}").exists():
                break
    shutdown_artefacts(cfg, purge)
    result = {"stopped": pid is not None, "purged": purge, "home": str(cfg.home)}
    if output == Format.table:
        say("cloudlet is down" + (f"; removed {cfg.home}" if purge else "; state kept (use --purge to remove)"))
    else:
        emit(result, output)


@app.command()
def info(output: OutputOpt = Format.table) -> None:
    """Show where the API and DNS listen, and who you are."""
    data = connect().get("/v1/info")
    if output == Format.table:
        data = {**data, "dns": f"{data['dns']['address']}:{data['dns']['port']}"}
    emit(data, output)


@app.command()
def repair(check: Annotated[bool, typer.Option("--check", help="only report; exit 1 if anything is wrong")] = False,
           output: OutputOpt = Format.table) -> None:
    """Find (and fix) orphaned artefacts and resources whose artefacts vanished."""
    client = connect()
    if check:
        findings = client.get("/v1/repair")["items"]
        if findings or output != Format.table:
            emit(findings, output, ["problem", "kind", "name", "id", "artefact", "detail"])
        else:
            say("nothing to repair")
        raise typer.Exit(1 if findings else 0)
    result = client.post("/v1/repair")
    if output == Format.table:
        for action in result["actions"] or ["nothing to repair"]:
            say(action)
    else:
        emit(result, output)


def run() -> None:
    try:
        app()
    except CloudletError as exc:
        sys.stderr.write(f"Error: {exc.message}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
