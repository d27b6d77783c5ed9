from __future__ import annotations

import re
from decimal import Decimal

from serverkit import MovableClock, Pos, body

from giftcard_toolkit.server import running

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


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
