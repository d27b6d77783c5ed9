"""Money is never created, lost or moved twice: idempotency, concurrency, bad input, restarts."""

from __future__ import annotations

import asyncio
import json
import threading
from decimal import Decimal

import httpx
import pytest
from serverkit import UNKNOWN_CARD, MovableClock, Pos, body

from giftcard_toolkit.server import running
from giftcard_toolkit.server.ledger import Idempotency


def _ledger_rows(srv, host_ref: str) -> int:
    with srv.ledger.read() as conn:
        return int(
            conn.execute("SELECT count(*) FROM ledger WHERE id = ?", (host_ref,)).fetchone()[0]
        )


def _ledger_count(srv) -> int:
    with srv.ledger.read() as conn:
        return int(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])


NOT_LUHN = UNKNOWN_CARD[:-1] + str((int(UNKNOWN_CARD[-1]) + 1) % 10)

# ------------------------------------------------------------------ idempotency


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


# ---------------------------------------------------------------- concurrency


def test_fifty_concurrent_redeems_never_overdraw():
    with running() as srv:
        pos = Pos(srv)
        _, token = pos.sold_card("20.00")
        store = srv.stores[0].id

        async def redeem_all() -> list[str]:
            auth = ("demo", "demo-password")
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(base_url=srv.url, auth=auth, limits=limits) as http:
                answers = await asyncio.gather(
                    *[
                        http.post(
                            "/Transaction/radeem",
                            json={"cardtoken": token, "amount": 1, "FranchiseeID": store},
                        )
                        for _ in range(50)
                    ]
                )
            return [a.json()["statuscode"] for a in answers]

        codes = asyncio.run(redeem_all())
        assert codes.count("000000") == 20
        assert codes.count("100005") == 30
        assert pos.balance(token) == Decimal("0.00")
        assert srv.ledger.check_invariants() == []
        pos.close()


def test_redeems_racing_a_batch_close_land_in_exactly_one_batch():
    with running() as srv:
        pos = Pos(srv)
        store = srv.stores[2].id
        tokens = [pos.sold_card("100", store_index=2)[1] for _ in range(4)]
        approved: list[str] = []
        closed_ids: list[str] = []
        stop = threading.Event()

        def redeemer(token: str) -> None:
            with httpx.Client(base_url=srv.url, auth=("demo", "demo-password")) as http:
                for _ in range(25):
                    answer = http.post(
                        "/Transaction/radeem",
                        json={"cardtoken": token, "amount": 1, "FranchiseeID": store},
                    ).json()
                    if answer["statuscode"] == "000000":
                        approved.append(answer["hostRef"])

        def closer() -> None:
            with httpx.Client(base_url=srv.url, auth=("demo", "demo-password")) as http:
                while not stop.is_set():
                    answer = http.post(f"/Batch/batch/{store}").json()
                    if answer["statuscode"] == "000000":
                        closed_ids.append(answer["batches"][0]["batchid"])

        workers = [threading.Thread(target=redeemer, args=(t,)) for t in tokens]
        closing = threading.Thread(target=closer)
        closing.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        closing.join()

        listed = body(pos.http.get(f"/Batch/{store}", params={"limit": 1000}))["batches"]
        seen: dict[str, str] = {}
        for batch in listed:
            for t in batch["transactions"]:
                assert t["hostRef"] not in seen, "a transaction in two batches"
                seen[t["hostRef"]] = batch["batchid"]
            assert batch["netamount"] == sum(
                (-t["amount"] if t["type"] == "redeem" else t["amount"])
                for t in batch["transactions"]
            )
        assert len(approved) == 100
        assert set(approved) <= set(seen), "an approved redeem in no batch"
        assert len(closed_ids) >= 2, "the close really raced the redeems"
        assert srv.ledger.check_invariants() == []
        pos.close()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "raw,field",
    [
        ("not json", "body"),
        ("[1, 2]", "body"),
        ("", "body"),
        ('{"cardtoken": 1234567890123456, "amount": 1, "FranchiseeID": "STORE"}', "cardtoken"),
        ('{"cardtoken": "TOKEN", "amount": "12.50", "FranchiseeID": "STORE"}', "amount"),
        ('{"cardtoken": "TOKEN", "amount": true, "FranchiseeID": "STORE"}', "amount"),
        ('{"cardtoken": "TOKEN", "FranchiseeID": "STORE"}', "amount"),
        ('{"cardtoken": "TOKEN", "amount": 1, "FranchiseeID": "store-1"}', "FranchiseeID"),
        ('{"cardtoken": "TOKEN", "amount": 1}', "FranchiseeID"),
        ('{"amount": 1, "FranchiseeID": "STORE"}', "cardtoken"),
        (
            '{"cardtoken": "TOKEN", "encrypted": "abc", "amount": 1, "FranchiseeID": "STORE"}',
            "cardtoken",
        ),
        (
            '{"cardtoken": "TOKEN", "amount": 1, "FranchiseeID": "STORE", '
            '"acceptpartialamount": "yes"}',
            "acceptpartialamount",
        ),
    ],
)
def test_malformed_redeems_are_400_naming_the_field(srv, pos, raw, field):
    _, token = pos.sold_card("10")
    content = raw.replace("TOKEN", token).replace("STORE", srv.stores[0].id)
    response = pos.http.post(
        "/Transaction/radeem", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["title"] == "One or more validation errors occurred."
    assert problem["status"] == 400
    assert field in problem["errors"], problem
    assert pos.balance(token) == 10


@pytest.mark.parametrize(
    "number",
    [
        "600600000000000",
        "60060000000000061",
        NOT_LUHN,
        "6006abcd00000000",
        "",
        6006000000000000,
    ],
)
def test_malformed_card_numbers_are_400(pos, number):
    response = pos.send("POST", "/v1/Token", {"cardnumber": number, "securitycode": "1234"})
    assert response.status_code == 400
    assert "cardnumber" in response.json()["errors"]
    assert str(number) not in response.text or number == ""


@pytest.mark.parametrize("code", ["123", "12345", "abcd", 1234])
def test_malformed_security_codes_are_400(pos, code):
    card = pos.fresh_card()
    response = pos.send("POST", "/v1/Token", {"cardnumber": card.number, "securitycode": code})
    assert response.status_code == 400
    assert "securitycode" in response.json()["errors"]


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"status": "false", "reason": "x"}, "status"),
        ({"status": False}, "reason"),
        ({"status": False, "reason": "   "}, "reason"),
        ({"status": False, "reason": "r" * 201}, "reason"),
    ],
)
def test_malformed_status_changes_are_400(pos, payload, field):
    _, token = pos.sold_card("10")
    response = pos.send("PATCH", "/Transaction/changestatus", {"cardtoken": token, **payload})
    assert response.status_code == 400
    assert field in response.json()["errors"]


