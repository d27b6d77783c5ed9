"""Card tokens: 16 random digits, 10 minutes, only for their creator; the code lockout."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
from serverkit import UNKNOWN_CARD, MovableClock, Pos, body

from giftcard_toolkit.server import running


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


def test_a_token_works_only_for_the_user_who_made_it(srv, pos):
    clerk = Pos(srv, user="clerk")
    _, demo_token = pos.sold_card("10")
    answer = clerk.post("/Transaction/balancecheck", {"cardtoken": demo_token})
    assert answer["statuscode"] == "100007"
    unknown = clerk.post("/Transaction/balancecheck", {"cardtoken": "1234567890123456"})
    assert unknown["statuscode"] == "100007"
    clerk.close()


def test_token_expires_at_exactly_ten_minutes():
    clock = MovableClock()
    with running(clock=clock) as srv:
        pos = Pos(srv)
        card, token = pos.sold_card("10")
        clock.advance(minutes=9, seconds=59, microseconds=999_999)
        assert pos.post("/Transaction/balancecheck", {"cardtoken": token})["statuscode"] == (
            "000000"
        )
        clock.advance(microseconds=1)
        answer = pos.post("/Transaction/balancecheck", {"cardtoken": token})
        assert answer["statuscode"] == "100007"
        assert pos.balance(pos.token(card)) == 10, "a new token works again"
        pos.close()


def test_token_exp_is_creation_plus_ten_minutes():
    clock = MovableClock()
    with running(clock=clock) as srv:
        pos = Pos(srv)
        card = pos.fresh_card()
        answer = pos.post(
            "/v1/Token", {"cardnumber": card.number, "securitycode": card.security_code}
        )
        from datetime import datetime

        assert datetime.fromisoformat(answer["exp"]) == clock.now + timedelta(minutes=10)
        pos.close()


def test_five_wrong_codes_lock_the_card_for_fifteen_minutes():
    clock = MovableClock()
    with running(clock=clock) as srv:
        pos = Pos(srv)
        card = pos.fresh_card()
        wrong = f"{(int(card.security_code) + 1) % 10000:04d}"

        def tokenize(code: str) -> str:
            return pos.post("/v1/Token", {"cardnumber": card.number, "securitycode": code})[
                "statuscode"
            ]

        assert [tokenize(wrong) for _ in range(5)] == ["100008"] * 5
        assert tokenize(card.security_code) == "100014", "locked even with the right code"
        clock.advance(minutes=14, seconds=59)
        assert tokenize(card.security_code) == "100014"
        clock.advance(seconds=1)
        assert tokenize(card.security_code) == "000000"
        pos.close()


def test_wrong_codes_spread_beyond_fifteen_minutes_do_not_lock():
    clock = MovableClock()
    with running(clock=clock) as srv:
        pos = Pos(srv)
        card = pos.fresh_card()
        wrong = f"{(int(card.security_code) + 5) % 10000:04d}"
        for _ in range(8):
            answer = pos.post("/v1/Token", {"cardnumber": card.number, "securitycode": wrong})
            assert answer["statuscode"] == "100008"
            clock.advance(minutes=4)
        pos.close()


def test_lockout_holds_under_concurrent_guesses(srv, pos):
    card = pos.fresh_card()
    guesses = [f"{(int(card.security_code) + i) % 10000:04d}" for i in range(1, 31)]

    def guess(code: str) -> str:
        with httpx.Client(base_url=srv.url, auth=("demo", "demo-password")) as http:
            answer = http.post("/v1/Token", json={"cardnumber": card.number, "securitycode": code})
            return str(answer.json()["statuscode"])

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=15) as pool:
        codes = list(pool.map(guess, guesses))
    assert codes.count("100008") == 5, codes
    assert codes.count("100014") == 25
    assert guess(card.security_code) == "100014"


def test_a_lockout_is_per_card(clock):
    with running(clock=clock) as srv:
        pos = Pos(srv)
        locked, neighbour = pos.fresh_card(), pos.fresh_card()
        wrong = f"{(int(locked.security_code) + 1) % 10000:04d}"
        for _ in range(5):
            pos.post("/v1/Token", {"cardnumber": locked.number, "securitycode": wrong})
        assert pos.token(neighbour)
        answer = pos.post(
            "/v1/Token", {"cardnumber": locked.number, "securitycode": locked.security_code}
        )
        assert (answer["statuscode"], answer["status"]) == ("100014", False)
        assert "token" not in answer
        pos.close()


def test_each_token_is_new_random_and_not_the_card_number(pos, fresh_card):
    tokens = {pos.token(fresh_card) for _ in range(5)}
    assert len(tokens) == 5
    assert fresh_card.number not in tokens
    assert all(re.fullmatch(r"[0-9]{16}", t) for t in tokens)


def test_an_expired_token_is_refused_on_every_card_endpoint(clock):
    with running(clock=clock) as srv:
        pos = Pos(srv)
        _, token = pos.sold_card("10")
        clock.advance(minutes=10)
        store = srv.stores[0].id
        for method, path, extra in [
            ("POST", "/Transaction/balancecheck", {}),
            ("POST", "/Transaction/reload", {"amount": 1, "FranchiseeID": store}),
            ("POST", "/Transaction/radeem", {"amount": 1, "FranchiseeID": store}),
            ("PATCH", "/Transaction/changestatus", {"status": False, "reason": "x"}),
        ]:
            answer = body(pos.send(method, path, {"cardtoken": token, **extra}))
            assert answer["statuscode"] == "100007", path
        pos.close()
