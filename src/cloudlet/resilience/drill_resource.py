"""The Drill kind: one record per DR drill of a stack (resilience/drills.py), kept after the stack (not owned:
the stack's reconciler deletes what it owns and did not ask for), holding how it went: each leg (the drill, and the failback) with its timed steps, RTO and RPO."""

from __future__ import annotations

__all__ = ["DRILL", "DrillSpec", "DrillStatus", "RUNNING", "SUCCEEDED", "FAILED"]

from typing import Any

from pydantic import Field

from cloudlet.core.kinds import KindInfo, register_kind
from cloudlet.core.models import Spec, Status

DRILL = register_kind(KindInfo("Drill", "drills")).name
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"  # the record's phase


class DrillSpec(Spec):
    stack: str
    to_zone: str
    from_backups: bool = False
    failback: bool = False


class DrillStatus(Status):
    from_zone: str | None = None  # where the stack ran when the drill began: where --failback takes it back
    # [{leg: drill|failback, to_zone, started_at, steps: [{step, started_at, took_s, detail}], rto_s, rpo_s,
    #   disks: [{instance, disk, taken_at, age_at_t0_s, rpo_s}], probe}]
    legs: list[dict[str, Any]] = Field(default_factory=list)
    message: str = ""
    rto_s: float | None = None  # the drill leg's
    rpo_s: float | None = None
    failback_rto_s: float | None = None
    failback_rpo_s: float | None = None
    verdict: str = ""  # passed | failed, with the goal met or missed
    report: str = ""  # the JSON report's path under the cloud's home
    started_at: float | None = None
    finished_at: float | None = None
