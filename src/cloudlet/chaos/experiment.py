"""The Chaos Toolkit experiment format, as pydantic models, and its loader (JSON or YAML).

An experiment: `title`, `description`, `tags`, `configuration`, `secrets`, `controls`, `steady-state-hypothesis`
(`title`, `probes`, each with a `tolerance`), `method` (actions and probes, at least one) and `rollbacks`. An
activity is `{type, name, provider, tolerance?, pauses?, background?}` or `{ref: NAME}` of an activity declared
earlier. Providers: `http` (url, method, headers, arguments, timeout, verify_tls), `process` (path, arguments,
timeout) and `python` (module, func, arguments). Keys the format reserves for other tools (`extensions`,
`contributions`, `runtime`...) are kept and ignored; a misspelt key of an activity or provider is an error.

`load()` raises `BadExperiment` (an InvalidSpec) with one line: the file, the key path as the format spells it
(`method[1].provider.module`), what is wrong and what to do.
"""

from __future__ import annotations

__all__ = [
    "SAFEGUARDS_MODULE",
    "BadExperiment",
    "HttpProvider",
    "ProcessProvider",
    "PythonProvider",
    "Provider",
    "Pauses",
    "Activity",
    "Hypothesis",
    "Control",
    "Experiment",
    "load",
    "parse",
]

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cloudlet.chaos.selectors import Selector
from cloudlet.chaos.tolerance import check_tolerance
from cloudlet.core.errors import InvalidSpec

SAFEGUARDS_MODULE = "chaosaddons.controls.safeguards"  # the chaostoolkit-addons control cloudlet runs itself


