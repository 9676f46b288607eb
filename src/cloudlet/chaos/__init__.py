"""Chaos experiments in the Chaos Toolkit format: `cloudlet chaos run` (runner.py) and the actions and probes
(actions.py, probes.py) that both it and the `chaostoolkit` CLI call; faults.py is what an agent injects."""
