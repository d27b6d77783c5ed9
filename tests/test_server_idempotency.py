"""Idempotency-Key: replays, 422 for another body, 409 in flight; nothing applied twice."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal

from serverkit import Pos, body

from giftcard_toolkit.cards import AesGcmCardCipher
from giftcard_toolkit.server import running
from giftcard_toolkit.server.ledger import Idempotency


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
    problem = other.json()
    assert problem["status"] == 422 and problem["title"] and problem["type"]
    # No blind advice to use a new key: the first request may have been applied.
    assert "may have been applied" in problem["detail"] and "check" in problem["detail"]
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
    from giftcard_toolkit.server.ledger import CardRef

    card = srv.ledger.card_identity("demo", CardRef(token=token))
    fields = Fields(json.loads(json.dumps({**request, "amount": 5})))
    held = srv.ledger.reserve(
        Idempotency(
            "demo",
            "POST /transaction/radeem",
            "busy-1",
            request_hash=fields.canonical_json(card),
            sent_hash=fields.canonical_json(),
        )
    )
    assert held.outcome == "new"
    response = pos.send(
        "POST", "/Transaction/radeem", request, headers={"Idempotency-Key": "busy-1"}
    )
    assert response.status_code == 409
    assert response.json()["status"] == 409
    assert pos.balance(token) == 30


def test_a_keyed_write_that_fails_leaves_its_key_free_for_the_retry(srv, pos, monkeypatch):
    """The key is reserved and the request applied in one transaction: a write that fails
    half-way (the redeem applied, then the database failing) keeps neither, so the retry
    under the same key is applied, once."""
    _, token = pos.sold_card("30")
    request = {"cardtoken": token, "amount": 5, "FranchiseeID": srv.stores[0].id}
    key = {"Idempotency-Key": "fails-once"}
    redeem = srv.ledger.redeem

    def failing(*args, **kwargs):
        redeem(*args, **kwargs)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(srv.ledger, "redeem", failing)
    assert pos.send("POST", "/Transaction/radeem", request, headers=key).status_code == 503
    monkeypatch.undo()
    assert pos.balance(token) == 30, "nothing applied"
    retried = pos.send("POST", "/Transaction/radeem", request, headers=key)
    assert retried.status_code == 200 and body(retried)["statuscode"] == "000000"
    assert "idempotent-replayed" not in retried.headers
    assert pos.balance(token) == 25
    again = pos.send("POST", "/Transaction/radeem", request, headers=key)
    assert again.headers["idempotent-replayed"] == "true" and pos.balance(token) == 25


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
    number = _number(srv, token)
    clerk_token = clerk.token(next(c for c in srv.card_stock if c.number == number))
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


def _open_host_refs(pos, store: str) -> list[str]:
    listed = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"]
    return [t["hostRef"] for b in listed for t in b["transactions"]]


def test_a_replayed_sale_is_one_transaction_in_the_batch(srv, pos):
    store = srv.stores[1].id
    token = pos.token(pos.fresh_card(1))
    request = {"cardtoken": token, "amount": Decimal("15.00"), "FranchiseeID": store}
    key = {"Idempotency-Key": "sale-lane3-0001"}
    first = pos.send("POST", "/Transaction/sellnewcard", request, headers=key)
    again = pos.send("POST", "/Transaction/sellnewcard", request, headers=key)
    assert body(first)["statuscode"] == "000000", "the replay is the sale, not a 100004"
    assert again.text == first.text and again.headers["idempotent-replayed"] == "true"
    assert _open_host_refs(pos, store).count(body(first)["hostRef"]) == 1
    assert pos.balance(token) == 15


def test_a_replayed_status_change_is_the_first_answer(srv, pos):
    _, token = pos.sold_card("9")
    request = {"cardtoken": token, "status": False, "reason": "reported lost"}
    key = {"Idempotency-Key": "block-9"}
    first = pos.send("PATCH", "/Transaction/changestatus", request, headers=key)
    again = pos.send("PATCH", "/Transaction/changestatus", request, headers=key)
    assert body(first)["statuscode"] == "000000"
    assert again.text == first.text, "not 100015: the stored answer comes back"
    assert again.headers["idempotent-replayed"] == "true"


def test_a_replayed_batch_close_does_not_close_the_next_batch(srv, pos):
    store = srv.stores[2].id
    pos.sold_card("5", store_index=2)
    key = {"Idempotency-Key": "settle-2026-10-01"}
    first = pos.http.post(f"/Batch/batch/{store}", headers=key)
    assert body(first)["statuscode"] == "000000"
    pos.sold_card("6", store_index=2)  # opens the next batch
    again = pos.http.post(f"/Batch/batch/{store}", headers=key)
    assert again.text == first.text and again.headers["idempotent-replayed"] == "true"
    (still_open,) = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"]
    assert still_open["transactioncount"] == 1


def test_without_a_key_the_same_request_applies_twice(srv, pos):
    _, token = pos.sold_card("10")
    request = {"cardtoken": token, "amount": 1, "FranchiseeID": srv.stores[0].id, "PosRef": "A"}
    first = pos.post("/Transaction/radeem", request)
    second = pos.post("/Transaction/radeem", request)
    assert first["hostRef"] != second["hostRef"]
    assert pos.balance(token) == 8


def test_a_request_that_failed_validation_does_not_burn_its_key(srv, pos):
    _, token = pos.sold_card("10")
    key = {"Idempotency-Key": "retry-after-400"}
    store = srv.stores[0].id
    bad = pos.send(
        "POST", "/Transaction/radeem", {"cardtoken": token, "FranchiseeID": store}, headers=key
    )
    assert bad.status_code == 400
    good = pos.send(
        "POST",
        "/Transaction/radeem",
        {"cardtoken": token, "amount": 1, "FranchiseeID": store},
        headers=key,
    )
    assert good.status_code == 200 and "idempotent-replayed" not in good.headers
    assert pos.balance(token) == 9


def test_a_key_is_remembered_for_24_hours(clock):
    with running(clock=clock) as srv:
        pos = Pos(srv)
        card, _ = pos.sold_card("50")
        cipher = AesGcmCardCipher.from_base64(srv.card_key)
        # The same cipher text every time, so that the body stays the same for a day.
        request = {
            "encrypted": cipher.encrypt(card.number),
            "amount": 1,
            "FranchiseeID": srv.stores[0].id,
        }
        key = {"Idempotency-Key": "nightly-1"}
        first = pos.send("POST", "/Transaction/radeem", request, headers=key)
        clock.advance(hours=23, minutes=59)
        late = pos.send("POST", "/Transaction/radeem", request, headers=key)
        assert late.headers.get("idempotent-replayed") == "true" and late.text == first.text
        clock.advance(minutes=1, seconds=1)
        next_day = pos.send("POST", "/Transaction/radeem", request, headers=key)
        assert "idempotent-replayed" not in next_day.headers
        assert body(next_day)["newbalance"] == Decimal("48.00"), "applied as a new request"
        pos.close()


def test_a_retry_after_re_tokenizing_is_the_same_request(srv, pos):
    card, first_token = pos.sold_card("30")
    store = srv.stores[0].id
    key = {"Idempotency-Key": "resume-after-crash"}
    first = pos.send(
        "POST",
        "/Transaction/radeem",
        {"cardtoken": first_token, "amount": 5, "FranchiseeID": store},
        headers=key,
    )
    second_token = pos.token(card)  # a new session tokenizes the card again
    assert second_token != first_token
    again = pos.send(
        "POST",
        "/Transaction/radeem",
        {"cardtoken": second_token, "amount": 5, "FranchiseeID": store},
        headers=key,
    )
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.text == first.text
    assert pos.balance(second_token) == 25
    other_card, other_token = pos.sold_card("30")
    different = pos.send(
        "POST",
        "/Transaction/radeem",
        {"cardtoken": other_token, "amount": 5, "FranchiseeID": store},
        headers=key,
    )
    assert different.status_code == 422, "the same key for another card is another request"


def test_a_retry_after_its_token_expired_replays_the_answer(clock):
    """The same key, the same token string, after the token expired: the stored answer,
    not a 422 whose advice (a new key) would redeem a second time."""
    with running(clock=clock) as srv:
        pos = Pos(srv)
        _, token = pos.sold_card("30")
        request = {"cardtoken": token, "amount": 5, "FranchiseeID": srv.stores[0].id}
        key = {"Idempotency-Key": "lost-answer-1"}
        first = pos.send("POST", "/Transaction/radeem", request, headers=key)
        rows = _ledger_count(srv)
        clock.advance(minutes=11)  # the token has expired since
        again = pos.send("POST", "/Transaction/radeem", request, headers=key)
        assert again.status_code == 200, again.text
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.text == first.text
        assert _ledger_count(srv) == rows
        pos.close()


def test_an_unresolvable_card_under_a_used_key_is_no_mismatch(clock):
    """Another expired token under a used key cannot be judged: the token's decline, kept
    nowhere, and no advice to use a new key; a fresh token for the same card replays."""
    with running(clock=clock) as srv:
        pos = Pos(srv)
        card, token = pos.sold_card("30")
        store = srv.stores[0].id
        key = {"Idempotency-Key": "lost-answer-2"}
        first = pos.send(
            "POST",
            "/Transaction/radeem",
            {"cardtoken": token, "amount": 5, "FranchiseeID": store},
            headers=key,
        )
        stale = pos.token(card)
        clock.advance(minutes=11)
        unknown = pos.send(
            "POST",
            "/Transaction/radeem",
            {"cardtoken": stale, "amount": 5, "FranchiseeID": store},
            headers=key,
        )
        assert unknown.status_code == 200 and body(unknown)["statuscode"] == "100007"
        fresh = pos.send(
            "POST",
            "/Transaction/radeem",
            {"cardtoken": pos.token(card), "amount": 5, "FranchiseeID": store},
            headers=key,
        )
        assert fresh.headers.get("idempotent-replayed") == "true" and fresh.text == first.text
        assert pos.balance(pos.token(card)) == 25
        pos.close()


def test_an_expired_token_under_a_new_key_keeps_the_key_free(clock):
    """A 100007 applies nothing and is not kept: the same key with a fresh token is
    applied once (what the client does after re-tokenizing)."""
    with running(clock=clock) as srv:
        pos = Pos(srv)
        card, token = pos.sold_card("30")
        store = srv.stores[0].id
        key = {"Idempotency-Key": "expired-first"}
        clock.advance(minutes=11)
        expired = pos.send(
            "POST",
            "/Transaction/radeem",
            {"cardtoken": token, "amount": 5, "FranchiseeID": store},
            headers=key,
        )
        assert body(expired)["statuscode"] == "100007"
        fresh = pos.send(
            "POST",
            "/Transaction/radeem",
            {"cardtoken": pos.token(card), "amount": 5, "FranchiseeID": store},
            headers=key,
        )
        assert body(fresh)["statuscode"] == "000000"
        assert "idempotent-replayed" not in fresh.headers
        assert body(fresh)["newbalance"] == Decimal("25.00")
        pos.close()


def test_the_idempotency_table_keeps_no_token(srv, pos):
    _, token = pos.sold_card("30")
    pos.send(
        "POST",
        "/Transaction/radeem",
        {"cardtoken": token, "amount": 1, "FranchiseeID": srv.stores[0].id},
        headers={"Idempotency-Key": "no-token-kept"},
    )
    with srv.ledger.read() as conn:
        rows = conn.execute("SELECT * FROM idempotency").fetchall()
    assert rows and not any(token in str(tuple(r)) for r in rows)
