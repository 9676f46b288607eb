"""Load balancers: one HAProxy process per LB, run by the agent of the host it is placed on (DESIGN.md section 7)."""
