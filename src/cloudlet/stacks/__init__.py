"""Stacks: whole environments described in YAML, planned, applied and kept so by a reconciler."""
