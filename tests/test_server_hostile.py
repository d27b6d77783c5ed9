"""Hostile clients against the real server over loopback: nesting, huge numbers, invalid
UTF-8, a field given twice, control characters, oversized bodies (contract §1, "hostile
input"). Every refusal is a 4xx problem naming what is wrong, never a 500, and after each
one the books (balances, card statuses, batches, tokens) are exactly as they were."""

from __future__ import annotations

import io
import json
import logging
import socket
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
from serverkit import Pos, body, books

from giftcard_toolkit import GiftCardClient, errors, forms, frames
from giftcard_toolkit.cli import main
from giftcard_toolkit.server import running
from giftcard_toolkit.server.app import MAX_BODY
from giftcard_toolkit.server.fields import MAX_DEPTH

JSON = {"Content-Type": "application/json"}


def refused(pos: Pos, method: str, path: str, content: bytes | str, status: int = 400) -> dict:
    """Send raw ``content``; the answer must be a ``status`` problem body; nothing applied."""
    before = books(pos.srv)
    response = pos.http.request(method, path, content=content, headers=JSON)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["traceId"] == response.headers["x-correlation-id"]
    assert books(pos.srv) == before, "a refused request applied something"
    return problem


def post_raw(pos: Pos, path: str, content: bytes | str, method: str = "POST") -> dict:
    """Send raw ``content``: it must be read (HTTP 200); the answer's body."""
    response = pos.http.request(method, path, content=content, headers=JSON)
    assert response.status_code == 200, response.text
    return body(response)


def redeem_text(token: str, store: str, amount: str = "1.00", extra: str = "") -> str:
    return (
        f'{{"cardtoken": "{token}", "amount": {amount}, "FranchiseeID": "{store}", '
        f'"PosRef": "till 4"{extra}}}'
    )


# ------------------------------------------------------------------------ nesting


def test_json_nested_deeper_than_the_limit_is_400_never_500(srv, pos):
    _, token = pos.sold_card("50")
    store = srv.stores[0].id
    deep = "[" * 30_000 + "]" * 30_000  # under the body limit; was a RecursionError (500)
    for content in (
        f'{{"cardtoken": {deep}}}',
        redeem_text(token, store, extra=f', "note": {deep}'),
        redeem_text(token, store, extra=', "note": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH),
        redeem_text(
            token, store, extra=', "note": ' + '{"a": ' * MAX_DEPTH + "1" + "}" * MAX_DEPTH
        ),
    ):
        path = "/Transaction/balancecheck" if content.startswith('{"cardtoken": [') else None
        problem = refused(pos, "POST", path or "/Transaction/radeem", content)
        assert problem["errors"] == {
            "body": [f"the JSON is nested deeper than {MAX_DEPTH} levels: send a flat object"]
        }
    # Exactly at the limit (the body itself is a level), and brackets inside strings: read.
    at_limit = ', "note": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    in_text = ', "memo": "' + "[" * 100 + '"'
    answer = post_raw(
        pos, "/Transaction/radeem", redeem_text(token, store, extra=at_limit + in_text)
    )
    assert answer["statuscode"] == "000000"
    assert pos.balance(token) == Decimal("49.00")


# --------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "number",
    [
        "1e999999",
        "-1e999999",
        "1E+1001",
        "1e-999999",
        "1" + "0" * 400,
        "9" * 5000,
        "0." + "0" * 60 + "1",
    ],
)
def test_huge_numbers_are_400_naming_the_field(srv, pos, number):
    _, token = pos.sold_card("50")
    store = srv.stores[0].id
    problem = refused(pos, "POST", "/Transaction/radeem", redeem_text(token, store, number))
    [message] = problem["errors"]["amount"]
    assert "out of range" in message and len(message) < 200, "the number is not echoed whole"
    # Anywhere in the body, in a field the server does not read, as well.
    problem = refused(
        pos, "POST", "/Transaction/radeem", redeem_text(token, store, extra=f', "tip": {number}')
    )
    assert list(problem["errors"]) == ["tip"]
    problem = refused(
        pos, "POST", f"/Batch/batch/{store}", f'{{"expectedcount": 1, "expectedamount": {number}}}'
    )
    assert list(problem["errors"]) == ["expectedamount"]
    assert pos.balance(token) == 50


def test_large_but_readable_numbers_keep_the_contracts_declines(srv, pos):
    _, token = pos.sold_card("50")
    store = srv.stores[0].id
    for number, code in [("1e300", "100005"), ("1" + "0" * 39, "100005"), ("1e-7", "100006")]:
        assert (
            post_raw(pos, "/Transaction/radeem", redeem_text(token, store, number))["statuscode"]
            == code
        ), number
    assert pos.balance(token) == 50


# ------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    "bad",
    [
        b'"PosRef": "\xff"',  # not UTF-8 at all (Latin-1's y-umlaut)
        b'"PosRef": "caf\xc3"',  # a sequence cut short
        b'"\xed\xa0\x80": 1',  # an encoded surrogate, which UTF-8 forbids
        b'"PosRef": "\xc0\xaf"',  # an overlong "/"
    ],
)
def test_invalid_utf8_is_400_and_says_where(srv, pos, bad):
    _, token = pos.sold_card("50")
    text = f'{{"cardtoken": "{token}", "amount": 1, "FranchiseeID": "{srv.stores[0].id}", '
    content = text.encode() + bad + b"}"
    problem = refused(pos, "POST", "/Transaction/radeem", content)
    [message] = problem["errors"]["body"]
    where = len(text.encode()) + next(i for i, byte in enumerate(bad) if byte >= 0x80)
    assert message.startswith("the body is not UTF-8 text") and f"offset {where}" in message
    assert pos.balance(token) == 50