@pytest.mark.parametrize(
    "query,field",
    [
        ({"status": "pending"}, "status"),
        ({"from": "30/09/2026"}, "from"),
        ({"to": "2026-02-30"}, "to"),
        ({"from": "2026-09-02", "to": "2026-09-01"}, "from"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"includetransactions": "maybe"}, "includetransactions"),
    ],
)
def test_bad_batch_queries_are_400(srv, pos, query, field):
    response = pos.http.get(f"/Batch/{srv.stores[0].id}", params=query)
    assert response.status_code == 400
    assert field in response.json()["errors"]


@pytest.mark.parametrize("path", ["/Batch/not-a-guid", "/Batch/batch/12345"])
def test_non_guid_store_paths_are_400(pos, path):
    response = pos.http.request("GET" if path.count("/") == 2 else "POST", path)
    assert response.status_code == 400
    assert "storeid" in response.json()["errors"]


def test_close_batch_with_wrong_types_is_400(srv, pos):
    response = pos.send(
        "POST",
        f"/Batch/batch/{srv.stores[0].id}",
        {"expectedcount": "twelve", "expectedamount": "1.00"},
    )
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"expectedcount", "expectedamount"}


# -------------------------------------------------------------------- restarts


def test_a_restart_keeps_balances_tokens_and_batches(tmp_path):
    clock = MovableClock()
    db = tmp_path / "giftcards.sqlite"
    with running(db_path=db, clock=clock) as srv:
        pos = Pos(srv)
        card, token = pos.sold_card("42.10")
        pos.post(
            "/Transaction/radeem",
            {"cardtoken": token, "amount": Decimal("2.10"), "FranchiseeID": srv.stores[0].id},
        )
        before = body(pos.http.get(f"/Batch/{srv.stores[0].id}", params={"limit": 3}))
        pos.close()
    clock.advance(minutes=5)
    with running(db_path=db, clock=clock) as srv:
        pos = Pos(srv)
        assert pos.balance(token) == 40, "the same token, still valid, and the balance kept"
        after = body(pos.http.get(f"/Batch/{srv.stores[0].id}", params={"limit": 3}))
        assert after == before
        clock.advance(minutes=5)
        assert pos.post("/Transaction/balancecheck", {"cardtoken": token})["statuscode"] == (
            "100007"
        ), "the token's expiry survived the restart too"
        assert srv.ledger.check_invariants() == []
        pos.close()
