"""The Chaos Toolkit journal: what a run did, in the format chaostoolkit writes (and its reporting tools read).

Keys: `chaoslib-version`, `platform`, `node`, `experiment` (as written), `start`, `end`, `duration`, `status`
(`completed`, `failed`, `aborted` or `interrupted`), `deviated`, `steady_states` (`before` and `after`:
`{steady_state_met, probes}`, `during`: safeguard probe runs), `run` and `rollbacks` (activity runs: `activity`,
`output`, `status` `succeeded`|`failed`, `start`, `end`, `duration`, `exception` when it raised, `tolerance_met`
for hypothesis probes). cloudlet adds `cloudlet`: the seed, the targets each selector resolved to, the rollback
strategy, whether it was a dry run, and why a safeguard aborted it.
"""

from __future__ import annotations

__all__ = ["CHAOSLIB_VERSION", "new_journal", "activity_run", "write_journal"]

import json
import os
import platform
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudlet import __version__

CHAOSLIB_VERSION = "1.44.0"  # the chaostoolkit-lib release whose journal format this follows


def _now() -> str:
    return datetime.now(UTC).isoformat()


def new_journal(experiment: dict[str, Any]) -> dict[str, Any]:
    return {
        "chaoslib-version": CHAOSLIB_VERSION,
        "platform": platform.platform(),
        "node": platform.node(),
        "experiment": experiment,
        "start": _now(),
        "end": None,
        "duration": None,
        "status": None,
        "deviated": False,
        "steady_states": {"before": None, "after": None, "during": []},
        "run": [],
        "rollbacks": [],
        "cloudlet": {"version": __version__},
    }


def activity_run(
    activity: dict[str, Any], start: str, duration: float, output: Any = None, error: BaseException | None = None
) -> dict[str, Any]:
    run: dict[str, Any] = {
        "activity": activity,
        "output": _jsonable(output),
        "status": "failed" if error is not None else "succeeded",
        "start": start,
        "end": _now(),
        "duration": round(duration, 6),
    }
    if error is not None:
        run["exception"] = traceback.format_exception_only(type(error), error)
    return run


def _jsonable(value: Any) -> Any:
    """Outputs are whatever a function returned: anything JSON cannot say is kept as its repr."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def write_journal(journal: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(journal, indent=2) + "\n")
    os.replace(tmp, path)
