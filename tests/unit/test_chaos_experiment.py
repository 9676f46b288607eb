"""The experiment loader: the Chaos Toolkit format in JSON and YAML, and one-line errors naming the key path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cloudlet.chaos.experiment import BadExperiment, load, parse
from cloudlet.chaos.variables import parse_vars, resolve

PROBE = {"type": "probe", "name": "p", "provider": {"type": "process", "path": "true"}, "tolerance": 0}
ACTION = {"type": "action", "name": "a", "provider": {"type": "python", "module": "os", "func": "getpid"}}


def _doc(**over: Any) -> dict[str, Any]:
    return {"title": "t", "steady-state-hypothesis": {"title": "h", "probes": [PROBE]}, "method": [ACTION], **over}


def test_json_and_yaml_load_the_same(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "e.json").write_text(json.dumps(_doc()))
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(_doc()))
    a, raw = load(tmp_path / "e.json")
    b, _ = load(tmp_path / "e.yaml")
    assert a == b and raw == _doc()
    assert a.steady_state_hypothesis is not None and a.steady_state_hypothesis.probes[0].tolerance == 0


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"title": "t", "method": []}, "method: List should have at least 1 item after validation"),
        ({"method": [ACTION]}, "title: missing; add it"),
        (_doc(method=[{**ACTION, "provider": {"type": "python", "func": "f"}}]), "method[0].provider.module: missing"),
        (_doc(method=[{**ACTION, "provder": {}}]), "method[0].provder: unknown key; remove it or fix its spelling"),
        (_doc(method=[{**ACTION, "provider": {"type": "ssh"}}]), "method[0].provider: unknown provider type"),
        (_doc(method=[{**ACTION, "type": "attack"}]), "method[0].type: must be 'action' or 'probe'"),
        (
            _doc(**{"steady-state-hypothesis": {"title": "h", "probes": [{**PROBE, "tolerance": None}]}}),
            "probes[0] (p) has no tolerance",
        ),
        (
            _doc(**{"steady-state-hypothesis": {"title": "h", "probes": [{**PROBE, "tolerance": {"type": "regex"}}]}}),
            "steady-state-hypothesis.probes[0].tolerance: a regex tolerance needs a pattern",
        ),
        (_doc(method=[{"ref": "nope"}]), "method[0].ref: no activity named 'nope' before it"),
        (
            _doc(controls=[{"name": "c", "provider": {"type": "python", "module": "x.y"}}]),
            "only the safeguards control",
        ),
        (
            _doc(method=[{**ACTION, "provider": {**ACTION["provider"], "arguments": {"selector": {"pick": "MOST"}}}}]),
            "use ALL, COUNT(n) or PERCENT(p)",
        ),
    ],
)
def test_errors_name_the_key_and_the_fix(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(BadExperiment) as exc:
        parse(doc, "e.json")
    assert message in exc.value.message and "\n" not in exc.value.message
    assert exc.value.message.startswith("e.json: ")


def test_ref_repeats_an_earlier_activity() -> None:
    exp = parse(_doc(rollbacks=[{"ref": "a"}]))
    assert exp.rollbacks[0] == exp.method[0]


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(BadExperiment, match="cannot read it"):
        load(tmp_path / "missing.json")
    (tmp_path / "e.yaml").write_text("title: [unclosed\n")
    with pytest.raises(BadExperiment, match=r"e.yaml: line \d+: not valid yaml"):
        load(tmp_path / "e.yaml")


def test_configuration_env_secrets_and_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAOS_PORT", "8080")
    v = resolve(
        {"port": {"type": "env", "key": "CHAOS_PORT", "env_var_type": "int"}, "host": "h", "n": 1},
        {"db": {"password": {"type": "env", "key": "CHAOS_NOPE", "default": "pw"}}},
        parse_vars(["n=5", "label=web"]),
    )
    assert v.configuration == {"port": 8080, "host": "h", "n": 5, "label": "web"}
    assert v.substitute({"u": "http://${host}:${port}/", "p": "${port}", "s": "${password}"}) == {
        "u": "http://h:8080/",
        "p": 8080,
        "s": "pw",
    }
    assert v.scoped(["db", "other"]) == {"db": {"password": "pw"}}
    with pytest.raises(Exception, match=r"method\[0\].x: \$\{ghost\} is not in configuration or secrets"):
        v.check([{"x": "${ghost}"}], "method")
    with pytest.raises(Exception, match="CHAOS_NOPE is not set"):
        resolve({"x": {"type": "env", "key": "CHAOS_NOPE"}}, {}, {})


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "chaos").glob("*.json"))
CHAOS = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "chaos"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load_here_and_validate_in_chaostoolkit(path: Path, tmp_path: Path) -> None:
    """The same file is valid for both: chaostoolkit also imports each python provider's module and checks the
    function and its arguments against cloudlet.chaos.actions and probes."""
    import subprocess

    load(path)
    if not CHAOS.exists():
        pytest.skip("chaostoolkit is not installed in .venv (make install; tests/integration/test_chaos.py does)")
    argv = [str(CHAOS), "--no-version-check", "--no-log-file", "--settings", str(tmp_path / "s.yaml"), "validate"]
    proc = subprocess.run(
        [*argv, str(path)], capture_output=True, text=True, timeout=60, env={"SHOP_EIP": "198.18.0.1"}
    )
    assert proc.returncode == 0 and "experiment syntax and semantic look valid" in proc.stdout + proc.stderr, (
        proc.stdout + proc.stderr
    )
