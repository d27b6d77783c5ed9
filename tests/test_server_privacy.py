from __future__ import annotations

import logging
import re

from serverkit import Pos

from giftcard_toolkit.cards import AesGcmCardCipher
from giftcard_toolkit.server import running

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


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