def test_utf16_is_refused_and_a_utf8_bom_is_read(srv, pos):
    _, token = pos.sold_card("50")
    text = redeem_text(token, srv.stores[0].id)
    refused(pos, "POST", "/Transaction/radeem", text.encode("utf-16"))
    assert post_raw(pos, "/Transaction/radeem", text.encode("utf-8-sig"))["statuscode"] == "000000"
    assert pos.balance(token) == 49


def test_an_escaped_lone_surrogate_is_400_never_500(srv, pos):
    _, token = pos.sold_card("50")
    store = srv.stores[0].id
    for content in (
        '{"cardtoken": "\\ud800"}',  # was a UnicodeEncodeError (500) in the token lookup
        redeem_text(token, store).replace("till 4", "till \\udfff"),
        redeem_text(token, store, extra=', "\\ud83d": 1'),
    ):
        path = "/Transaction/balancecheck" if content.startswith('{"cardtoken": "\\') else None
        problem = refused(pos, "POST", path or "/Transaction/radeem", content)
        assert "lone surrogate" in problem["errors"]["body"][0]
    # A pair is one character (an emoji), as JSON writes it: read.
    paired = redeem_text(token, store).replace("till 4", "till \\ud83d\\ude00")
    assert post_raw(pos, "/Transaction/radeem", paired)["statuscode"] == "000000"


# ------------------------------------------------------------ a field given twice


@pytest.mark.parametrize(
    "extra,field",
    [
        (', "Amount": 3.00', "amount"),  # the case: was approved for 3.00
        (', "amount": 1.00', "amount"),  # the very same spelling, the same value
        (', "am\\u006funt": 3.00', "amount"),  # the same name, escaped
        (', "AMOUNT": null', "amount"),  # null counts as absent, yet the name is given twice
        (', "franchiseeid": "STORE"', "FranchiseeID"),
        (', "CardToken": "TOKEN"', "cardtoken"),
        (', "posref": "till 5"', "PosRef"),
        (', "note": {"a": 1, "A": 2}', "a"),  # in an object the server does not read
    ],
)
def test_a_field_given_twice_in_any_spelling_is_400_naming_it(srv, pos, extra, field):
    _, token = pos.sold_card("50")
    store = srv.stores[0].id
    content = redeem_text(token, store, extra=extra.replace("STORE", store).replace("TOKEN", token))
    problem = refused(pos, "POST", "/Transaction/radeem", content)
    [message] = problem["errors"][field]
    assert "given twice" in message and "send it once" in message
    assert pos.balance(token) == 50


