"""Who may do what: credentials, store grants, tokens, the security-code lockout, and logs."""

from __future__ import annotations

import base64
import logging
from datetime import timedelta

import httpx
import pytest
from serverkit import MovableClock, Pos, body

from giftcard_toolkit.cards import AesGcmCardCipher
from giftcard_toolkit.server import running

PROTECTED = [
    ("PUT", "/Auth/verify"),
    ("POST", "/v1/Token"),
    ("POST", "/Transaction/balancecheck"),
    ("POST", "/Transaction/sellnewcard"),
    ("POST", "/Transaction/reload"),
    ("POST", "/Transaction/radeem"),
    ("PATCH", "/Transaction/changestatus"),
    ("GET", "/Batch/{store}"),
    ("POST", "/Batch/batch/{store}"),
]
BAD_HEADERS = {
    "missing": None,
    "wrong password": "Basic " + base64.b64encode(b"demo:wrong").decode(),
    "unknown user": "Basic " + base64.b64encode(b"mallory:demo-password").decode(),
    "not base64": "Basic !!!",
    "bearer": "Bearer abc",
    "no colon": "Basic " + base64.b64encode(b"demo").decode(),
}


@pytest.mark.parametrize("method,path", PROTECTED)
@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_every_endpoint_but_health_refuses_bad_credentials(srv, method, path, case):
    headers = {} if BAD_HEADERS[case] is None else {"Authorization": BAD_HEADERS[case]}
    url = srv.url + path.format(store=srv.stores[0].id)
    response = httpx.request(method, url, headers=headers, json={"cardtoken": "1" * 16})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="giftcard"'
    problem = response.json()
    assert problem["status"] == 401 and problem["detail"]


def test_a_server_with_no_users_says_so():
    with running(seed=None) as srv:
        response = httpx.put(f"{srv.url}/Auth/verify", auth=("anyone", "anything"))
        assert response.status_code == 401
        assert "no users" in response.json()["detail"]


def test_clerk_cannot_move_money_or_settle_for_other_stores(srv, pos):
    clerk = Pos(srv, user="clerk")
    card, _ = pos.sold_card("40")
    token = clerk.token(card)  # clerk may look a card up...
    assert clerk.balance(token) == 40
    other = srv.stores[1].id
    for path, extra in [
        ("/Transaction/sellnewcard", {}),
        ("/Transaction/reload", {}),
        ("/Transaction/radeem", {"acceptpartialamount": True}),
    ]:
        declined = clerk.post(
            path, {"cardtoken": token, "amount": 5, "FranchiseeID": other, **extra}
        )
        assert declined["statuscode"] == "100010", path
    assert body(clerk.http.get(f"/Batch/{other}"))["statuscode"] == "100010"
    assert body(clerk.http.post(f"/Batch/batch/{other}"))["statuscode"] == "100010"
    assert clerk.balance(token) == 40, "nothing moved"
    own = clerk.post(
        "/Transaction/radeem",
        {"cardtoken": token, "amount": 5, "FranchiseeID": srv.stores[0].id},
    )
    assert own["statuscode"] == "000000"
    clerk.close()


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


def test_logs_carry_requests_but_never_card_secrets(caplog):
    with running() as srv:
        pos = Pos(srv)
        cipher = AesGcmCardCipher.from_base64(srv.card_key)
        with caplog.at_level(logging.DEBUG, logger="giftcard_toolkit"):
            card, token = pos.sold_card("25")
            encrypted = cipher.encrypt(card.number)
            pos.post("/Transaction/balancecheck", {"encrypted": encrypted})
            pos.post(
                "/Transaction/radeem",
                {"cardtoken": token, "amount": 5, "FranchiseeID": srv.stores[0].id},
            )
            pos.send("POST", "/v1/Token", {"cardnumber": card.number[:15], "securitycode": "12"})
            pos.http.post("/Transaction/balancecheck", content=b"{not json")
            pos.http.put("/Auth/verify", auth=("demo", "wrong"))
        pos.close()
    access = [r.getMessage() for r in caplog.records if r.name.endswith(".access")]
    assert any(
        line.startswith("POST /Transaction/radeem 200") and "user=demo" in line and "cid=" in line
        for line in access
    ), access
    assert any(line.startswith("PUT /Auth/verify 401") for line in access)
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (card.number, card.number[:15], token, encrypted):
        assert secret not in everything
    assert f"securitycode={card.security_code}" not in everything


def test_correlation_id_is_echoed_and_generated(pos):
    mine = pos.http.get("/Health", headers={"X-Correlation-ID": "lane-7.42"})
    assert mine.headers["x-correlation-id"] == "lane-7.42"
    generated = pos.http.get("/Health", headers={"X-Correlation-ID": "bad id with spaces"})
    assert generated.headers["x-correlation-id"] != "bad id with spaces"
    assert generated.headers["x-correlation-id"]


def test_passwords_are_stored_hashed(srv):
    with srv.ledger.read() as conn:
        stored = [row[0] for row in conn.execute("SELECT password_hash FROM users")]
    assert stored and all(h.startswith("scrypt$") for h in stored)
    assert not any("password" in h for h in stored)
