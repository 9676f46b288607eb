"""Status conditions (type, status, reason, message, observed_generation, last_transition_time).

The transition time changes only when a condition's status actually flips, so it tells how long a resource
has been (un)ready, not when it was last looked at.
"""

from __future__ import annotations

__all__ = ["set_condition"]

import time
from typing import Any


def set_condition(
    conditions: list[dict[str, Any]] | None, type_: str, status: bool, reason: str, message: str, generation: int
) -> list[dict[str, Any]]:
    out = [dict(c) for c in conditions or []]
    for cond in out:
        if cond["type"] == type_:
            if cond["status"] != status:
                cond["last_transition_time"] = time.time()
            cond.update(status=status, reason=reason, message=message, observed_generation=generation)
            return out
    out.append(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "observed_generation": generation,
            "last_transition_time": time.time(),
        }
    )
    return out
