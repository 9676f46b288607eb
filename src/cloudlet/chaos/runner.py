"""Runs an experiment as chaostoolkit does, and returns its journal.

Order: targets resolved (once), the safeguards' one-off probes, the steady-state hypothesis (a probe out of
tolerance ends the run before the method: nothing is broken on a system that was not steady), the method with the
safeguards' periodic probes running beside it, the hypothesis again (out of tolerance: `deviated`), then the
rollbacks as the strategy says: `default` unless the run `failed` or was `interrupted`, `always`, `never`,
`deviated` only then. A safeguard out of tolerance sets the abort: the method stops at once (a pause or a process
is cut; a python function cannot be, and is left to finish in its thread), the hypothesis is not checked again,
the status is `aborted` and the rollbacks run. An activity that raises is `failed` in the journal and the method
goes on, as in chaostoolkit. Ctrl-C makes the run `interrupted` (the default strategy then plays no rollback;
`always` does) and the journal is still written. `--dry` runs no provider: every activity is journaled as succeeded with no output, and
no tolerance is checked.

`verdict()` is the exit code: 0 when the run completed and the steady state held before and after, 1 otherwise.
"""

from __future__ import annotations

__all__ = ["RunOptions", "run_experiment", "verdict"]

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from rich.markup import escape

from cloudlet.chaos.experiment import Activity, Experiment, PythonProvider
from cloudlet.chaos.journal import activity_run, new_journal
from cloudlet.chaos.providers import Aborted, run_provider
from cloudlet.chaos.selectors import Selector, resolve
from cloudlet.chaos.tolerance import within_tolerance
from cloudlet.chaos.variables import Variables
from cloudlet.chaos.variables import resolve as resolve_variables

Strategy = Literal["default", "always", "never", "deviated"]
Say = Callable[[str], None]
DURING_KEPT = 1000
ABORT_GRACE = 1.0  # seconds an aborted activity gets to end by itself (a killed process, a cut pause)  # safeguard runs the journal keeps (the last ones)


@dataclass
class RunOptions:
    dry: bool = False
    rollback_strategy: Strategy = "default"
    variables: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    client: Any = None  # cloudlet.cli.client.Client, for selectors; made on first need