def test_a_field_twice_on_every_writing_endpoint_applies_nothing(srv, pos):
    store = srv.stores[0].id
    card, token = pos.sold_card("50")
    fresh = pos.token(pos.fresh_card())
    cases = [
        ("POST", "/v1/Token", {"cardnumber": card.number, "securitycode": card.security_code}),
        (
            "POST",
            "/Transaction/sellnewcard",
            {"cardtoken": fresh, "amount": 5, "FranchiseeID": store},
        ),
        ("POST", "/Transaction/reload", {"cardtoken": token, "amount": 5, "FranchiseeID": store}),
        (
            "PATCH",
            "/Transaction/changestatus",
            {"cardtoken": token, "status": False, "reason": "x"},
        ),
        ("POST", f"/Batch/batch/{store}", {"expectedcount": 1}),
    ]
    for method, path, payload in cases:
        name, value = next(iter(payload.items()))
        doubled = json.dumps(payload)[:-1] + f", {json.dumps(name.upper())}: {json.dumps(value)}}}"
        assert name in refused(pos, method, path, doubled)["errors"], path
    assert pos.balance(token) == 50 and pos.balance(fresh) == 0


# ----------------------------------------------------------- control characters


@pytest.mark.parametrize(
    "text,char",
    [
        ("lost\u0000card\u202e", "U+0000"),  # the case: was approved and stored
        ("lost card\u202e", "U+202E"),
        ("lost \u2066card\u2069", "U+2066"),
        ("lost\u200fcard", "U+200F"),
        ("lost\tcard", "U+0009"),
        ("lost\ncard", "U+000A"),
        ("lost\u0085card", "U+0085"),
        ("lost\u2028card", "U+2028"),
        ("lost\x1bcard", "U+001B"),
    ],
)
def test_control_characters_in_free_text_are_400_naming_the_field(srv, pos, text, char):
    _, token = pos.sold_card("50")
    store = srv.stores[0].id
    status = json.dumps({"cardtoken": token, "status": False, "reason": text})
    problem = refused(pos, "PATCH", "/Transaction/changestatus", status)
    [message] = problem["errors"]["reason"]
    assert message.startswith("reason must not hold control characters") and char in message
    redeem = json.dumps({"cardtoken": token, "amount": 1, "FranchiseeID": store, "PosRef": text})
    [message] = refused(pos, "POST", "/Transaction/radeem", redeem)["errors"]["PosRef"]
    assert char in message
    assert pos.balance(token) == 50
    answer = post_raw(pos, "/Transaction/balancecheck", json.dumps({"cardtoken": token}))
    assert answer["status"] is True, "still active"


def test_free_text_in_any_script_is_read(srv, pos):
    _, token = pos.sold_card("50")
    store = srv.stores[0].id
    reason = "carte perdue — été ☕ 😀 بطاقة مفقودة 카드 분실"
    ref = "Kasse 3 / Bon 17 <b>&amp;</b>"
    redeem = json.dumps({"cardtoken": token, "amount": 1, "FranchiseeID": store, "PosRef": ref})
    assert post_raw(pos, "/Transaction/radeem", redeem)["statuscode"] == "000000"
    block = json.dumps({"cardtoken": token, "status": False, "reason": reason}, ensure_ascii=False)
    response = pos.http.patch("/Transaction/changestatus", content=block.encode(), headers=JSON)
    assert body(response)["statuscode"] == "000000"
    with srv.ledger.read() as conn:
        assert (
            conn.execute("SELECT reason FROM status_changes ORDER BY id DESC").fetchone()[0]
            == reason
        )
        assert conn.execute("SELECT pos_ref FROM ledger ORDER BY id DESC").fetchone()[0] == ref


