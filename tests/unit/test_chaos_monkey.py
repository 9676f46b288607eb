"""The chaos monkey's rules: the window, never the last healthy member, the opt-out label, one kill per layer."""

from __future__ import annotations

import random
from datetime import time
from typing import Any

import pytest

from cloudlet.chaos.monkey import Window, choose, monkey_round
from cloudlet.core.errors import CloudletError


def _m(name: str, state: str = "running", health: str | None = None, off: bool = False, layer: str = "web") -> Any:
    labels = {"cloudlet.io/stack": "s", "cloudlet.io/layer": layer, **({"cloudlet.io/chaos": "off"} if off else {})}
    check = {"type": "tcp", "port": 80} if health else None
    return {"name": name, "state": state, "labels": labels, "health_check": check, "health": {"state": health}}


def test_window() -> None:
    day, night = Window.parse("09:00-17:00"), Window.parse("22:30-06:00")
    assert day.contains(time(9, 0)) and day.contains(time(16, 59)) and not day.contains(time(17, 0))
    assert night.contains(time(23, 0)) and night.contains(time(5, 59)) and not night.contains(time(12, 0))
    for bad in ("9-17", "25:00-26:00", "09:00-17:60"):
        with pytest.raises(CloudletError, match="HH:MM-HH:MM"):
            Window.parse(bad)


def test_never_the_last_healthy_member() -> None:
    rng = random.Random(1)
    assert choose([_m("a")], rng)[0] is None
    assert choose([_m("a"), _m("b", state="stopped")], rng)[0] is None
    assert choose([_m("a"), _m("b", health="unhealthy")], rng)[0] is None
    assert choose([_m("a", health="healthy"), _m("b", health="healthy")], rng)[0] in ("a", "b")


def test_opted_out_members_count_as_healthy_but_are_never_killed() -> None:
    rng = random.Random(2)
    picks = {choose([_m("a", off=True), _m("b"), _m("c")], rng)[0] for _ in range(50)}
    assert picks == {"b", "c"}
    assert choose([_m("a", off=True), _m("b", off=True)], rng) == (
        None,
        "every healthy member opted out (cloudlet.io/chaos=off)",
    )


class Client:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.posts: list[str] = []

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return {"layers": {"web": 2, "db": 1}} if path == "/v1/stacks/s" else {"items": self.items}

    def post(self, path: str, body: Any) -> Any:
        self.posts.append(path)
        return {"detail": "SIGKILL to init (pid 1)"}


def test_a_round_kills_one_per_layer_and_dry_kills_nothing() -> None:
    client = Client([_m("web-1"), _m("web-2"), _m("web-3"), _m("db-1", layer="db")])
    lines: list[str] = []
    killed = monkey_round(client, "s", random.Random(3), False, lines.append)
    assert len(killed) == 1 and killed[0].startswith("web-") and client.posts == [f"/v1/instances/{killed[0]}/chaos"]
    assert any("s/db: no kill (fewer than two healthy members" in line for line in lines)
    again = Client(client.items)
    assert monkey_round(again, "s", random.Random(3), True, lines.append) == killed and again.posts == []
