"""Targets by name or label selector, chosen once per run with a seeded random generator.

A python activity's `arguments.selector` (cloudlet.chaos.actions and probes take one wherever they take a `name`):

    {"kind": "instance", "labels": {"cloudlet.io/stack": "shop", "cloudlet.io/layer": "web"},
     "state": "running", "pick": "COUNT(1)"}

`labels` is a mapping (all must match) or the API's selector text (`k=v,k2!=v,!k3`); `names` limits the candidates
to those names; `state` keeps only instances in that state; `pick` is `ALL`, `COUNT(n)` or `PERCENT(p)` (of the
candidates, rounded up, at least one when any match). The runner resolves each distinct selector once, before the
steady state is first probed, and hands the names to every activity that says the same selector (the kill and the
rollback that restarts what it killed see the same instances); the journal's `targets` records them. `--seed` makes
the choice reproducible: the candidates are sorted by name before the seeded sample.
"""

from __future__ import annotations

__all__ = ["PICK", "Selector", "resolve", "selector_text"]

import json
import math
import random
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloudlet.core.errors import CloudletError

PICK = r"^(ALL|COUNT\((\d+)\)|PERCENT\((\d+(?:\.\d+)?)\))$"


class Selector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["instance"] = "instance"
    names: list[str] = Field(default_factory=list)
    labels: dict[str, str] | str = Field(default_factory=dict)
    state: str | None = None
    pick: str = "ALL"

    @field_validator("pick")
    @classmethod
    def _pick(cls, value: str) -> str:
        m = re.match(PICK, value)
        if m is None:
            raise ValueError(f"pick {value!r}: use ALL, COUNT(n) or PERCENT(p)")
        if m.group(3) is not None and not 0 < float(m.group(3)) <= 100:
            raise ValueError(f"pick {value!r}: a percentage is above 0 and at most 100")
        return value

    def key(self) -> str:
        """The same selector, however it is spelt, is one target set."""
        return json.dumps(self.model_dump(), sort_keys=True)

    def choose(self, candidates: list[str], rng: random.Random) -> list[str]:
        pool = sorted(set(candidates))
        m = re.match(PICK, self.pick)
        assert m is not None  # checked by the validator
        if m.group(2) is not None:
            n = min(int(m.group(2)), len(pool))
        elif m.group(3) is not None:
            n = min(len(pool), math.ceil(len(pool) * float(m.group(3)) / 100))
        else:
            return pool
        return sorted(rng.sample(pool, n))


def selector_text(labels: dict[str, str] | str) -> str:
    return labels if isinstance(labels, str) else ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def resolve(selector: Selector, client: Any, rng: random.Random) -> list[str]:
    """The instance names the selector picks now (client: cloudlet.cli.client.Client). Matching nothing is an
    error: an experiment against nothing proves nothing."""
    text = selector_text(selector.labels)
    items = client.get("/v1/instances", {"selector": text or None, "limit": 100_000})["items"]
    found = [
        i["name"]
        for i in items
        if (not selector.names or i["name"] in selector.names) and (selector.state in (None, i["state"]))
    ]
    if not found:
        raise CloudletError(f"selector {selector.model_dump(exclude_defaults=True)} matches no instance")
    return selector.choose(found, rng)