def test_free_text_lengths_as_the_contract_gives(srv, pos):
    _, token = pos.sold_card("50")
    store = srv.stores[0].id
    for reason in ("", "   "):
        status = json.dumps({"cardtoken": token, "status": False, "reason": reason})
        assert "reason" in refused(pos, "PATCH", "/Transaction/changestatus", status)["errors"]
    status = json.dumps({"cardtoken": token, "status": False, "reason": "x" * 201})
    [message] = refused(pos, "PATCH", "/Transaction/changestatus", status)["errors"]["reason"]
    assert message == "reason must be at most 200 characters, got 201"
    redeem = json.dumps(
        {"cardtoken": token, "amount": 1, "FranchiseeID": store, "PosRef": "r" * 101}
    )
    assert "PosRef" in refused(pos, "POST", "/Transaction/radeem", redeem)["errors"]


# ------------------------------------------------------------------ body limit


def _raw_http(url: str, request: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``request`` as is and read the answer until the server closes the connection
    (a 413 closes it); a server still waiting for the body times this out."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _head(srv: Any, path: str, extra: str) -> bytes:
    port = urlsplit(srv.url).port
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Authorization: Basic ZGVtbzpkZW1vLXBhc3N3b3Jk\r\n"
        f"Content-Type: application/json\r\nX-Correlation-Id: big-1\r\n{extra}\r\n"
    ).encode()


def test_a_body_over_the_limit_is_413_unread(srv, pos, caplog):
    caplog.set_level(logging.INFO, logger="giftcard_toolkit.server.access")
    before = books(srv)
    # It announces 100 MB and sends 20 bytes: a server reading it would wait forever.
    answer = _raw_http(
        srv.url,
        _head(srv, "/Transaction/radeem", "Content-Length: 100000000\r\n") + b'{"cardtoken": "1234',
    )
    head, _, text = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower() and b"x-correlation-id: big-1" in head.lower()
    problem = json.loads(text)
    assert problem["title"] == "Request body too large" and problem["traceId"] == "big-1"
    assert f"{MAX_BODY:,} bytes (100,000,000 bytes sent)" in problem["detail"]
    assert books(srv) == before
    assert any(
        "/Transaction/radeem 413" in r.getMessage() and "cid=big-1" in r.getMessage()
        for r in caplog.records
    ), "the access log has it"


