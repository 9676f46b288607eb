"""Resilience: simulation now; health checks, recovery, chaos and drills later (DESIGN.md sections 8 and 9)."""
