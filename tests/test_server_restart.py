"""A restart on the same database keeps balances, tokens with their expiry, batches and
idempotency keys."""

from __future__ import annotations

from decimal import Decimal

from serverkit import MovableClock, Pos, body

from giftcard_toolkit.server import running


def test_a_restart_keeps_balances_tokens_and_batches(database):
    clock = MovableClock()
    db = database
    with running(db_path=db, clock=clock) as srv:
        pos = Pos(srv)
        store = srv.stores[0].id
        card, token = pos.sold_card("42.10")
        pos.post(
            "/Transaction/radeem",
            {"cardtoken": token, "amount": Decimal("2.10"), "FranchiseeID": store},
        )
        keyed = {"cardtoken": token, "amount": Decimal("1.00"), "FranchiseeID": store}
        key = {"Idempotency-Key": "before-restart"}
        first = pos.send("POST", "/Transaction/reload", keyed, headers=key)
        settled = pos.post(f"/Batch/batch/{store}", {})
        assert settled["statuscode"] == "000000"
        _, other = pos.sold_card("5.00")  # the new open batch
        before = body(pos.http.get(f"/Batch/{store}", params={"limit": 3}))
        stock = [c.number for c in srv.card_stock]
        pos.close()
    clock.advance(minutes=5)
    with running(db_path=db, clock=clock) as srv:
        pos = Pos(srv)
        assert [c.number for c in srv.card_stock] == stock
        assert next(c for c in srv.card_stock if c.number == card.number).sold
        assert pos.balance(token) == 41, "the same token, still valid, and the balance kept"
        replay = pos.send("POST", "/Transaction/reload", keyed, headers=key)
        assert replay.headers["idempotent-replayed"] == "true" and replay.text == first.text
        assert pos.balance(token) == 41, "an idempotency key outlives a restart"
        assert pos.balance(other) == 5
        after = body(pos.http.get(f"/Batch/{store}", params={"limit": 3}))
        assert after == before
        assert [b["status"] for b in after["batches"][:2]] == ["open", "closed"]
        assert after["batches"][1]["batchid"] == settled["batches"][0]["batchid"]
        # The token was made at the clock's start: it lasts until exactly 10:00 after that.
        clock.advance(minutes=4, seconds=59, microseconds=999_999)
        assert pos.post("/Transaction/balancecheck", {"cardtoken": token})["statuscode"] == (
            "000000"
        )
        clock.advance(microseconds=1)
        assert pos.post("/Transaction/balancecheck", {"cardtoken": token})["statuscode"] == (
            "100007"
        ), "the token's expiry survived the restart too"
        # The card stays sold, the open batch keeps filling, a new token works.
        again = pos.token(card)
        redeemed = pos.post(
            "/Transaction/radeem",
            {"cardtoken": again, "amount": Decimal("10.00"), "FranchiseeID": store},
        )
        assert redeemed["newbalance"] == Decimal("31.00")
        (open_batch,) = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"]
        assert open_batch["batchid"] == before["batches"][0]["batchid"]
        assert open_batch["transactioncount"] == 2
        assert srv.ledger.check_invariants() == []
        pos.close()
