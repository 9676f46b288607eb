"""Schemathesis over the OpenAPI schema (bounded examples, fake drivers): no request may produce a 5xx."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from cloudlet.api.app import create_app
from tests.helpers import fake_cloud

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
