"""Bad input is a 400 problem naming the field (or the contract's decline), never a 500."""

from __future__ import annotations

import pytest
from serverkit import UNKNOWN_CARD, body

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
        ({"includetransactions": "yes"}, "includetransactions"),
        ({"includetransactions": "1"}, "includetransactions"),
        ({"includetransactions": ""}, "includetransactions"),
        ({"status": "OPEN!"}, "status"),
        ({"limit": "ten"}, "limit"),
        ({"to": "2026-9-1"}, "to"),
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


BODY_ENDPOINTS = [
    ("POST", "/v1/Token"),
    ("POST", "/Transaction/balancecheck"),
    ("POST", "/Transaction/sellnewcard"),
    ("POST", "/Transaction/reload"),
    ("POST", "/Transaction/radeem"),
    ("PATCH", "/Transaction/changestatus"),
    ("POST", "/Batch/batch/{store}"),
]
JUNK = {
    "not json": b"amount=5",
    "truncated": b'{"amount": 5',
    "array": b"[]",
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
    "not utf-8": b'{"cardtoken": "\xff\xfe"}',
    "nested garbage": b'{"cardtoken": {"$ne": 1}, "cardnumber": [], "amount": {}, "status": [], '
    b'"expectedcount": {}}',
}


@pytest.mark.parametrize("method,path", BODY_ENDPOINTS)
@pytest.mark.parametrize("case", sorted(JUNK))
def test_junk_bodies_are_400_problems_never_500(srv, pos, method, path, case):
    response = pos.http.request(
        method,
        path.format(store=srv.stores[0].id),
        content=JUNK[case],
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 400 and problem["errors"]
    assert all(isinstance(m, list) and m for m in problem["errors"].values())


@pytest.mark.parametrize("path", ["/Transaction/sellnewcard", "/Transaction/reload"])
@pytest.mark.parametrize(
    "payload,field",
    [
        ({"amount": 5, "FranchiseeID": "not-a-guid"}, "FranchiseeID"),
        ({"amount": 5, "FranchiseeID": 12345}, "FranchiseeID"),
        ({"amount": 5}, "FranchiseeID"),
        ({"amount": "5.00", "FranchiseeID": "STORE"}, "amount"),
        ({"amount": None, "FranchiseeID": "STORE"}, "amount"),
    ],
)
def test_malformed_loads_are_400_naming_the_field(srv, pos, path, payload, field):
    token = pos.token(pos.fresh_card())
    payload = {k: (srv.stores[0].id if v == "STORE" else v) for k, v in payload.items()}
    response = pos.send("POST", path, {"cardtoken": token, **payload})
    assert response.status_code == 400, response.text
    assert field.lower() in {name.lower() for name in response.json()["errors"]}


@pytest.mark.parametrize(
    "refs",
    [{}, {"cardtoken": "", "encrypted": None}, {"cardtoken": "TOKEN", "encrypted": "abc"}],
    ids=["neither", "both empty", "both"],
)
def test_a_card_is_named_exactly_once(pos, refs):
    _, token = pos.sold_card("1")
    refs = {k: (token if v == "TOKEN" else v) for k, v in refs.items()}
    response = pos.send("POST", "/Transaction/balancecheck", refs)
    assert response.status_code == 400
    assert {"cardtoken", "encrypted"} & set(response.json()["errors"])


def test_a_missing_body_is_a_400_but_batch_close_needs_none(srv, pos):
    response = pos.http.post("/Transaction/balancecheck")
    assert response.status_code == 400 and "body" in response.json()["errors"]
    pos.sold_card("1", store_index=1)
    assert body(pos.http.post(f"/Batch/batch/{srv.stores[1].id}"))["statuscode"] == "000000"


@pytest.mark.parametrize("value,included", [("true", True), ("True", True), ("FALSE", False)])
def test_includetransactions_takes_true_or_false_in_any_case(srv, pos, value, included):
    response = pos.http.get(
        f"/Batch/{srv.stores[0].id}", params={"includetransactions": value, "limit": 2}
    )
    assert response.status_code == 200
    assert all(("transactions" in b) is included for b in body(response)["batches"])