class BadExperiment(InvalidSpec):
    """An experiment file that cannot run; the CLI exits 2 on it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class HttpProvider(_Strict):
    type: Literal["http"]
    url: str = Field(min_length=1)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    arguments: dict[str, Any] | list[Any] | str | None = None  # a JSON body (a dict or list) or a raw one
    timeout: float | tuple[float, float] = 30.0  # seconds, or [connect, read]
    verify_tls: bool = True
    secrets: list[str] = Field(default_factory=list)


class ProcessProvider(_Strict):
    type: Literal["process"]
    path: str = Field(min_length=1)
    arguments: str | list[str] = Field(default_factory=list)
    timeout: float | None = None
    secrets: list[str] = Field(default_factory=list)


class PythonProvider(_Strict):
    type: Literal["python"]
    module: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    func: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    arguments: dict[str, Any] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)

    @field_validator("arguments")
    @classmethod
    def _selector(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "selector" in value:  # checked now, resolved once when the run starts
            Selector.model_validate(value["selector"])
        return value


Provider = Annotated[HttpProvider | ProcessProvider | PythonProvider, Field(discriminator="type")]


class Pauses(_Strict):
    before: float = Field(default=0.0, ge=0, le=3600)
    after: float = Field(default=0.0, ge=0, le=3600)


class Activity(_Strict):
    type: Literal["action", "probe"]
    name: str = Field(min_length=1)
    provider: Provider
    description: str | None = None
    tolerance: Any = None
    pauses: Pauses = Pauses()
    background: bool = False
    frequency: float | None = Field(None, gt=0, le=3600)  # safeguard probes only: seconds between two runs
    controls: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("controls")
    @classmethod
    def _no_controls(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if value:
            raise ValueError("controls on an activity are not run by cloudlet: remove them, or run with chaostoolkit")
        return value

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, value: Any) -> Any:
        if value is not None:
            check_tolerance(value)
        return value


class Hypothesis(_Strict):
    title: str = Field(min_length=1)
    probes: list[Activity] = Field(default_factory=list)

    @model_validator(mode="after")
    def _probes(self) -> Hypothesis:
        for i, p in enumerate(self.probes):
            if p.type != "probe":
                raise ValueError(f"probes[{i}] is an action; a hypothesis holds only probes")
            if p.tolerance is None:
                raise ValueError(f"probes[{i}] ({p.name}) has no tolerance; add one (e.g. 200, true, [0, 5])")
        return self


class ControlProvider(_Strict):
    """A control names a module (its hooks are functions of set names), not a function."""

    type: Literal["python"]
    module: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class Control(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    provider: ControlProvider

    @model_validator(mode="after")
    def _known(self) -> Control:
        if self.provider.module != SAFEGUARDS_MODULE:
            raise ValueError(
                f"control {self.name}: only the safeguards control ({SAFEGUARDS_MODULE}) runs in cloudlet; "
                "remove this one or run the file with the chaostoolkit CLI"
            )
        probes = self.provider.arguments.get("probes")
        if not isinstance(probes, list) or not probes:
            raise ValueError(f"control {self.name}: provider.arguments.probes must list the safeguard probes")
        for i, p in enumerate(probes):
            probe = Activity.model_validate(p)
            if probe.tolerance is None:
                raise ValueError(f"control {self.name}: safeguard probes[{i}] has no tolerance; add one")
        return self

    def probes(self) -> list[Activity]:
        return [Activity.model_validate(p) for p in self.provider.arguments["probes"]]


class Experiment(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    title: str = Field(min_length=1)
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    configuration: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    controls: list[Control] = Field(default_factory=list)
    steady_state_hypothesis: Hypothesis | None = Field(None, alias="steady-state-hypothesis")
    method: list[Activity] = Field(min_length=1)
    rollbacks: list[Activity] = Field(default_factory=list)

    def safeguards(self) -> list[Activity]:
        return [p for c in self.controls for p in c.probes()]


def _resolve_refs(doc: dict[str, Any], source: str) -> None:
    """`{"ref": NAME}` in the method or rollbacks stands for the activity of that name declared before it."""
    known: dict[str, Any] = {}
    for section in ("steady-state-hypothesis", "method", "rollbacks"):
        items = (doc.get(section) or {}).get("probes", []) if section.startswith("steady") else doc.get(section) or []
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            if isinstance(item, dict) and set(item) == {"ref"}:
                if item["ref"] not in known:
                    raise BadExperiment(f"{source}: {section}[{i}].ref: no activity named {item['ref']!r} before it")
                items[i] = known[item["ref"]]
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                known.setdefault(item["name"], item)


def _where(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as the format spells it: method[1].provider.module (the provider's tag dropped)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (i > 0 and loc[i - 1] == "provider" and part in ("http", "process", "python")) or part.startswith(
            ("function-", "tagged-union")
        ):
            continue
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _hint(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "missing; add it"
    if kind == "extra_forbidden":
        return "unknown key; remove it or fix its spelling"
    if kind == "union_tag_invalid":
        return "unknown provider type; use http, process or python"
    if kind == "union_tag_not_found":
        return "no provider type; add type: http, process or python"
    if kind == "literal_error":
        return str(msg).replace("Input should be", "must be")
    return str(msg).removeprefix("Value error, ")


def parse(doc: Any, source: str = "experiment") -> Experiment:
    if not isinstance(doc, dict):
        raise BadExperiment(
            f"{source}: an experiment is a mapping with title, method, ...; this is a {type(doc).__name__}"
        )
    _resolve_refs(doc, source)
    try:
        return Experiment.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise BadExperiment(f"{source}: {_where(tuple(err['loc']))}: {_hint(err)}{more}") from None


def load(path: Path) -> tuple[Experiment, dict[str, Any]]:
    """The experiment and the document as written (the journal carries it)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadExperiment(f"{path}: cannot read it: {exc}") from None
    try:
        doc = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"line {line + 1}: " if line is not None else ""
        first = str(exc).splitlines()[0]
        raise BadExperiment(f"{path}: {where}not valid {path.suffix.lstrip('.') or 'JSON'}: {first}") from None
    raw = json.loads(json.dumps(doc))  # what the file said, before refs are resolved in place
    return parse(doc, str(path)), raw
