"""cloudlet chaos run: a Chaos Toolkit experiment against this cloud, its journal written beside it.

Exit codes: 0 the steady state held, 1 it deviated (or did not hold before, or a safeguard aborted the run),
2 the file cannot run (the error names the key and what to write)."""

from __future__ import annotations

__all__ = ["app"]

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudlet.cli.output import console
from cloudlet.core.errors import CloudletError

app = typer.Typer(help="Chaos experiments (the Chaos Toolkit format).", no_args_is_help=True)


class Strategy(str, Enum):
    default = "default"
    always = "always"
    never = "never"
    deviated = "deviated"


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="the experiment, JSON or YAML")],
    dry: Annotated[bool, typer.Option("--dry", help="check the file and resolve targets; run no activity")] = False,
    journal: Annotated[Path, typer.Option("--journal", help="where the journal goes")] = Path("journal.json"),
    rollback_strategy: Annotated[
        Strategy, typer.Option("--rollback-strategy", help="when rollbacks run")
    ] = Strategy.default,
    var: Annotated[list[str] | None, typer.Option("--var", help="KEY=VALUE: set a configuration key")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="seed of the target choice (recorded in the journal)")
    ] = None,
) -> None:
    """Run an experiment: steady state, method, steady state again, rollbacks; exit 1 if it deviated."""
    from cloudlet.chaos.experiment import BadExperiment, load
    from cloudlet.chaos.journal import write_journal
    from cloudlet.chaos.runner import RunOptions, run_experiment, verdict
    from cloudlet.chaos.variables import parse_vars

    out = console()
    try:
        exp, raw = load(file)
        opts = RunOptions(
            dry=dry, rollback_strategy=rollback_strategy.value, variables=parse_vars(var or []), seed=seed
        )
        result = run_experiment(exp, raw, opts, out.print)
    except BadExperiment as exc:
        sys.stderr.write(f"Error: {exc.message}\n")
        raise typer.Exit(2) from None
    except CloudletError as exc:
        if exc.code == "invalid_spec":  # configuration, secrets or ${names} the file gets wrong
            sys.stderr.write(f"Error: {file}: {exc.message}\n")
            raise typer.Exit(2) from None
        raise
    write_journal(result, journal)
    _summary(result, journal)
    raise typer.Exit(verdict(result))


def _summary(j: dict[str, Any], path: Path) -> None:
    runs, rollbacks = j["run"], j["rollbacks"]
    failed = sum(r["status"] == "failed" for r in runs)
    before, after = j["steady_states"]["before"], j["steady_states"]["after"]

    def held(state: dict[str, Any] | None) -> str:
        return "-" if state is None else ("held" if state["steady_state_met"] else "[red]not met[/red]")

    colour = "green" if j["status"] == "completed" and not j["deviated"] else "red"
    console().print(
        f"[{colour} bold]{j['status']}[/{colour} bold]{' [red bold]deviated[/red bold]' if j['deviated'] else ''} "
        f"in {j['duration']:.1f} s: steady state before {held(before)}, after {held(after)}; "
        f"method: {len(runs)} run, {failed} failed; rollbacks: {len(rollbacks)} run; "
        f"seed {j['cloudlet']['seed']}; journal {path}"
    )


@app.command()
def monkey(
    stack: Annotated[str, typer.Argument(help="the stack whose instances it kills")],
    interval: Annotated[float, typer.Option("--interval", help="seconds between rounds", min=1)] = 300.0,
    window: Annotated[str | None, typer.Option("--window", help="HH:MM-HH:MM (local time) it may kill in")] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="stop after this many rounds (0: run until Ctrl-C)")] = 0,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of the choices")] = None,
    dry: Annotated[bool, typer.Option("--dry", help="say what it would kill; kill nothing")] = False,
) -> None:
    """Kill one random instance per layer every interval: never the last healthy member, never one labelled
    cloudlet.io/chaos=off; each kill is a ChaosFault event on the instance."""
    import random
    import time
    from datetime import datetime

    from cloudlet.chaos.monkey import Window, monkey_round
    from cloudlet.cli.client import connect

    allowed = Window.parse(window) if window else None
    client, rng, out = connect(), random.Random(seed), console()
    client.get(f"/v1/stacks/{stack}")  # a stack that is not there is an error at once, not at the first round
    done = 0

    def say(line: str) -> None:
        out.print(f"{datetime.now():%H:%M:%S} {line}")

    while True:
        now = datetime.now()
        if allowed is None or allowed.contains(now.time()):
            monkey_round(client, stack, rng, dry, say)
        else:
            say(f"outside the window {window}: nothing killed")
        done += 1
        if rounds and done >= rounds:
            return
        time.sleep(interval)
