"""Deterministic simulation (issue 11): seeded fault schedules against the real control plane and agents on fake
drivers and a virtual clock, with invariants checked after every step (docs/architecture.md, "Deterministic
simulation")."""

from cloudlet.resilience.simulation.runner import SimParams, SimReport, command, run

__all__ = ["SimParams", "SimReport", "command", "run"]
