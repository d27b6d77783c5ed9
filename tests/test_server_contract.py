"""Every endpoint of the contract over real HTTP: approvals, each decline, POS field quirks."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

import httpx
import pytest
from serverkit import UNKNOWN_CARD, MovableClock, Pos, body

from giftcard_toolkit.cards import AesGcmCardCipher
from giftcard_toolkit.server import Limits, running

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


def test_health_needs_no_credentials(srv):
    answer = httpx.get(f"{srv.url}/Health")
    assert answer.status_code == 200
    assert answer.json()["status"] == "Healthy"
    assert answer.json()["version"]


def test_verify_names_the_user_and_only_its_stores(srv, pos):
    demo = pos.http.put("/Auth/verify").json()
    assert demo["statuscode"] == "000000"
    assert demo["username"] == "demo"
    assert {s["franchiseeid"] for s in demo["stores"]} == {s.id for s in srv.stores}
    clerk = httpx.put(f"{srv.url}/Auth/verify", auth=("clerk", "clerk-password")).json()
    assert [s["franchiseeid"] for s in clerk["stores"]] == [srv.stores[0].id]
    assert clerk["stores"][0]["storename"] == srv.stores[0].name


def test_token_is_16_digits_valid_for_10_minutes(pos):
    card = pos.fresh_card()
    answer = pos.post("/v1/Token", {"cardnumber": card.number, "securitycode": card.security_code})
    assert re.fullmatch(r"[0-9]{16}", answer["token"])
    assert answer["token"] != card.number


def test_token_declines_unknown_card_and_wrong_code(pos):
    assert (
        pos.post("/v1/Token", {"cardnumber": UNKNOWN_CARD, "securitycode": "1234"})["statuscode"]
        == "100001"
    )
    card = pos.fresh_card()
    wrong = f"{(int(card.security_code) + 1) % 10000:04d}"
    assert (
        pos.post("/v1/Token", {"cardnumber": card.number, "securitycode": wrong})["statuscode"]
        == "100008"
    )


def test_card_numbers_may_carry_spaces_and_dashes(pos):
    card = pos.fresh_card()
    spaced = " ".join(card.number[i : i + 4] for i in range(0, 16, 4))
    dashed = spaced.replace(" ", "-")
    for number in (spaced, dashed):
        answer = pos.post("/v1/Token", {"cardnumber": number, "securitycode": card.security_code})
        assert answer["statuscode"] == "000000"


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


def test_batches_list_newest_first_with_totals_and_filters(srv, pos):
    store = srv.stores[2].id
    listed = body(pos.http.get(f"/Batch/{store}", params={"limit": 5}))
    assert listed["statuscode"] == "000000" and listed["franchiseeid"] == store
    batches = listed["batches"]
    assert len(batches) == 5
    assert batches[0]["status"] == "open" and batches[0]["closed"] is None
    assert [b["opened"] for b in batches] == sorted((b["opened"] for b in batches), reverse=True)
    for batch in batches:
        kinds = {"sale": Decimal(0), "reload": Decimal(0), "redeem": Decimal(0)}
        for t in batch["transactions"]:
            kinds[t["type"]] += t["amount"]
            assert MASKED.match(t["cardno"]) and re.fullmatch(r"[0-9a-f]{16}", t["cardref"])
            sign = -1 if t["type"] == "redeem" else 1
            assert t["newbalance"] == t["previousbalance"] + sign * t["amount"]
        assert batch["transactioncount"] == len(batch["transactions"])
        assert (batch["soldamount"], batch["reloadedamount"], batch["redeemedamount"]) == (
            kinds["sale"],
            kinds["reload"],
            kinds["redeem"],
        )
        assert batch["netamount"] == kinds["sale"] + kinds["reload"] - kinds["redeem"]
        times = [t["datetime"] for t in batch["transactions"]]
        assert times == sorted(times), "oldest first within a batch"

    closed = body(
        pos.http.get(
            f"/Batch/{store}",
            params={
                "status": "closed",
                "from": "2026-09-10",
                "to": "2026-09-12",
                "includetransactions": "false",
            },
        )
    )["batches"]
    assert [b["opened"][:10] for b in closed] == ["2026-09-12", "2026-09-11", "2026-09-10"]
    assert all("transactions" not in b and b["status"] == "closed" for b in closed)
    opened = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"]
    assert len(opened) == 1


def test_cardref_follows_one_card_across_transactions(srv, pos):
    store = srv.stores[0].id
    card, token = pos.sold_card("30")
    pos.post("/Transaction/radeem", {"cardtoken": token, "amount": 5, "FranchiseeID": store})
    listed = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"][0]
    mine = [t for t in listed["transactions"] if t["cardno"].endswith(card.number[-4:])]
    assert len({t["cardref"] for t in mine}) == 1
    assert card.number not in pos.http.get(f"/Batch/{store}").text


def test_close_batch_with_expected_totals():
    clock = MovableClock()
    with running(clock=clock) as srv:
        pos = Pos(srv)
        store = srv.stores[1].id
        open_now = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"][0]
        mismatch = pos.post(f"/Batch/batch/{store}", {"expectedcount": 1, "expectedamount": 1})
        assert mismatch["statuscode"] == "100013"
        assert mismatch["transactioncount"] == open_now["transactioncount"]
        assert mismatch["netamount"] == open_now["netamount"]
        closed = pos.post(
            f"/Batch/batch/{store}",
            {
                "expectedcount": open_now["transactioncount"],
                "expectedamount": open_now["netamount"],
            },
        )
        assert closed["statuscode"] == "000000"
        (batch,) = closed["batches"]
        assert batch["batchid"] == open_now["batchid"] and batch["status"] == "closed"
        assert len(batch["transactions"]) == open_now["transactioncount"]
        again = pos.http.post(f"/Batch/batch/{store}")
        assert body(again)["statuscode"] == "100016"
        clock.advance(minutes=1)
        _, token = pos.sold_card("10", store_index=1)
        after = body(pos.http.get(f"/Batch/{store}", params={"status": "open"}))["batches"]
        assert len(after) == 1 and after[0]["batchid"] != batch["batchid"]
        assert after[0]["transactioncount"] == 1
        pos.close()


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


def test_money_is_sent_with_two_decimals(pos):
    _, token = pos.sold_card("7.5")
    text = pos.send("POST", "/Transaction/balancecheck", {"cardtoken": token}).text
    assert '"balance":7.50' in text


def test_no_response_ever_holds_a_full_card_number(srv, pos):
    card, token = pos.sold_card("12")
    texts = [
        pos.send("POST", "/Transaction/balancecheck", {"cardtoken": token}).text,
        pos.send(
            "POST",
            "/Transaction/radeem",
            {"cardtoken": token, "amount": 1, "FranchiseeID": srv.stores[0].id},
        ).text,
        pos.http.get(f"/Batch/{srv.stores[0].id}").text,
    ]
    for text in texts:
        assert card.number not in text and card.security_code not in text.split("cardending")[0]


def test_openapi_documents_every_endpoint(srv):
    spec = httpx.get(f"{srv.url}/openapi.json").json()
    expected = {
        ("get", "/Health"),
        ("put", "/Auth/verify"),
        ("post", "/v1/Token"),
        ("post", "/Transaction/balancecheck"),
        ("post", "/Transaction/sellnewcard"),
        ("post", "/Transaction/reload"),
        ("post", "/Transaction/radeem"),
        ("patch", "/Transaction/changestatus"),
        ("get", "/Batch/{storeid}"),
        ("post", "/Batch/batch/{storeid}"),
    }
    found = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert expected <= found
    for method, path in expected:
        operation = spec["paths"][path][method]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]
        if method in ("post", "patch") and path != "/Batch/batch/{storeid}":
            assert operation["requestBody"]["required"] is True
            assert operation["requestBody"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize("path", ["/transaction/BALANCECHECK", "/TRANSACTION/balanceCheck"])
def test_paths_are_case_insensitive_like_production(pos, path):
    _, token = pos.sold_card("3")
    assert pos.post(path, {"cardtoken": token})["balance"] == 3


def test_batch_for_a_store_not_granted_is_declined_with_no_batches(srv):
    clerk = httpx.Client(base_url=srv.url, auth=("clerk", "clerk-password"))
    for store in srv.stores[1:]:
        listed = clerk.get(f"/Batch/{store.id}").json()
        assert listed["statuscode"] == "100010" and listed["batches"] == []
        assert clerk.post(f"/Batch/batch/{store.id}").json()["statuscode"] == "100010"
    unknown = clerk.get(f"/Batch/{'0' * 8}-0000-4000-8000-{'0' * 12}").json()
    assert unknown["statuscode"] == "100010"
    clerk.close()


def test_days_filter_uses_the_server_time_zone():
    from zoneinfo import ZoneInfo

    with running(tz=ZoneInfo("America/New_York")) as srv:
        pos = Pos(srv)
        store = srv.stores[0].id
        batches = body(
            pos.http.get(
                f"/Batch/{store}",
                params={"status": "closed", "from": "2026-09-20", "to": "2026-09-20"},
            )
        )["batches"]
        assert len(batches) == 1
        assert batches[0]["opened"].startswith("2026-09-20T")
        assert batches[0]["opened"].endswith("-04:00")
        pos.close()
