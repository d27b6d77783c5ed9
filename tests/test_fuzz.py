"""Fuzzing from /openapi.json (schemathesis): every endpoint, with credentials and without.

No answer may be a 5xx, and every answer must match its documented schema. Examples are
bounded for CI; for a longer run: ``GIFTCARD_FUZZ_EXAMPLES=500 ./dev test tests/test_fuzz.py``.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from giftcard_toolkit.server import create_app, open_demo

_tmp = tempfile.TemporaryDirectory(prefix="giftcard-fuzz-")
_ledger, _demo = open_demo(Path(_tmp.name) / "fuzz.sqlite")
APP = create_app(_ledger)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
EXAMPLES = int(os.environ.get("GIFTCARD_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
AUTHORIZED = {"Authorization": "Basic " + base64.b64encode(b"demo:demo-password").decode()}


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_authenticated_requests_never_fail_or_break_the_schema(case):
    case.call_and_validate(headers=AUTHORIZED, checks=CHECKS)


@schema.parametrize()
@settings(
    max_examples=max(5, EXAMPLES // 5), deadline=None, suppress_health_check=list(HealthCheck)
)
def test_anonymous_requests_are_refused_cleanly(case):
    response = case.call_and_validate(checks=CHECKS)
    if case.path != "/Health":
        assert response.status_code in (401, 405), "refused (405: a method the path lacks)"


def test_the_books_still_balance_after_fuzzing():
    assert _ledger.check_invariants() == []
