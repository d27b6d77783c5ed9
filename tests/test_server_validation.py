from __future__ import annotations

import re

import pytest
from serverkit import UNKNOWN_CARD

MASKED = re.compile(r"^\*{12}[0-9]{4}$")


NOT_LUHN = UNKNOWN_CARD[:-1] + str((int(UNKNOWN_CARD[-1]) + 1) % 10)


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
