"""The OpenAPI schema is the contract (STYLE.md section 5; "For cloudlet" point 8). Schemathesis checks it twice:

- in process on the fake drivers (quick): no request may produce a 5xx, and every error has the error format;
- against a real cloud (cloudletd, an agent, runc, a real pool): `schemathesis run URL/openapi.json --checks all`
  with positive and negative data through its examples, coverage, fuzzing and stateful phases. Any failure it
  reports (a schema-valid request refused, a schema-violating one accepted, an undocumented status, a 405
  without Allow...) fails the test, which prints schemathesis's account of each.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from cloudlet.api.app import create_app
from tests.conftest import running_cloud
from tests.helpers import fake_cloud

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
SEED = int(os.environ.get("CLOUDLET_ST_SEED", "1"))  # fixed, so a failure can be replayed; vary it to explore
# Left out of the real-cloud run, each because it cannot be exercised safely on a cloud the run shares:
EXCLUDED_PATHS = [
    "/v1/shutdown",  # stops the control plane in the middle of the run
    "/v1/hosts/{name}/heartbeat",  # agent protocol: needs the host's token; a forged heartbeat fights the agent's
]
EXCLUDED_PATH_REGEX = "^/v1/agent/"  # agent protocol (records, watch, ops): host tokens only; ops write records
# Settings for the real-cloud run (schemathesis.toml syntax). Budget: well under 3 minutes on 2 cores.
CONFIG = """
seed = {seed}
workers = 1
headers = {{ Authorization = "Bearer ${{CLOUDLET_ST_TOKEN}}" }}
request-timeout = 30

# every check, as `--checks all` (which, given on the command line, would also override the exception below)
[checks]
enabled = true

[generation]
mode = "all"
max-examples = 20

[phases.stateful]
max-steps = 20

# A schema-valid build runs debootstrap against the Debian mirror (minutes, hundreds of MB each): only
# requests the API must refuse are sent.
[[operations]]
include-name = "POST /v1/images"
generation.mode = "negative"

# The schema cannot say "a root filesystem tarball", so random bytes that it allows are rightly refused (400);
# every other check still runs.
[[operations]]
include-name = "PUT /v1/images/{{name}}/rootfs"
checks.positive_data_acceptance.enabled = false
"""

_home = Path(tempfile.mkdtemp(prefix="cloudlet-st-"))
atexit.register(shutil.rmtree, _home, True)
_sim = fake_cloud(_home)
_token = _sim.token
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_sim.cloud))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    for headers in ({"Authorization": f"Bearer {_token}"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"
        if response.status_code >= 400:
            assert "error" in response.json()


def _failures(output: str) -> str:
    """Schemathesis's report from its FAILURES section on (each with a curl line to reproduce it)."""
    start = output.find("=== FAILURES ===")
    return output[output.rfind("\n", 0, start) + 1:] if start >= 0 else output[-20000:]


@pytest.mark.root
@pytest.mark.slow
def test_contract_on_a_real_cloud(tmp_path: Path) -> None:
    with running_cloud() as cloud:
        url = json.loads((cloud.home / "endpoint.json").read_text())["url"]
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG.format(seed=SEED))
        cmd = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{url}/openapi.json",
               "--phases", "examples,coverage,fuzzing,stateful", "--no-color", "--report-dir", str(tmp_path),
               "--exclude-path-regex", EXCLUDED_PATH_REGEX]
        for path in EXCLUDED_PATHS:
            cmd += ["--exclude-path", path]
        env = {**os.environ, "CLOUDLET_ST_TOKEN": (cloud.home / "admin.token").read_text().strip()}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, f"schemathesis (seed {SEED}) found:\n{_failures(proc.stdout)}{proc.stderr[-5000:]}"
