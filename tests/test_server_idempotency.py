from __future__ import annotations

import json
import re
from decimal import Decimal

from serverkit import Pos, body

from giftcard_toolkit.server.ledger import Idempotency

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


def _ledger_count(srv) -> int:
    with srv.ledger.read() as conn:
        return int(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])


def test_same_key_replays_the_answer_without_moving_money_again(srv, pos):
    _, token = pos.sold_card("30")
    request = {"cardtoken": token, "amount": Decimal("7.25"), "FranchiseeID": srv.stores[0].id}
    key = {"Idempotency-Key": "redeem-123"}
    first = pos.send("POST", "/Transaction/radeem", request, headers=key)
    rows = _ledger_count(srv)
    again = pos.send("POST", "/Transaction/radeem", request, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.text == first.text
    assert _ledger_count(srv) == rows
    assert pos.balance(token) == Decimal("22.75")


def test_same_key_with_another_body_is_refused_with_422(srv, pos):
    _, token = pos.sold_card("30")
    key = {"Idempotency-Key": "reload-77"}
    store = srv.stores[0].id
    pos.post(
        "/Transaction/reload", {"cardtoken": token, "amount": 5, "FranchiseeID": store}, headers=key
    )
    other = pos.send(
        "POST",
        "/Transaction/reload",
        {"cardtoken": token, "amount": 6, "FranchiseeID": store},
        headers=key,
    )
    assert other.status_code == 422
    assert other.headers["content-type"].startswith("application/problem+json")
    assert pos.balance(token) == 35


def test_bodies_are_compared_as_parsed_json(srv, pos):
    _, token = pos.sold_card("30")
    store = srv.stores[0].id
    key = {"Idempotency-Key": "same-meaning", "Content-Type": "application/json"}
    first = pos.http.post(
        "/Transaction/radeem",
        headers=key,
        content=f'{{"cardtoken":"{token}","amount":5.0,"FranchiseeID":"{store}"}}',
    )
    spaced = pos.http.post(
        "/Transaction/radeem",
        headers=key,
        content=f'{{ "FranchiseeID": "{store}", "amount": 5.00, "CardToken": "{token}" }}',
    )
    assert spaced.headers.get("idempotent-replayed") == "true"
    assert spaced.text == first.text


def test_declines_are_replayed_too(srv, pos):
    _, token = pos.sold_card("3")
    request = {"cardtoken": token, "amount": 5, "FranchiseeID": srv.stores[0].id}
    key = {"Idempotency-Key": "short-1"}
    assert pos.post("/Transaction/radeem", request, headers=key)["statuscode"] == "100005"
    pos.post("/Transaction/reload", {**request, "amount": 10})
    replay = pos.send("POST", "/Transaction/radeem", request, headers=key)
    assert replay.headers["idempotent-replayed"] == "true"
    assert body(replay)["statuscode"] == "100005", "the stored answer, not a new attempt"


def test_a_key_in_flight_is_refused_with_409(srv, pos):
    _, token = pos.sold_card("30")
    store = srv.stores[0].id
    request = {"cardtoken": token, "amount": 5, "FranchiseeID": store}
    from giftcard_toolkit.server.fields import Fields

    canonical = Fields(json.loads(json.dumps({**request, "amount": 5}))).canonical_json()
    held = srv.ledger.reserve(Idempotency("demo", "POST /transaction/radeem", "busy-1", canonical))
    assert held.outcome == "new"
    response = pos.send(
        "POST", "/Transaction/radeem", request, headers={"Idempotency-Key": "busy-1"}
    )
    assert response.status_code == 409
    assert pos.balance(token) == 30


def test_keys_are_per_user_and_endpoint(srv, pos):
    clerk = Pos(srv, user="clerk")
    _, token = pos.sold_card("30")
    store = srv.stores[0].id
    key = {"Idempotency-Key": "shared"}
    pos.post(
        "/Transaction/reload", {"cardtoken": token, "amount": 1, "FranchiseeID": store}, headers=key
    )
    pos.post(
        "/Transaction/radeem", {"cardtoken": token, "amount": 1, "FranchiseeID": store}, headers=key
    )
    clerk_token = clerk.token(next(c for c in srv.card_stock if c.number == _number(srv, token)))
    answer = clerk.send(
        "POST",
        "/Transaction/reload",
        {"cardtoken": clerk_token, "amount": 1, "FranchiseeID": store},
        headers=key,
    )
    assert "idempotent-replayed" not in answer.headers
    assert pos.balance(token) == 31
    clerk.close()


def _number(srv, token: str) -> str:
    """The demo card behind a token (tests only: the server itself never knows numbers)."""
    import hashlib

    with srv.ledger.read() as conn:
        lookup = conn.execute(
            "SELECT c.lookup FROM tokens t JOIN cards c ON c.id = t.card_id WHERE t.token_hash = ?",
            (hashlib.sha256(token.encode()).hexdigest(),),
        ).fetchone()[0]
    return next(c.number for c in srv.card_stock if srv.ledger.card_lookup(c.number) == lookup)


def test_a_bad_idempotency_key_is_a_400(srv, pos):
    _, token = pos.sold_card("30")
    response = pos.send(
        "POST",
        "/Transaction/reload",
        {"cardtoken": token, "amount": 1, "FranchiseeID": srv.stores[0].id},
        headers={"Idempotency-Key": "x" * 65},
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errors"]