class _Run:
    def __init__(self, exp: Experiment, raw: dict[str, Any], opts: RunOptions, say: Say) -> None:
        self.exp, self.opts, self.say = exp, opts, say
        self.journal = new_journal(raw)
        self.variables: Variables = resolve_variables(exp.configuration, exp.secrets, opts.variables)
        for section in ("steady-state-hypothesis", "method", "rollbacks", "controls"):
            self.variables.check(raw.get(section), section)
        self.abort = threading.Event()
        self.abort_reason = ""
        self.targets: dict[str, list[str]] = {}

    # targets
    def resolve_targets(self, seed: int) -> None:
        rng = random.Random(seed)
        activities = [*(self.exp.steady_state_hypothesis.probes if self.exp.steady_state_hypothesis else [])]
        activities += [*self.exp.method, *self.exp.rollbacks, *self.exp.safeguards()]
        for act in activities:
            if isinstance(act.provider, PythonProvider) and "selector" in act.provider.arguments:
                sel = Selector.model_validate(self.variables.substitute(act.provider.arguments["selector"]))
                if sel.key() not in self.targets:
                    if self.opts.client is None:
                        from cloudlet.cli.client import connect

                        self.opts.client = connect()
                    self.targets[sel.key()] = resolve(sel, self.opts.client, rng)
                    self.say(escape(f"targets of {act.name}: {', '.join(self.targets[sel.key()])}"))

    def _bound(self, act: Activity) -> Activity:
        """The activity with its selector replaced by the names resolved at the start."""
        if not (isinstance(act.provider, PythonProvider) and "selector" in act.provider.arguments):
            return act
        args = dict(act.provider.arguments)
        sel = Selector.model_validate(self.variables.substitute(args.pop("selector")))
        args["name"] = self.targets[sel.key()]
        return act.model_copy(update={"provider": act.provider.model_copy(update={"arguments": args})})

    # one activity
    def _wait(self, seconds: float, cancel: threading.Event | None) -> None:
        if seconds > 0 and not self.opts.dry:
            (cancel or threading.Event()).wait(seconds)

    def execute(self, act: Activity, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Runs it (in this thread; `cancel` cuts pauses and processes) and returns its journal entry."""
        self._wait(act.pauses.before, cancel)
        start, t0 = datetime.now(UTC).isoformat(), time.monotonic()
        output: Any = None
        error: BaseException | None = None
        if not self.opts.dry:
            try:
                if cancel is not None and cancel.is_set():
                    raise Aborted(f"not run: {self.abort_reason}")
                output = run_provider(self._bound(act).provider, self.variables, cancel or threading.Event())
            except Exception as exc:
                error = exc
        run = activity_run(
            act.model_dump(by_alias=True, exclude_defaults=True), start, time.monotonic() - t0, output, error
        )
        self._wait(act.pauses.after, cancel)
        return run

    def _show(self, section: str, act: Activity, run: dict[str, Any], extra: str = "") -> None:
        ok = run["status"] == "succeeded" and run.get("tolerance_met", True)
        mark = "[green]ok[/green]" if ok else "[red]FAILED[/red]"
        why = f": {run['exception'][-1].strip()}" if run.get("exception") else ""
        name, tail = escape(act.name), escape(extra + why)  # names and outputs are not rich markup
        self.say(f"  {section:<10} {act.type:<6} {name} … {mark} ({run['duration']:.2f} s){tail}")

    def probe(self, act: Activity, section: str, cancel: threading.Event | None = None) -> dict[str, Any]:
        """A probe with a tolerance: its entry carries tolerance_met."""
        run = self.execute(act, cancel)
        if self.opts.dry:
            run["tolerance_met"] = True
        else:
            tolerance = self.variables.substitute(act.tolerance)
            run["tolerance_met"] = run["status"] == "succeeded" and within_tolerance(
                tolerance, run["output"], self._call_probe
            )
        out = run["output"]
        shown = out.get("status") if isinstance(out, dict) and "status" in out else out
        self._show(section, act, run, f" → {str(shown)[:60]}" if not self.opts.dry else "")
        return run

    def _call_probe(self, tol: dict[str, Any], value: Any) -> Any:
        act = Activity.model_validate({**tol, "type": "probe"})
        if isinstance(act.provider, PythonProvider):
            act.provider.arguments["value"] = value
        return run_provider(act.provider, self.variables, threading.Event())

    # sections
    def hypothesis(self, section: str) -> dict[str, Any] | None:
        hypo = self.exp.steady_state_hypothesis
        if hypo is None or not hypo.probes:
            return None
        self.say(f"[bold]steady state {section}[/bold]: {escape(hypo.title)}")
        state: dict[str, Any] = {"steady_state_met": True, "probes": []}
        for act in hypo.probes:
            run = self.probe(act, section)
            state["probes"].append(run)
            if not run["tolerance_met"]:
                state["steady_state_met"] = False
                break
        return state

    def method(self) -> None:
        self.say("[bold]method[/bold]")
        running: list[tuple[Activity, threading.Thread, dict[str, Any]]] = []
        lock = threading.Lock()  # a run is journaled once: by its thread, or as cut short by the abort
        for act in self.exp.method:
            if self.abort.is_set():
                break
            box: dict[str, Any] = {}

            def one(act: Activity = act, box: dict[str, Any] = box) -> None:
                run = self.execute(act, self.abort)
                with lock:
                    if not box.get("abandoned"):
                        box["run"] = run
                        self.journal["run"].append(run)
                        self._show("method", act, run)

            t = threading.Thread(target=one, name=f"chaos-{act.name}", daemon=True)
            t.start()
            running.append((act, t, box))
            if not act.background:
                self._finish(act, t, box, lock)
        for act, t, box in running:
            self._finish(act, t, box, lock)

    def _finish(self, act: Activity, t: threading.Thread, box: dict[str, Any], lock: threading.Lock) -> None:
        """Waits for the activity, or for the abort; a process or a pause ends at once then, a python function
        cannot be stopped: it is journaled as cut short and left to finish on its own."""
        while t.is_alive() and not self.abort.is_set():
            t.join(0.05)
        t.join(ABORT_GRACE)
        with lock:
            if "run" not in box and not box.get("abandoned"):
                box["abandoned"] = True
                stamp = datetime.now(UTC).isoformat()
                error = Aborted(f"cut short: {self.abort_reason}")
                run = activity_run(act.model_dump(by_alias=True, exclude_defaults=True), stamp, 0.0, error=error)
                self.journal["run"].append(run)
                self._show("method", act, run)

    def rollbacks(self) -> None:
        strategy, status, deviated = self.opts.rollback_strategy, self.journal["status"], self.journal["deviated"]
        play = (
            strategy == "always"
            or (strategy == "default" and status not in ("failed", "interrupted"))
            or (strategy == "deviated" and deviated)
        )
        if not play or not self.exp.rollbacks:
            if self.exp.rollbacks:
                self.say(f"rollbacks not played (strategy {strategy})")
            return
        self.say("[bold]rollbacks[/bold]")
        for act in self.exp.rollbacks:
            run = self.execute(act)
            self.journal["rollbacks"].append(run)
            self._show("rollback", act, run)

    # safeguards
    def safeguards(self, stop: threading.Event) -> list[threading.Thread]:
        """Runs the one-off safeguards now (one out of tolerance aborts before anything broke) and starts one
        thread per periodic one."""
        threads = []
        for act in self.exp.safeguards():
            if act.frequency is None:
                self._guard(act)
                continue
            t = threading.Thread(target=self._guard_loop, args=(act, stop), name=f"safeguard-{act.name}", daemon=True)
            t.start()
            threads.append(t)
        return threads

    def _guard(self, act: Activity) -> None:
        run = self.probe(act, "safeguard")
        during = self.journal["steady_states"]["during"]
        during.append(run)
        del during[:-DURING_KEPT]
        if not run["tolerance_met"] and not self.abort.is_set():
            self.abort_reason = f"safeguard {act.name} out of tolerance"
            self.journal["cloudlet"]["aborted_by"] = act.name
            self.say(f"[red bold]aborting: {escape(self.abort_reason)}[/red bold]")
            self.abort.set()

    def _guard_loop(self, act: Activity, stop: threading.Event) -> None:
        assert act.frequency is not None  # only periodic ones loop
        while not stop.is_set() and not self.abort.is_set():
            self._guard(act)
            stop.wait(act.frequency)

    def phases(self) -> None:
        """Hypothesis, method, hypothesis again: the status each way out of them leaves."""
        j = self.journal
        before = None if self.abort.is_set() else self.hypothesis("before")
        j["steady_states"]["before"] = before
        if before is not None and not before["steady_state_met"]:
            j["status"] = "failed"
            return
        if not self.abort.is_set():
            self.method()
        if self.abort.is_set():
            j["status"] = "aborted"
            return
        after = self.hypothesis("after")
        j["steady_states"]["after"] = after
        j["deviated"] = after is not None and not after["steady_state_met"]
        j["status"] = "completed"

    def run(self) -> dict[str, Any]:
        j = self.journal
        t0 = time.monotonic()
        self.say(
            f"[bold]{escape(self.exp.title)}[/bold]"
            + (" [yellow](dry run: nothing is touched)[/yellow]" if self.opts.dry else "")
        )
        seed = self.opts.seed if self.opts.seed is not None else random.SystemRandom().randrange(1 << 31)
        self.resolve_targets(seed)
        j["cloudlet"].update(
            seed=seed,
            targets=dict(self.targets),
            dry=self.opts.dry,
            rollback_strategy=self.opts.rollback_strategy,
        )
        stop = threading.Event()
        guards: list[threading.Thread] = []
        try:
            guards = self.safeguards(stop)
            self.phases()
        except KeyboardInterrupt:  # Ctrl-C: the journal says so, and the strategy decides the rollbacks
            self.abort_reason = "interrupted"
            self.abort.set()
            j["status"] = "interrupted"
            self.say("[red bold]interrupted[/red bold]")
        finally:
            stop.set()
            for t in guards:
                t.join()
        self.rollbacks()
        j["end"] = datetime.now(UTC).isoformat()
        j["duration"] = round(time.monotonic() - t0, 6)
        return j


def run_experiment(exp: Experiment, raw: dict[str, Any], opts: RunOptions, say: Say) -> dict[str, Any]:
    return _Run(exp, raw, opts, say).run()


def verdict(journal: dict[str, Any]) -> int:
    before = journal["steady_states"]["before"]
    held = before is None or before["steady_state_met"]
    return 0 if journal["status"] == "completed" and not journal["deviated"] and held else 1
