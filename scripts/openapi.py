"""Writes openapi.json, the committed API contract, from the app itself (an in-process cloud on the fake drivers).

    .venv/bin/python scripts/openapi.py           rewrite openapi.json at the repository root
    .venv/bin/python scripts/openapi.py --check   exit 1 if openapi.json differs from what the app serves

tests/unit/test_openapi.py fails while the two differ; run this, read the diff, commit both.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "openapi.json"


def live_schema() -> dict[str, Any]:
    """The schema the app serves at /openapi.json (the agent protocol included)."""
    from cloudlet.api.app import create_app
    from cloudlet.resilience.sim import SimCloud

    with tempfile.TemporaryDirectory(prefix="cloudlet-openapi-") as home:
        return create_app(SimCloud(Path(home)).cloud).openapi()


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render(live_schema())
    if "--check" in argv:
        same = SNAPSHOT.exists() and SNAPSHOT.read_text() == text
        print("openapi.json is up to date" if same else "openapi.json differs from the app's schema")
        return 0 if same else 1
    SNAPSHOT.write_text(text)
    print(f"wrote {SNAPSHOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
