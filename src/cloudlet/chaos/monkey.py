"""`cloudlet chaos monkey STACK`: one random instance per layer killed every interval, within limits.

Each round, inside the window (`HH:MM-HH:MM`, local time; one that ends before it starts runs over midnight), for
each layer of the stack: the candidates are its running instances without the opt-out label
`cloudlet.io/chaos=off`; a layer is skipped unless at least two of its members are healthy (running, and healthy
by their health check when they have one), so the kill never takes the last healthy member; one candidate is
picked with the seeded generator and killed through the API (SIGKILL of its init: the `ChaosFault` event on the
instance records it, and the monkey prints it). Outside the window a round does nothing.
"""

from __future__ import annotations

__all__ = ["OPT_OUT", "Window", "healthy", "choose", "monkey_round"]

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time as clock_time
from typing import Any

from cloudlet.core.errors import CloudletError

OPT_OUT = ("cloudlet.io/chaos", "off")


@dataclass(frozen=True)
class Window:
    start: clock_time
    end: clock_time

    @classmethod
    def parse(cls, text: str) -> Window:
        m = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", text)
        if m is None or int(m[1]) > 23 or int(m[3]) > 23 or int(m[2]) > 59 or int(m[4]) > 59:
            raise CloudletError(f"--window {text}: give HH:MM-HH:MM, e.g. 09:00-17:00")
        return cls(clock_time(int(m[1]), int(m[2])), clock_time(int(m[3]), int(m[4])))

    def contains(self, now: clock_time) -> bool:
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end  # over midnight


def healthy(view: dict[str, Any]) -> bool:
    return view["state"] == "running" and (
        not view.get("health_check") or (view.get("health") or {}).get("state") == "healthy"
    )


def choose(members: list[dict[str, Any]], rng: random.Random) -> tuple[str | None, str]:
    """The member to kill in one layer (or None) and why."""
    if sum(healthy(m) for m in members) < 2:
        return None, "fewer than two healthy members: the last one is never killed"
    candidates = sorted(
        m["name"] for m in members if healthy(m) and (m.get("labels") or {}).get(OPT_OUT[0]) != OPT_OUT[1]
    )
    if not candidates:
        return None, f"every healthy member opted out ({OPT_OUT[0]}={OPT_OUT[1]})"
    return rng.choice(candidates), "picked"


def monkey_round(client: Any, stack: str, rng: random.Random, dry: bool, say: Callable[[str], None]) -> list[str]:
    """One round over the stack's layers; answers the instances killed."""
    layers = sorted(client.get(f"/v1/stacks/{stack}")["layers"])
    items = client.get("/v1/instances", {"selector": f"cloudlet.io/stack={stack}", "limit": 100_000})["items"]
    killed = []
    for layer in layers:
        members = [i for i in items if (i.get("labels") or {}).get("cloudlet.io/layer") == layer]
        name, why = choose(members, rng)
        if name is None:
            say(f"{stack}/{layer}: no kill ({why})")
            continue
        if not dry:
            result = client.post(f"/v1/instances/{name}/chaos", {"fault": "kill"})
            why = result["detail"]
        say(f"{stack}/{layer}: killed {name}" + (" (dry run: not really)" if dry else f": {why}"))
        killed.append(name)
    return killed
