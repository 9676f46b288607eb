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
        out.print(f"[bold]{exp.title}[/bold]" + (" [yellow](dry run: nothing is touched)[/yellow]" if dry else ""))
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
        f"{len(runs)} method activities ({failed} failed), {len(rollbacks)} rollbacks; "
        f"seed {j['cloudlet']['seed']}; journal {path}"
    )
