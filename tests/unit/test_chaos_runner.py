"""The runner over python and process providers (the functions below are the providers): the order of sections,
the journal, rollback strategies, safeguards aborting within a period, dry runs and seeded selectors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cloudlet.chaos.experiment import parse
from cloudlet.chaos.journal import write_journal
from cloudlet.chaos.runner import RunOptions, run_experiment, verdict

STATE: dict[str, Any] = {}
ME = __name__


@pytest.fixture(autouse=True)
def _state() -> None:
    STATE.clear()
    STATE.update(up=True, calls=[], targets=[])


def healthy() -> bool:
    return bool(STATE["up"])


def break_it() -> str:
    STATE["calls"].append("break")
    STATE["up"] = False
    return "broken"


def fix_it() -> str:
    STATE["calls"].append("fix")
    STATE["up"] = True
    return "fixed"


def explode() -> None:
    STATE["calls"].append("explode")
    raise RuntimeError("it blew up")


def ctrl_c() -> None:
    raise KeyboardInterrupt


def hit(name: list[str]) -> list[str]:
    STATE["targets"].append(name)
    return name


def _py(func: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "python", "module": ME, "func": func, "arguments": arguments}


def _doc(method: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    probe = {"type": "probe", "name": "healthy", "provider": _py("healthy"), "tolerance": True}
    return {
        "title": "t",
        "steady-state-hypothesis": {"title": "up", "probes": [probe]},
        "method": method,
        "rollbacks": [{"type": "action", "name": "fix", "provider": _py("fix_it")}],
        **over,
    }


BREAK = {"type": "action", "name": "break", "provider": _py("break_it")}
SLEEP = {"type": "action", "name": "sleep", "provider": {"type": "process", "path": "sleep", "arguments": "30"}}


def _run(doc: dict[str, Any], **opts: Any) -> dict[str, Any]:
    lines: list[str] = []
    journal = run_experiment(parse(doc), doc, RunOptions(**opts), lines.append)
    journal["lines"] = lines
    return journal


def test_a_held_steady_state_completes_with_a_chaostoolkit_journal(tmp_path: Path) -> None:
    j = _run(
        _doc([{"type": "probe", "name": "echo", "provider": {"type": "process", "path": "echo", "arguments": ["hi"]}}])
    )
    assert (j["status"], j["deviated"], verdict(j)) == ("completed", False, 0)
    assert set(j) >= {"chaoslib-version", "platform", "node", "experiment", "start", "end", "duration", "status"}
    assert j["steady_states"]["before"]["steady_state_met"] and j["steady_states"]["after"]["steady_state_met"]
    (run,) = j["run"]
    assert run["output"] == {"status": 0, "stdout": "hi\n", "stderr": ""} and run["status"] == "succeeded"
    assert set(run) == {"activity", "output", "status", "start", "end", "duration"}
    assert STATE["calls"] == ["fix"]  # default strategy: rollbacks run after a completed run
    write_journal({k: v for k, v in j.items() if k != "lines"}, tmp_path / "j.json")
    assert json.loads((tmp_path / "j.json").read_text())["status"] == "completed"


def test_deviation_exits_1_and_the_strategy_decides_the_rollbacks() -> None:
    j = _run(_doc([BREAK]))
    assert (j["status"], j["deviated"], verdict(j)) == ("completed", True, 1)
    assert not j["steady_states"]["after"]["steady_state_met"]
    assert STATE["calls"] == ["break", "fix"]
    STATE.update(up=True, calls=[])
    assert _run(_doc([BREAK]), rollback_strategy="never")["rollbacks"] == [] and STATE["calls"] == ["break"]
    STATE.update(up=True, calls=[])
    j = _run(_doc([{"type": "probe", "name": "noop", "provider": _py("healthy")}]), rollback_strategy="deviated")
    assert j["rollbacks"] == [] and STATE["calls"] == []


def test_no_steady_state_before_runs_nothing() -> None:
    STATE["up"] = False
    j = _run(_doc([BREAK]))
    assert (j["status"], verdict(j)) == ("failed", 1)
    assert j["run"] == [] and STATE["calls"] == []  # default strategy: no rollbacks after a failed run
    j = _run(_doc([BREAK]), rollback_strategy="always")
    assert STATE["calls"] == ["fix"]


def test_a_failing_action_is_journaled_and_the_method_goes_on() -> None:
    j = _run(_doc([{"type": "action", "name": "explode", "provider": _py("explode")}, BREAK]))
    assert [r["status"] for r in j["run"]] == ["failed", "succeeded"]
    assert "RuntimeError: it blew up" in j["run"][0]["exception"][-1]


def _safeguard(**extra: Any) -> list[dict[str, Any]]:
    """The chaostoolkit-addons safeguards control with one probe: `healthy` must stay true."""
    guard = {"type": "probe", "name": "guard", "provider": _py("healthy"), "tolerance": True, **extra}
    provider = {"type": "python", "module": "chaosaddons.controls.safeguards", "arguments": {"probes": [guard]}}
    return [{"name": "safeguard", "provider": provider}]


def test_a_safeguard_aborts_within_one_period_and_rollbacks_run() -> None:
    t0 = time.monotonic()
    j = _run(_doc([BREAK, SLEEP], controls=_safeguard(frequency=0.2)))
    took = time.monotonic() - t0
    assert took < 10, f"aborting took {took:.2f} s with a 0.2 s safeguard"  # its method sleeps 30 s
    assert (j["status"], verdict(j)) == ("aborted", 1)
    assert j["cloudlet"]["aborted_by"] == "guard"
    assert j["steady_states"]["after"] is None
    assert [r["activity"]["name"] for r in j["run"]] == ["break", "sleep"] and j["run"][1]["status"] == "failed"
    assert STATE["calls"] == ["break", "fix"]
    assert j["steady_states"]["during"][-1]["tolerance_met"] is False


def test_a_one_off_safeguard_out_of_tolerance_stops_before_anything() -> None:
    STATE["up"] = False
    j = _run(_doc([BREAK], controls=_safeguard()))
    assert j["status"] == "aborted" and j["run"] == [] and "break" not in STATE["calls"]


def test_dry_runs_no_provider() -> None:
    STATE["up"] = False  # a real run would stop at the hypothesis
    j = _run(_doc([BREAK, {**SLEEP, "pauses": {"before": 30}}]), dry=True)
    assert (j["status"], verdict(j)) == ("completed", 0)
    assert STATE["calls"] == [] and [r["output"] for r in j["run"]] == [None, None]
    assert j["cloudlet"]["dry"] is True


class FakeClient:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        assert path == "/v1/instances" and params is not None and params["selector"] == "role=web"
        return {"items": self.items}


def test_selectors_resolve_once_seeded_and_are_journaled() -> None:
    items = [{"name": f"web-{i}", "state": "running" if i != 3 else "stopped"} for i in range(1, 7)]
    sel = {"labels": {"role": "web"}, "state": "running", "pick": "PERCENT(50)"}
    act = {"type": "action", "name": "hit", "provider": _py("hit", selector=sel)}
    doc = _doc([act, {**act, "name": "again"}])
    j = _run(doc, seed=42, client=FakeClient(items))
    (picked,) = j["cloudlet"]["targets"].values()
    assert len(picked) == 3 and "web-3" not in picked and j["cloudlet"]["seed"] == 42
    assert STATE["targets"] == [picked, picked]  # both activities hit the same instances
    assert _run(doc, seed=42, client=FakeClient(items))["cloudlet"]["targets"] == j["cloudlet"]["targets"]
    count = {**sel, "pick": "COUNT(9)"}
    j = _run(_doc([{**act, "provider": _py("hit", selector=count)}]), seed=1, client=FakeClient(items))
    assert sorted(next(iter(j["cloudlet"]["targets"].values()))) == ["web-1", "web-2", "web-4", "web-5", "web-6"]


def test_substitution_reaches_the_providers() -> None:
    doc = _doc(
        [{"type": "action", "name": "hit", "provider": _py("hit", name="${who}")}],
        configuration={"who": "nobody"},
    )
    _run(doc, variables={"who": "web-9"})
    assert STATE["targets"] == ["web-9"]


def test_ctrl_c_is_an_interrupted_run_and_the_strategy_decides_the_rollbacks() -> None:
    doc = _doc([BREAK])
    doc["steady-state-hypothesis"]["probes"][0]["provider"] = _py("ctrl_c")
    j = _run(doc)
    assert (j["status"], verdict(j), j["run"], STATE["calls"]) == ("interrupted", 1, [], [])
    assert _run(doc, rollback_strategy="always")["rollbacks"][0]["status"] == "succeeded"
    assert STATE["calls"] == ["fix"]
