"""Money on the wire is exact: Decimal-safe JSON numbers with exactly two decimals."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from serverkit import body

MONEY_FIELDS = (
    "amount|balance|approvedbalance|previousbalance|newbalance|"
    "soldamount|reloadedamount|redeemedamount|netamount"
)
MONEY = re.compile(rf'"({MONEY_FIELDS})":([^,}}\]]+)')


def _money_texts(text: str) -> list[str]:
    return [value for _, value in MONEY.findall(text)]


def test_money_is_sent_with_two_decimals(pos):
    _, token = pos.sold_card("7.5")
    text = pos.send("POST", "/Transaction/balancecheck", {"cardtoken": token}).text
    assert '"balance":7.50' in text


def test_every_amount_in_every_answer_has_exactly_two_decimals(srv, pos):
    store = srv.stores[0].id
    card, token = pos.sold_card("10")
    texts = [
        pos.send(
            "POST",
            "/Transaction/reload",
            {"cardtoken": token, "amount": 5, "FranchiseeID": store},
        ).text,
        pos.send(
            "POST",
            "/Transaction/radeem",
            {"cardtoken": token, "amount": Decimal("0.5"), "FranchiseeID": store},
        ).text,
        pos.send(
            "POST",
            "/Transaction/radeem",
            {"cardtoken": token, "amount": 100, "FranchiseeID": store},
        ).text,  # the 100005 decline carries the balance
        pos.send(
            "PATCH",
            "/Transaction/changestatus",
            {"cardtoken": token, "status": False, "reason": "count the cents"},
        ).text,
        pos.http.get(f"/Batch/{store}", params={"limit": 3}).text,
        pos.send(
            "POST", f"/Batch/batch/{store}", {"expectedcount": 0, "expectedamount": 0}
        ).text,  # the 100013 decline carries the server's netamount
    ]
    for text in texts:
        values = _money_texts(text)
        assert values, text
        for value in values:
            assert re.fullmatch(r"-?[0-9]+\.[0-9]{2}", value), (value, text[:200])


def test_cents_add_up_exactly(srv, pos):
    """0.10 + 0.20 is 0.30 here, not 0.30000000000000004."""
    store = srv.stores[0].id
    _, token = pos.sold_card("0.10")
    reloaded = pos.post(
        "/Transaction/reload",
        {"cardtoken": token, "amount": Decimal("0.20"), "FranchiseeID": store},
    )
    assert reloaded["balance"] == Decimal("0.30")
    for _ in range(3):
        pos.post(
            "/Transaction/radeem",
            {"cardtoken": token, "amount": Decimal("0.10"), "FranchiseeID": store},
        )
    checked = pos.send("POST", "/Transaction/balancecheck", {"cardtoken": token})
    assert body(checked)["balance"] == Decimal("0.00")
    assert '"balance":0.00' in checked.text


def test_a_batch_total_is_the_exact_sum_of_its_transactions(srv, pos):
    store = srv.stores[1].id
    for amount in ("0.01", "0.02", "19.99", "333.33"):
        pos.sold_card(amount, store_index=1)
    (batch,) = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"]
    totals = {"sale": Decimal(0), "reload": Decimal(0), "redeem": Decimal(0)}
    for t in batch["transactions"]:
        assert isinstance(t["amount"], Decimal)
        totals[t["type"]] += t["amount"]
    assert batch["soldamount"] == totals["sale"]
    assert batch["netamount"] == totals["sale"] + totals["reload"] - totals["redeem"]


@pytest.mark.parametrize(
    "raw,outcome",
    [
        ("1.0000000000000001", "100006"),  # a float parser would see 1.0
        ("2.999999999999999999", "100006"),  # ... and 3.0
        ("0.005", "100006"),
        ("5e-1", "0.50"),
        ("1.10e0", "1.10"),
        ("12.30", "12.30"),
    ],
)
def test_amounts_are_read_as_exact_decimals(srv, pos, raw, outcome):
    _, token = pos.sold_card("50")
    text = f'{{"cardtoken": "{token}", "amount": {raw}, "FranchiseeID": "{srv.stores[0].id}"}}'
    answer = body(pos.http.post("/Transaction/radeem", content=text))
    if outcome.startswith("1000"):
        assert answer["statuscode"] == outcome
        assert pos.balance(token) == 50
    else:
        assert answer["statuscode"] == "000000"
        assert answer["approvedbalance"] == Decimal(outcome)
        assert answer["newbalance"] == Decimal("50") - Decimal(outcome)
