"""cloudlet sim run: a seeded simulation of a whole cloud under faults, in this process (no cloud needed)."""

from __future__ import annotations

__all__ = ["app"]

from typing import Annotated

import typer

from cloudlet.core.errors import InvalidSpec

app = typer.Typer(
    help="Deterministic simulation: the real control plane and agents on fake drivers.", no_args_is_help=True
)
FAULTS = "host-crash,partition,slow-disk,agent-restart,control-plane-restart,clock-jump"


@app.command("run")
def run_(
    seed: Annotated[int, typer.Option(help="the fault schedule's seed (and the workload's, unless --world-seed)")] = 0,
    hosts: Annotated[int, typer.Option(help="simulated hosts")] = 10,
    instances: Annotated[int, typer.Option(help="instances: plain, HA, replicated, in stacks with LBs and EIPs")] = 50,
    zones: Annotated[int, typer.Option(help="zones the hosts are spread over")] = 3,
    steps: Annotated[
        int | None, typer.Option(help="steps of one virtual second in all; default: until every stack is whole again")
    ] = None,
    faults: Annotated[str, typer.Option(help="comma-separated fault kinds to draw from")] = FAULTS,
    world_seed: Annotated[int | None, typer.Option(help="the workload's seed, when not --seed")] = None,
    json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Run one seeded fault schedule; exit 1, printing the command that reproduces it, if an invariant broke."""
    from pydantic import ValidationError

    from cloudlet.resilience.simulation import SimParams, run

    try:
        params = SimParams(
            seed=seed,
            hosts=hosts,
            instances=instances,
            zones=zones,
            steps=steps,
            faults=[f.strip() for f in faults.split(",") if f.strip()],
            world_seed=world_seed,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidSpec(f"--{'-'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    report = run(params)
    print(report.model_dump_json(indent=2) if json else report.text())
    raise typer.Exit(0 if report.ok else 1)
