"""`configuration` and `secrets` of an experiment, and `${name}` substitution into its activities.

A configuration value is literal, or `{type: env, key: VAR, default?: ..., env_var_type?: str|int|float|bool|json}`
(read from the environment when the run starts; a missing variable without a default is an error naming it).
Secrets are grouped by scope (`{scope: {name: value or env}}`); a provider lists the scopes it may see
(`secrets: [scope]`), and `${name}` sees every scope's names too. `--var k=v` overrides (or adds) a configuration
key; v is read as JSON when it parses, else as text. A string that is exactly `${name}` becomes the value itself
(a number stays a number); inside a longer string it is the value's text. A `${name}` no configuration key or
secret defines is an error before anything runs.
"""

from __future__ import annotations

__all__ = ["Variables", "resolve", "parse_vars"]

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from cloudlet.core.errors import InvalidSpec

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.-]*)\}")
CASTS: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "json": json.loads,
    "bool": lambda v: v.lower() in ("1", "true", "yes", "on"),
}


@dataclass(frozen=True)
class Variables:
    configuration: dict[str, Any]
    secrets: dict[str, dict[str, Any]]

    def names(self) -> dict[str, Any]:
        flat = {k: v for scope in self.secrets.values() for k, v in scope.items()}
        return {**flat, **self.configuration}

    def scoped(self, scopes: list[str]) -> dict[str, dict[str, Any]]:
        return {s: self.secrets[s] for s in scopes if s in self.secrets}

    def substitute(self, value: Any) -> Any:
        names = self.names()
        if isinstance(value, str):
            whole = VAR.fullmatch(value)
            if whole:
                return names[whole.group(1)]
            return VAR.sub(lambda m: _text(names[m.group(1)]), value)
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        return value

    def check(self, doc: Any, where: str = "") -> None:
        """Raises InvalidSpec naming the first `${name}` nothing defines."""
        if isinstance(doc, str):
            for m in VAR.finditer(doc):
                if m.group(1) not in self.names():
                    raise InvalidSpec(
                        f"{where or '(top level)'}: ${{{m.group(1)}}} is not in configuration or secrets; "
                        f"define it there or pass --var {m.group(1)}=VALUE"
                    )
        elif isinstance(doc, list):
            for i, v in enumerate(doc):
                self.check(v, f"{where}[{i}]")
        elif isinstance(doc, dict):
            for k, v in doc.items():
                self.check(v, f"{where}.{k}" if where else str(k))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _value(where: str, value: Any) -> Any:
    if not (isinstance(value, dict) and value.get("type") == "env"):
        return value
    key = value.get("key")
    if not isinstance(key, str):
        raise InvalidSpec(f"{where}: an env value needs key: the environment variable's name")
    if key not in os.environ:
        if "default" in value:
            return value["default"]
        raise InvalidSpec(f"{where}: environment variable {key} is not set; set it or give a default")
    cast = CASTS.get(str(value.get("env_var_type", "str")))
    if cast is None:
        raise InvalidSpec(f"{where}.env_var_type: use one of {', '.join(CASTS)}")
    try:
        return cast(os.environ[key])
    except ValueError as exc:
        raise InvalidSpec(f"{where}: environment variable {key}: {exc}") from None


def parse_vars(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key:
            raise InvalidSpec(f"--var {pair}: give KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def resolve(configuration: dict[str, Any], secrets: dict[str, dict[str, Any]], overrides: dict[str, Any]) -> Variables:
    config = {k: _value(f"configuration.{k}", v) for k, v in configuration.items() if k not in overrides}
    scoped = {s: {k: _value(f"secrets.{s}.{k}", v) for k, v in kv.items()} for s, kv in secrets.items()}
    return Variables({**config, **overrides}, scoped)
