"""Fuzzing from /openapi.json (schemathesis): every endpoint, with credentials and without.

No answer may be a 5xx, and every answer must match its documented schema. Examples are
bounded for CI; for a longer run: ``GIFTCARD_FUZZ_EXAMPLES=500 ./dev test tests/test_fuzz.py``.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serverkit import books

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


# ----------------------------------------------------------- a corpus of hostile shapes
# Hand-made, against a real server over loopback (the module's ``srv``): every endpoint
# is sent a request it would apply, made hostile one way at a time. No answer may be a
# 5xx, what the contract refuses is refused (400 naming the field, or 413), and after
# each one nothing is applied: balances, card states, batches, status changes, keys.

DEEP = ("[" * 33 + "]" * 33, "[" * 30_000 + "]" * 30_000)
HUGE = ("1e999999", "-1e999999", "1e-999999", "1" + "0" * 400, "7" * 5000)
CONTROLS = ("\u0000", "\u001b", "\u007f", "\u0085", "\u200f", "\u202e", "\u2066", "\u2028", "\t")
FREE_TEXT = {"PosRef", "reason"}


def _endpoints(srv, pos) -> dict[str, tuple[str, str, dict | None]]:
    """Each endpoint with a body it would apply (approve), on cards of its own."""
    store = srv.stores[0].id
    card, token = pos.sold_card("50")
    _, blocked_by_test = pos.sold_card("50")
    fresh = pos.token(pos.fresh_card())
    return {
        "token": (
            "POST",
            "/v1/Token",
            {"cardnumber": card.number, "securitycode": card.security_code},
        ),
        "balancecheck": ("POST", "/Transaction/balancecheck", {"cardtoken": token}),
        "sellnewcard": (
            "POST",
            "/Transaction/sellnewcard",
            {"cardtoken": fresh, "amount": 5, "FranchiseeID": store, "PosRef": "till 1"},
        ),
        "reload": (
            "POST",
            "/Transaction/reload",
            {"cardtoken": token, "amount": 5, "FranchiseeID": store, "PosRef": "till 1"},
        ),
        "radeem": (
            "POST",
            "/Transaction/radeem",
            {
                "cardtoken": token,
                "amount": 5,
                "FranchiseeID": store,
                "PosRef": "till 1",
                "acceptpartialamount": False,
            },
        ),
        "changestatus": (
            "PATCH",
            "/Transaction/changestatus",
            {"cardtoken": blocked_by_test, "status": False, "reason": "lost"},
        ),
        "close": ("POST", f"/Batch/batch/{store}", {"expectedcount": None}),
        "verify": ("PUT", "/Auth/verify", {}),
        "batches": ("GET", f"/Batch/{store}?limit=1&includetransactions=false", {}),
        "health": ("GET", "/Health", {}),
    }


def _text(payload: dict, replace: dict[str, str] | None = None, *extra: str) -> bytes:
    """``payload`` as JSON text (``None`` values left out), some values replaced by raw
    JSON text, and ``extra`` members (raw ``"name": value`` text) appended."""
    replace = replace or {}
    parts = [
        f"{json.dumps(k)}: {replace.get(k, json.dumps(v))}"
        for k, v in payload.items()
        if v is not None or k in replace
    ]
    return ("{" + ", ".join([*parts, *extra]) + "}").encode()


def _hostile(payload: dict) -> list[tuple[str, bytes, str | None]]:
    """(what, body, the field a 400 must name, "413", or None when the answer may be a
    decline instead: a control character in a card token, say, is a token nobody has)."""
    cases: list[tuple[str, bytes, str | None]] = []
    for deep in DEEP:
        cases.append((f"deep extra {len(deep)}", _text(payload, None, f'"x": {deep}'), "body"))
        for name in payload:
            cases.append((f"deep {name} {len(deep)}", _text(payload, {name: deep}), "body"))
    for number in HUGE:
        cases.append((f"huge extra {number[:9]}", _text(payload, None, f'"x": {number}'), "x"))
        for name in payload:
            cases.append((f"huge {name} {number[:9]}", _text(payload, {name: number}), name))
    for name, value in payload.items():
        if value is None:
            continue
        twin = name.upper() if name != name.upper() else name.lower()
        same = json.dumps(value)
        cases.append((f"twice {name}", _text(payload, None, f"{json.dumps(twin)}: {same}"), name))
        cases.append((f"same {name}", _text(payload, None, f"{json.dumps(name)}: {same}"), name))
        if isinstance(value, str):
            cases.append((f"surrogate {name}", _text(payload, {name: '"\\ud800"'}), "body"))
            broken = _text(payload).replace(same.encode(), b'"\xff\xfe"', 1)
            cases.append((f"not UTF-8 {name}", broken, "body"))
            for char in CONTROLS:
                raw = _text(payload, {name: json.dumps(value + char)})
                must = name if name in FREE_TEXT else None
                cases.append((f"U+{ord(char):04X} in {name}", raw, must))
    cases.append(("twice inside", _text(payload, None, '"x": {"k": 1, "K": 2}'), "k"))
    cases.append(("not UTF-8 name", _text(payload)[:-1] + b', "\xc3\x28": 1}', "body"))
    for other in ("[]", '"text"', "1e999999", "null", '{"a": 1} {"b": 2}'):
        cases.append((f"not an object {other[:8]}", other.encode(), "body"))
    cases.append(("over the body limit", _text(payload) + b" " * (64 * 1024), "413"))
    return cases


@pytest.mark.parametrize(
    "endpoint",
    [
        "token",
        "balancecheck",
        "sellnewcard",
        "reload",
        "radeem",
        "changestatus",
        "close",
        "verify",
        "batches",
        "health",
    ],
)
def test_hostile_corpus_against_every_endpoint(srv, pos, endpoint):
    method, path, payload = _endpoints(srv, pos)[endpoint]
    reads_body = endpoint not in ("verify", "batches", "health")
    wrong: list[str] = []
    sent = 0
    for what, content, field in _hostile(payload or {}):
        before = books(srv, tokens=False)
        response = pos.http.request(
            method, path, content=content, headers={"Content-Type": "application/json"}
        )
        sent += 1
        status = response.status_code
        after = books(srv, tokens=False)
        if status >= 500:
            wrong.append(f"{what}: {status} {response.text[:120]}")
        elif after != before:
            wrong.append(f"{what}: {status}, and something was applied")
        elif field == "413" and status != 413:
            wrong.append(f"{what}: {status}, not 413")
        elif not reads_body or field == "413":
            continue
        elif field is not None and (status != 400 or field not in response.json()["errors"]):
            wrong.append(f"{what}: {status} {response.text[:160]}, not a 400 naming {field}")
        elif status == 200 and method != "GET" and endpoint not in ("token", "balancecheck"):
            code = response.json().get("statuscode")
            if code in ("000000", "000001"):
                wrong.append(f"{what}: approved")
    assert not wrong, f"{len(wrong)} of {sent} hostile requests went wrong:\n" + "\n".join(
        wrong[:40]
    )
    # The same request, not hostile, is applied: the refusals were the hostility's doing.
    if reads_body:
        answer = pos.http.request(
            method, path, content=_text(payload), headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 200 and answer.json()["statuscode"] == "000000", answer.text
