"""cloudlet: a self-hosted cloud in a box."""

__version__ = "0.2.0"  # the control plane, the agents and the package say the same
