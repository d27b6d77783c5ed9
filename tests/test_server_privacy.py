"""No answer and no log line ever holds a card number, security code, token or cipher text."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from serverkit import Pos, body

from giftcard_toolkit.cards import AesGcmCardCipher
from giftcard_toolkit.server import running

MASKED = re.compile(r"^\*{12}[0-9]{4}$")
CARDREF = re.compile(r"^[0-9a-f]{16}$")


def _strings(value: Any) -> list[str]:
    """Every string value in a JSON document (the keys are the contract's)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _every_answer_for(srv, pos: Pos, store_index: int = 0) -> tuple[Any, list[str]]:
    """A card taken through every endpoint; answers the card and every response text."""
    store = srv.stores[store_index].id
    cipher = AesGcmCardCipher.from_base64(srv.card_key)
    card = pos.fresh_card(store_index)
    texts = [
        pos.send(
            "POST", "/v1/Token", {"cardnumber": card.number, "securitycode": card.security_code}
        ).text
    ]
    token = json.loads(texts[0])["token"]
    for method, path, payload in [
        ("POST", "/Transaction/balancecheck", {"cardtoken": token}),
        ("POST", "/Transaction/sellnewcard", {"cardtoken": token, "amount": 30}),
        ("POST", "/Transaction/sellnewcard", {"cardtoken": token, "amount": 30}),  # 100004
        ("POST", "/Transaction/reload", {"encrypted": cipher.encrypt(card.number), "amount": 5}),
        ("POST", "/Transaction/radeem", {"cardtoken": token, "amount": 7}),
        ("POST", "/Transaction/radeem", {"cardtoken": token, "amount": 99}),  # 100005
        (
            "PATCH",
            "/Transaction/changestatus",
            {"cardtoken": token, "status": False, "reason": "x"},
        ),
        ("PATCH", "/Transaction/changestatus", {"cardtoken": token, "status": True, "reason": "y"}),
        ("POST", "/Transaction/balancecheck", {"encrypted": cipher.encrypt(card.number)}),
    ]:
        if "amount" in payload:
            payload["FranchiseeID"] = store
        texts.append(pos.send(method, path, payload).text)
    texts.append(pos.http.get(f"/Batch/{store}", params={"status": "open"}).text)
    texts.append(pos.http.post(f"/Batch/batch/{store}").text)
    return card, texts


def test_no_response_ever_holds_a_full_card_number_or_code(srv, pos):
    card, texts = _every_answer_for(srv, pos)
    for text in texts:
        assert card.number not in text
        assert card.security_code not in _strings(json.loads(text))
        for masked in re.findall(r'"(?:cardno|card)":"([^"]*)"', text):
            assert MASKED.match(masked), masked
    for text in texts[:-2]:  # the answers about this card alone (not the batch's)
        for masked in re.findall(r'"(?:cardno|card)":"([^"]*)"', text):
            assert masked == "*" * 12 + card.number[-4:]
        assert re.findall(r'"cardending":"([^"]*)"', text) in ([], [card.number[-4:]])


def test_batch_transactions_carry_a_stable_cardref_per_card(srv, pos):
    card, _ = _every_answer_for(srv, pos, store_index=1)
    other, _ = _every_answer_for(srv, pos, store_index=1)
    closed = body(pos.http.get(f"/Batch/{srv.stores[1].id}", params={"limit": 2}))
    transactions = [t for b in closed["batches"] for t in b["transactions"]]
    mine = [t for t in transactions if t["cardno"].endswith(card.number[-4:])]
    theirs = [t for t in transactions if t["cardno"].endswith(other.number[-4:])]
    assert len(mine) == len(theirs) == 3  # sale, reload (by cipher text), redeem
    assert all(CARDREF.match(t["cardref"]) for t in transactions)
    assert len({t["cardref"] for t in mine}) == 1
    assert len({t["cardref"] for t in theirs}) == 1
    assert mine[0]["cardref"] != theirs[0]["cardref"]
    assert srv.ledger.card_ref(card.number) == mine[0]["cardref"]


def test_logs_carry_requests_but_never_card_secrets(caplog):
    with running() as srv:
        pos = Pos(srv)
        cipher = AesGcmCardCipher.from_base64(srv.card_key)
        with caplog.at_level(logging.DEBUG):
            card, texts = _every_answer_for(srv, pos)
            token = json.loads(texts[0])["token"]
            encrypted = cipher.encrypt(card.number)
            pos.post("/Transaction/balancecheck", {"encrypted": encrypted})
            traced = pos.http.post(
                "/Transaction/balancecheck",
                json={"cardtoken": token},
                headers={"X-Correlation-ID": "lane-7.trace"},
            )
            pos.send("POST", "/v1/Token", {"cardnumber": card.number[:15], "securitycode": "12"})
            pos.send("POST", "/v1/Token", {"cardnumber": card.number, "securitycode": "0000x"})
            pos.http.post("/Transaction/balancecheck", content=b"{not json " + card.number.encode())
            pos.http.put("/Auth/verify", auth=("demo", "wrong"))
        pos.close()
    assert traced.status_code == 200
    access = [r.getMessage() for r in caplog.records if r.name == "giftcard_toolkit.server.access"]
    line_format = re.compile(
        r"^(GET|PUT|POST|PATCH) (/\S*) ([0-9]{3}) [0-9.]+ms user=(\S+) cid=(\S+)$"
    )
    assert all(line_format.match(line) for line in access), access
    assert any(
        line.startswith("POST /Transaction/radeem 200 ") and " user=demo cid=" in line
        for line in access
    ), access
    assert any(
        line.startswith("POST /Transaction/balancecheck 200") and "cid=lane-7.trace" in line
        for line in access
    )
    assert any(line.startswith("POST /v1/Token 400") for line in access)
    assert any(line.startswith("PUT /Auth/verify 401") and "user=-" in line for line in access)
    everything = "\n".join(r.getMessage() + str(r.args or "") for r in caplog.records)
    for secret in (card.number, card.number[:15], token, encrypted):
        assert secret not in everything
    assert not re.search(rf"(?<![0-9a-f-]){card.security_code}(?![0-9a-f-])", everything)


def test_correlation_id_is_echoed_and_generated(pos):
    mine = pos.http.get("/Health", headers={"X-Correlation-ID": "lane-7.42"})
    assert mine.headers["x-correlation-id"] == "lane-7.42"
    generated = pos.http.get("/Health", headers={"X-Correlation-ID": "bad id with spaces"})
    assert generated.headers["x-correlation-id"] != "bad id with spaces"
    assert generated.headers["x-correlation-id"]
