"""The host agent: one per host, the data plane (DESIGN.md section 1)."""
