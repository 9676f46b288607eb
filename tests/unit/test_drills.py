"""The pieces of a DR drill that need no cloud: the stack plan under a drill's zone pin (in place, never a
replace) and the readable report."""

from __future__ import annotations

from types import SimpleNamespace

from cloudlet.resilience.drills import next_drill, summary
from cloudlet.stacks.plan import desired, plan
from cloudlet.stacks.spec import parse_stack

DOC = """\
name: s
layers:
  db: {memory: 32, replicas: 1}
"""


def _owned(zone: str | None) -> list[SimpleNamespace]:
    """What the stack owns, its instance's spec as made, with this zone."""
    (inst,) = [d for d in desired(parse_stack(DOC)) if d.kind == "Instance"]
    spec = {**inst.fields, "zone": zone}
    return [SimpleNamespace(kind="Instance", name=inst.name, id="i1", spec=spec, deleted_at=None, created_at=0.0)]


def test_a_pinned_or_unasked_zone_changes_in_place_and_an_asked_one_replaces() -> None:
    doc = parse_stack(DOC)
    (pinned,) = plan(desired(doc, ["zone-a", "zone-b"], "zone-b"), _owned(None))
    assert (pinned.op, pinned.changes) == ("update", {"zone": (None, "zone-b")})
    (same,) = plan(desired(doc, ["zone-a", "zone-b"], "zone-b"), _owned("zone-b"))
    assert same.op == "unchanged"
    # unpinned (after a failback), a document that leaves the zone to placement takes the instance where it is
    (unpinned,) = plan(desired(doc, ["zone-a", "zone-b"]), _owned("zone-b"))
    assert (unpinned.op, unpinned.changes) == ("update", {"zone": ("zone-b", None)})
    # but a zone the document asks for, differing, is a replace (the instance made again there)
    (asked,) = plan(desired(parse_stack(DOC + "zone: zone-a\n"), ["zone-a", "zone-b"]), _owned("zone-b"))
    assert (asked.op, asked.forced_by) == ("replace", ("zone",))


def test_the_summary_shows_each_step_rto_rpo_and_verdict() -> None:
    leg = {
        "leg": "drill",
        "to_zone": "zone-b",
        "steps": [
            {"step": "pin", "took_s": 0.12, "detail": "pinned"},
            {"step": "steady", "took_s": None, "detail": ""},
        ],
        "disks": [{"instance": "db-1", "disk": "root disk", "rpo_s": 0.8, "age_at_t0_s": 1.5}],
        "rto_s": 12.5,
        "rpo_s": 0.8,
    }
    view = {"name": "s-1", "stack": "s", "from_zone": "zone-a", "to_zone": "zone-b", "from_backups": False}
    view.update(state="succeeded", legs=[leg], message="", verdict="passed, RTO goal met (<= 60 s)")
    text = summary(view)
    assert "stack s, zone zone-a -> zone-b from replicas: succeeded" in text
    assert "pin" in text and "0.1 s" in text and "RTO 12.5 s, RPO 0.8 s" in text
    assert "db-1 root disk: RPO 0.8 s (copy 1.5 s old at t0)" in text and text.endswith(
        "verdict: passed, RTO goal met (<= 60 s)\n"
    )


def test_a_scheduled_drill_is_due_a_period_after_the_last_one_or_the_schedule() -> None:
    assert next_drill(60.0, since=1000.0, last_started=None) == 1060.0
    assert next_drill(60.0, since=1000.0, last_started=1500.0) == 1560.0
    assert next_drill(60.0, since=2000.0, last_started=1500.0) == 2060.0  # a schedule set after the last drill
