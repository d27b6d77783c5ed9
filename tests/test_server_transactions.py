"""The /Transaction endpoints: each approval, each decline, and POS field quirks."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from serverkit import UNKNOWN_CARD, MovableClock, Pos, body

from giftcard_toolkit.cards import AesGcmCardCipher
from giftcard_toolkit.server import Limits, running

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


def test_unsold_card_balance_is_zero_and_unusable(pos):
    token = pos.token(pos.fresh_card())
    answer = pos.post("/Transaction/balancecheck", {"cardtoken": token})
    assert answer["statuscode"] == "000000"
    assert answer["balance"] == 0
    assert answer["status"] is False
    assert answer["activated"] is None


def test_sell_reload_redeem_block_unblock_round_trip(srv, pos):
    store = srv.stores[0]
    card = pos.fresh_card()
    token = pos.token(card)
    sold = pos.post(
        "/Transaction/sellnewcard",
        {"cardtoken": token, "amount": Decimal("25.00"), "FranchiseeID": store.id, "PosRef": "T1"},
    )
    assert sold["statuscode"] == "000000"
    assert sold["balance"] == Decimal("25.00")
    assert sold["cardno"] == "*" * 12 + card.number[-4:]
    assert sold["franchiseeid"] == store.id and sold["storename"] == store.name
    assert sold["hostRef"]

    reloaded = pos.post(
        "/Transaction/reload",
        {"cardtoken": token, "amount": Decimal("10.10"), "FranchiseeID": store.id},
    )
    assert reloaded["balance"] == Decimal("35.10")

    redeemed = pos.post(
        "/Transaction/radeem",
        {"cardtoken": token, "amount": Decimal("12.60"), "FranchiseeID": store.id},
    )
    assert redeemed["statuscode"] == "000000"
    assert (redeemed["previousbalance"], redeemed["approvedbalance"], redeemed["newbalance"]) == (
        Decimal("35.10"),
        Decimal("12.60"),
        Decimal("22.50"),
    )

    checked = pos.post("/Transaction/balancecheck", {"cardtoken": token})
    assert checked["balance"] == Decimal("22.50")
    assert checked["status"] is True
    assert checked["cardending"] == card.number[-4:]
    assert checked["activated"] and checked["lastused"] and checked["expire"]
    activated = date.fromisoformat(checked["activated"][:10])
    assert date.fromisoformat(checked["expire"][:10]) == activated.replace(year=activated.year + 5)

    def change(active: bool) -> dict:
        response = pos.send(
            "PATCH",
            "/Transaction/changestatus",
            {"cardtoken": token, "status": active, "reason": "ops test"},
        )
        return body(response)

    blocked = change(False)
    assert (blocked["statuscode"], blocked["status"], blocked["balance"]) == (
        "000000",
        False,
        Decimal("22.50"),
    )
    assert MASKED.match(blocked["card"])
    assert change(False)["statuscode"] == "100015"
    for path in ("/Transaction/reload", "/Transaction/radeem"):
        declined = pos.post(path, {"cardtoken": token, "amount": 1, "FranchiseeID": store.id})
        assert declined["statuscode"] == "100002" and declined["status"] is False
    assert pos.post("/Transaction/balancecheck", {"cardtoken": token})["status"] is False
    unblocked = change(True)
    assert (unblocked["statuscode"], unblocked["status"]) == ("000000", True)
    assert change(True)["statuscode"] == "100015"


def test_sell_declines(srv, pos):
    store = srv.stores[0].id
    card, token = pos.sold_card("20")
    again = pos.post(
        "/Transaction/sellnewcard", {"cardtoken": token, "amount": 5, "FranchiseeID": store}
    )
    assert again["statuscode"] == "100004"
    fresh = pos.token(pos.fresh_card())
    for amount in ("0", "-5", "1.234", "NaN", "Infinity", "1e-7"):
        raw = f'{{"cardtoken": "{fresh}", "amount": {amount}, "FranchiseeID": "{store}"}}'
        answer = body(pos.http.post("/Transaction/sellnewcard", content=raw))
        assert answer["statuscode"] == "100006", amount
    over = pos.post(
        "/Transaction/sellnewcard",
        {"cardtoken": fresh, "amount": Decimal("500.01"), "FranchiseeID": store},
    )
    assert over["statuscode"] == "100012"
    unknown_store = pos.post(
        "/Transaction/sellnewcard",
        {"cardtoken": fresh, "amount": 5, "FranchiseeID": "00000000-0000-4000-8000-000000000000"},
    )
    assert unknown_store["statuscode"] == "100010"
    assert pos.balance(fresh) == 0, "no decline may move money"


def test_reload_declines_and_balance_limit(srv, pos):
    store = srv.stores[0].id
    never_sold = pos.token(pos.fresh_card())
    answer = pos.post(
        "/Transaction/reload", {"cardtoken": never_sold, "amount": 5, "FranchiseeID": store}
    )
    assert answer["statuscode"] == "100002"
    _, token = pos.sold_card("500")
    for _ in range(3):
        assert (
            pos.post(
                "/Transaction/reload", {"cardtoken": token, "amount": 500, "FranchiseeID": store}
            )["statuscode"]
            == "000000"
        )
    assert pos.balance(token) == Decimal("2000.00")
    over = pos.post(
        "/Transaction/reload",
        {"cardtoken": token, "amount": Decimal("0.01"), "FranchiseeID": store},
    )
    assert over["statuscode"] == "100012"
    assert (
        pos.post(
            "/Transaction/reload",
            {"cardtoken": token, "amount": Decimal("1e300"), "FranchiseeID": store},
        )["statuscode"]
        == "100012"
    )


def test_redeem_partial_and_insufficient(srv, pos):
    store = srv.stores[0].id
    _, token = pos.sold_card("4.20")
    short = pos.post(
        "/Transaction/radeem", {"cardtoken": token, "amount": 5, "FranchiseeID": store}
    )
    assert short["statuscode"] == "100005"
    assert short["balance"] == Decimal("4.20")
    partial = pos.post(
        "/Transaction/radeem",
        {"cardtoken": token, "amount": 5, "FranchiseeID": store, "acceptPartialAmount": True},
    )
    assert partial["statuscode"] == "000001"
    assert partial["approvedbalance"] == Decimal("4.20")
    assert partial["newbalance"] == 0
    empty = pos.post(
        "/Transaction/radeem",
        {"cardtoken": token, "amount": 1, "FranchiseeID": store, "acceptpartialamount": True},
    )
    assert empty["statuscode"] == "100005", "nothing is approved from an empty card"
    assert (
        pos.post(
            "/Transaction/radeem",
            {"cardtoken": token, "amount": Decimal("0.001"), "FranchiseeID": store},
        )["statuscode"]
        == "100006"
    )


def test_expired_card_is_declined():
    clock = MovableClock()
    with running(clock=clock) as srv:
        pos = Pos(srv)
        card, _ = pos.sold_card("30")
        clock.advance(days=5 * 366)
        token = pos.token(card)  # the first token expired long ago
        for path in ("/Transaction/reload", "/Transaction/radeem"):
            answer = pos.post(
                path, {"cardtoken": token, "amount": 1, "FranchiseeID": srv.stores[0].id}
            )
            assert answer["statuscode"] == "100003", path
        assert pos.post("/Transaction/balancecheck", {"cardtoken": token})["status"] is False
        pos.close()


def test_encrypted_card_reference(srv, pos):
    cipher = AesGcmCardCipher.from_base64(srv.card_key)
    card, token = pos.sold_card("15")
    answer = pos.post("/Transaction/balancecheck", {"encrypted": cipher.encrypt(card.number)})
    assert answer["statuscode"] == "000000" and answer["balance"] == 15
    other_key = AesGcmCardCipher(b"k" * 32)
    for encrypted in (other_key.encrypt(card.number), "not base64!", "AAAA"):
        assert (
            pos.post("/Transaction/balancecheck", {"encrypted": encrypted})["statuscode"]
            == "100009"
        )
    unknown = cipher.encrypt(UNKNOWN_CARD)
    assert pos.post("/Transaction/balancecheck", {"encrypted": unknown})["statuscode"] == "100001"


def test_server_without_card_key_declines_encrypted():
    with running(seed=None) as srv:
        from giftcard_toolkit.server import hash_password

        store = srv.ledger.add_store("Solo", "1 Road")
        srv.ledger.put_user("solo", hash_password("solo-password"), [store.id])
        cipher = AesGcmCardCipher(b"k" * 32)
        answer = httpx.post(
            f"{srv.url}/Transaction/balancecheck",
            auth=("solo", "solo-password"),
            json={"encrypted": cipher.encrypt(UNKNOWN_CARD)},
        ).json()
        assert answer["statuscode"] == "100009"


def test_pos_field_name_variants(srv, pos):
    store = srv.stores[0].id
    card = pos.fresh_card()
    token = pos.token(card)
    sold = pos.post(
        "/Transaction/sellnewcard",
        {"cardToken": token, "encrypted": "", "Amount": 40, "franchiseeId": store, "PosRef": None},
    )
    assert sold["statuscode"] == "000000"
    redeemed = pos.post(
        "/Transaction/radeem",
        {
            "CARDTOKEN": token,
            "encrypted": None,
            "amount": 50,
            "FranchiseeID": store,
            "posRef": "lane 2",
            "AcceptPartialAmount": True,
        },
    )
    assert redeemed["statuscode"] == "000001"
    assert redeemed["approvedbalance"] == 40


def test_constant_posref_still_makes_separate_transactions(srv, pos):
    store = srv.stores[1].id
    host_refs = set()
    for _ in range(3):
        card = pos.fresh_card(1)
        sold = pos.post(
            "/Transaction/sellnewcard",
            {"cardtoken": pos.token(card), "amount": 10, "FranchiseeID": store, "PosRef": "POS"},
        )
        assert sold["statuscode"] == "000000"
        host_refs.add(sold["hostRef"])
    assert len(host_refs) == 3
    listed = pos.http.get(f"/Batch/{store}", params={"status": "open"}).json()
    in_batch = {t["hostRef"] for b in listed["batches"] for t in b["transactions"]}
    assert host_refs <= in_batch


def test_limits_are_configurable():
    with running(limits=Limits(max_load=Decimal("50"), max_balance=Decimal("60"))) as srv:
        pos = Pos(srv)
        store = srv.stores[0].id
        fresh = pos.token(pos.fresh_card())
        assert (
            pos.post(
                "/Transaction/sellnewcard",
                {"cardtoken": fresh, "amount": 51, "FranchiseeID": store},
            )["statuscode"]
            == "100012"
        )
        assert (
            pos.post(
                "/Transaction/sellnewcard",
                {"cardtoken": fresh, "amount": 50, "FranchiseeID": store},
            )["statuscode"]
            == "000000"
        )
        assert (
            pos.post(
                "/Transaction/reload", {"cardtoken": fresh, "amount": 11, "FranchiseeID": store}
            )["statuscode"]
            == "100012"
        )
        pos.close()


@pytest.mark.parametrize("path", ["/transaction/BALANCECHECK", "/TRANSACTION/balanceCheck"])
def test_paths_are_case_insensitive_like_production(pos, path):
    _, token = pos.sold_card("3")
    assert pos.post(path, {"cardtoken": token})["balance"] == 3


CARD_ENDPOINTS = [
    ("POST", "/Transaction/balancecheck", {}),
    ("POST", "/Transaction/sellnewcard", {"amount": 5, "FranchiseeID": "STORE"}),
    ("POST", "/Transaction/reload", {"amount": 5, "FranchiseeID": "STORE"}),
    ("POST", "/Transaction/radeem", {"amount": 5, "FranchiseeID": "STORE"}),
    ("PATCH", "/Transaction/changestatus", {"status": False, "reason": "lost"}),
]


@pytest.mark.parametrize("method,path,extra", CARD_ENDPOINTS)
def test_every_card_endpoint_declines_bad_card_references(srv, pos, method, path, extra):
    cipher = AesGcmCardCipher.from_base64(srv.card_key)
    extra = {k: (srv.stores[0].id if v == "STORE" else v) for k, v in extra.items()}
    cases = {
        "100001": {"encrypted": cipher.encrypt(UNKNOWN_CARD)},
        "100009": {"encrypted": AesGcmCardCipher(b"k" * 32).encrypt(UNKNOWN_CARD)},
        "100007": {"cardtoken": "1234567890123456"},
    }
    for code, ref in cases.items():
        answer = body(pos.send(method, path, {**ref, **extra}))
        assert (answer["statuscode"], answer["status"]) == (code, False), (path, ref)
        assert answer["description"]


@pytest.mark.parametrize("path", ["/Transaction/reload", "/Transaction/radeem"])
@pytest.mark.parametrize("amount", ["0", "0.00", "-1", "-0.01", "1.234", "NaN", "-Infinity"])
def test_invalid_amounts_are_declined_100006_and_move_nothing(srv, pos, path, amount):
    _, token = pos.sold_card("10")
    raw = f'{{"cardtoken": "{token}", "amount": {amount}, "FranchiseeID": "{srv.stores[0].id}"}}'
    response = pos.http.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert body(response)["statuscode"] == "100006"
    assert pos.balance(token) == 10


def test_huge_amounts_are_over_the_limit_or_the_balance(srv, pos):
    store = srv.stores[0].id
    fresh = pos.token(pos.fresh_card())
    _, token = pos.sold_card("10")
    for path, ref, code in [
        ("/Transaction/sellnewcard", fresh, "100012"),
        ("/Transaction/reload", token, "100012"),
        ("/Transaction/radeem", token, "100005"),
    ]:
        raw = f'{{"cardtoken": "{ref}", "amount": 1e300, "FranchiseeID": "{store}"}}'
        answer = body(pos.http.post(path, content=raw))
        assert answer["statuscode"] == code, path
    assert pos.balance(token) == 10 and pos.balance(fresh) == 0


def test_amount_with_trailing_zeros_is_two_decimals(srv, pos):
    _, token = pos.sold_card("10")
    raw = f'{{"cardtoken": "{token}", "amount": 2.500, "FranchiseeID": "{srv.stores[0].id}"}}'
    answer = body(pos.http.post("/Transaction/radeem", content=raw))
    assert (answer["statuscode"], answer["newbalance"]) == ("000000", Decimal("7.50"))


def test_reload_and_redeem_decline_unknown_or_ungranted_store(srv, pos):
    _, token = pos.sold_card("10")
    unknown = "00000000-0000-4000-8000-000000000000"
    for path in ("/Transaction/reload", "/Transaction/radeem"):
        answer = pos.post(path, {"cardtoken": token, "amount": 1, "FranchiseeID": unknown})
        assert (answer["statuscode"], answer["status"]) == ("100010", False), path
    assert pos.balance(token) == 10


def test_redeem_of_a_card_never_sold_is_100002(srv, pos):
    token = pos.token(pos.fresh_card())
    answer = pos.post(
        "/Transaction/radeem", {"cardtoken": token, "amount": 1, "FranchiseeID": srv.stores[0].id}
    )
    assert answer["statuscode"] == "100002"


def test_status_change_of_a_card_never_sold_is_100002(pos):
    token = pos.token(pos.fresh_card())
    answer = body(
        pos.send(
            "PATCH",
            "/Transaction/changestatus",
            {"cardtoken": token, "status": False, "reason": "lost"},
        )
    )
    assert answer["statuscode"] == "100002"


def test_a_blocked_card_can_still_be_tokenized_and_checked(srv, pos):
    card, token = pos.sold_card("8")
    pos.send(
        "PATCH", "/Transaction/changestatus", {"cardtoken": token, "status": False, "reason": "x"}
    )
    again = pos.token(card)
    checked = pos.post("/Transaction/balancecheck", {"cardtoken": again})
    assert (checked["statuscode"], checked["status"], checked["balance"]) == ("000000", False, 8)


def test_a_token_is_usable_many_times(srv, pos):
    _, token = pos.sold_card("10")
    store = srv.stores[0].id
    for expected in ("9.00", "8.00", "7.00"):
        answer = pos.post(
            "/Transaction/radeem", {"cardtoken": token, "amount": 1, "FranchiseeID": store}
        )
        assert answer["newbalance"] == Decimal(expected)


def test_posref_is_recorded_in_either_spelling_and_null_is_absent(srv, pos):
    store = srv.stores[0].id
    token = pos.token(pos.fresh_card())
    refs = [
        pos.post(
            "/Transaction/sellnewcard",
            {"cardtoken": token, "amount": 10, "FranchiseeID": store, "posRef": "lane-1"},
        )["hostRef"],
        pos.post(
            "/Transaction/reload",
            {"cardtoken": token, "amount": 10, "FranchiseeID": store, "PosRef": "LANE-2"},
        )["hostRef"],
        pos.post(
            "/Transaction/radeem",
            {"cardtoken": token, "amount": 1, "franchiseeid": store, "PosRef": None},
        )["hostRef"],
    ]
    listed = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"][0]
    posrefs = {t["hostRef"]: t["posref"] for t in listed["transactions"]}
    assert [posrefs[r] for r in refs] == ["lane-1", "LANE-2", None]


def test_a_single_load_is_capped_at_500(srv, pos):
    store = srv.stores[0].id
    fresh = pos.token(pos.fresh_card())
    sold = pos.post(
        "/Transaction/sellnewcard",
        {"cardtoken": fresh, "amount": Decimal("500.00"), "FranchiseeID": store},
    )
    assert sold["statuscode"] == "000000"
    over = pos.post(
        "/Transaction/reload",
        {"cardtoken": fresh, "amount": Decimal("500.01"), "FranchiseeID": store},
    )
    assert (over["statuscode"], over["status"]) == ("100012", False)
    assert pos.balance(fresh) == 500


def test_card_times_follow_the_server_clock(clock):
    with running(clock=clock) as srv:
        pos = Pos(srv)
        sold_at = clock.now
        _, token = pos.sold_card("50")
        clock.advance(minutes=3)
        pos.post(
            "/Transaction/radeem",
            {"cardtoken": token, "amount": 1, "FranchiseeID": srv.stores[0].id},
        )
        clock.advance(minutes=3)
        checked = pos.post("/Transaction/balancecheck", {"cardtoken": token})
        assert datetime.fromisoformat(checked["activated"]) == sold_at
        assert datetime.fromisoformat(checked["lastused"]) == sold_at + timedelta(minutes=3)
        assert datetime.fromisoformat(checked["expire"]) == sold_at.replace(year=sold_at.year + 5)
        pos.close()


def test_accepting_partial_changes_nothing_when_the_balance_suffices(srv, pos):
    _, token = pos.sold_card("10")
    answer = pos.post(
        "/Transaction/radeem",
        {
            "cardtoken": token,
            "amount": 10,
            "FranchiseeID": srv.stores[0].id,
            "acceptpartialamount": True,
        },
    )
    assert (answer["statuscode"], answer["approvedbalance"], answer["newbalance"]) == (
        "000000",
        Decimal("10.00"),
        Decimal("0.00"),
    )