def test_a_chunked_body_is_cut_off_past_the_limit(srv, pos):
    before = books(srv)
    chunk = b"[" * (MAX_BODY + 1)
    # One chunk past the limit, then nothing: the answer comes without the end of the body.
    answer = _raw_http(
        srv.url,
        _head(srv, "/Transaction/balancecheck", "Transfer-Encoding: chunked\r\n")
        + f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"nothing was read or applied" in answer
    assert books(srv) == before
    # A chunked body under the limit is read as usual.
    _, token = pos.sold_card("50")
    pieces = iter([b'{"cardtoken": ', f'"{token}"'.encode(), b"}"])
    response = pos.http.post("/Transaction/balancecheck", content=pieces, headers=JSON)
    assert body(response)["balance"] == 50


def test_the_limit_is_exact_and_holds_for_every_endpoint_and_caller(srv, pos):
    _, token = pos.sold_card("50")
    text = json.dumps({"cardtoken": token})
    exact = text + " " * (MAX_BODY - len(text))
    assert (
        body(pos.http.post("/Transaction/balancecheck", content=exact, headers=JSON))["statuscode"]
        == "000000"
    )
    over = exact + " "
    store = srv.stores[0].id
    for method, path in [
        ("POST", "/Transaction/balancecheck"),
        ("POST", "/Transaction/radeem"),
        ("POST", "/v1/Token"),
        ("PATCH", "/Transaction/changestatus"),
        ("POST", f"/Batch/batch/{store}"),
        ("PUT", "/Auth/verify"),
        ("GET", f"/Batch/{store}"),
        ("GET", "/Health"),
        ("POST", "/no/such/path"),
    ]:
        refused(pos, method, path, over, status=413)
    anonymous = pos.http.post(
        "/Transaction/radeem", content=over, headers=JSON, auth=("demo", "wrong password")
    )
    assert anonymous.status_code == 413, "answered before authentication: nothing to check"
    assert pos.balance(token) == 50


def test_max_body_is_configurable_and_the_client_says_what_happened():
    with running(max_body=100) as small:
        card = next(c for c in small.card_stock if not c.sold)
        store = card.store_id
        with GiftCardClient(small.url, small.username, small.password) as gc:
            before = books(small)
            with pytest.raises(errors.RequestRejected) as refused_:
                gc.sell(card, "25.00", store, idempotency_key="a-key-long-enough-to-pass-the-limit")
            assert refused_.value.status == 413
            assert "larger than the server accepts" in str(refused_.value)
            assert books(small)[:3] == before[:3], "no money, card or batch changed"
            assert gc.balance(card).balance == 0
        pos = Pos(small)
        answer = pos.http.post("/Transaction/balancecheck", content=b" " * 101, headers=JSON)
        assert answer.status_code == 413 and "at most 100 bytes" in answer.json()["detail"]
        pos.close()


# --------------------------------------------------------- text shown as HTML


def test_a_script_in_a_store_name_stays_text_in_every_html_view(database, tmp_path, monkeypatch):
    db = database
    name = '<script>alert("pwned")</script> & Sons'
    address = "<img src=x onerror=alert(1)>"
    assert main(["admin", "--db", str(db), "add-store", "--name", name, "--address", address]) == 0
    with running(seed=None, db_path=db) as srv:
        store = srv.ledger.stores()[0]
        assert store.name == name, "a store name may hold <, > and &: it is text"
        monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
        cli = ["admin", "--db", str(db)]
        assert main([*cli, "add-user", "alice", "--store", store.id, "--password-stdin"]) == 0
        stock = tmp_path / "stock.csv"
        main([*cli, "issue-cards", "--store", store.id, "--count", "2", "--out", str(stock)])
        number, code = stock.read_text().splitlines()[1].split(",")[:2]
        with GiftCardClient(srv.url, "alice", "correct horse battery") as gc:
            from giftcard_toolkit import Card

            card = Card(number, code)
            console = forms.ops_console(gc, audit_log=None)
            sell = console.children[2]
            sell.card_number.value, sell.security_code.value = number, code
            sell.amount.value = "25.00"
            sell.submit.click()
            shown = [sell.confirmation.value]
            sell.confirm.click()
            shown.append(sell.output.value)
            card_tab = console.children[0]
            card_tab.card_number.value, card_tab.security_code.value = number, code
            card_tab.lookup.click()
            shown += [card_tab.summary.value, card_tab.history.value]
            batches, txs = frames.fetch(gc, progress=False)
            shown += [batches._repr_html_(), txs._repr_html_()]
            assert gc.balance(card).balance == Decimal("25.00")
    html = "\n".join(shown)
    assert "&lt;script&gt;" in html, "the name is shown, escaped"
    assert "<script" not in html and "<img" not in html


@pytest.mark.parametrize(
    "args,message",
    [
        (["--name", "Main\u202eteertS"], "--name must not hold control characters"),
        (["--name", "Main\u0000Street"], "(U+0000 at position 5)"),
        (["--name", "Main Street", "--address", "1 Main St\nDROP"], "--address must not hold"),
        (["--name", "Main Street", "--address", "\u2066x\u2069"], "(U+2066 at position 1)"),
        (["--name", "x" * 101], "--name must be at most 100 characters, got 101"),
        (["--name", "  "], "--name must not be blank"),
    ],
)
@pytest.mark.backends("sqlite")  # refused before any database is opened: one backend is enough
def test_admin_add_store_refuses_control_characters_and_bidi_overrides(tmp_path, args, message):
    db = tmp_path / "chain.sqlite"
    with pytest.raises(SystemExit) as refused_:
        main(["admin", "--db", str(db), "add-store", *args])
    assert message in str(refused_.value) and "nothing was changed" in str(refused_.value)
    assert not db.exists(), "refused before the database was opened"


def test_a_store_id_with_a_trailing_newline_is_refused_as_malformed(srv, pos):
    card, token = pos.sold_card("10")
    answer = pos.send(
        "POST",
        "/Transaction/reload",
        {"cardtoken": token, "amount": 1, "FranchiseeID": srv.stores[0].id + "\n"},
    )
    assert answer.status_code == 400 and "FranchiseeID" in answer.json()["errors"]
    assert pos.balance(token) == 10
