"""Who may do what: Basic credentials on every endpoint but /Health, and store grants."""

from __future__ import annotations

import base64
from datetime import datetime

import httpx
import pytest
from serverkit import Pos, body

from giftcard_toolkit.server import hash_password, running


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


def test_batch_for_a_store_not_granted_is_declined_with_no_batches(srv):
    clerk = httpx.Client(base_url=srv.url, auth=("clerk", "clerk-password"))
    for store in srv.stores[1:]:
        listed = clerk.get(f"/Batch/{store.id}").json()
        assert listed["statuscode"] == "100010" and listed["batches"] == []
        assert clerk.post(f"/Batch/batch/{store.id}").json()["statuscode"] == "100010"
    unknown = clerk.get(f"/Batch/{'0' * 8}-0000-4000-8000-{'0' * 12}").json()
    assert unknown["statuscode"] == "100010"
    clerk.close()


def test_passwords_are_stored_hashed(srv):
    with srv.ledger.read() as conn:
        stored = [row[0] for row in conn.execute("SELECT password_hash FROM users")]
    assert stored and all(h.startswith("scrypt$") for h in stored)
    assert not any("password" in h for h in stored)


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/Batch/not-a-guid"),
        ("GET", "/Batch/{store}?limit=0"),
        ("GET", "/Batch/{store}?status=pending"),
        ("POST", "/Batch/batch/12345"),
        ("POST", "/v1/Token"),
    ],
)
def test_credentials_are_checked_before_the_request_is_judged(srv, method, path):
    """An anonymous caller learns nothing about the request: 401, never 400."""
    url = srv.url + path.format(store=srv.stores[0].id)
    response = httpx.request(method, url, content=b"not json")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="giftcard"'


def test_clerk_sees_and_settles_its_own_store(srv):
    with httpx.Client(base_url=srv.url, auth=("clerk", "clerk-password")) as clerk:
        own = srv.stores[0].id
        listed = body(clerk.get(f"/Batch/{own}", params={"limit": 2}))
        assert listed["statuscode"] == "000000" and len(listed["batches"]) == 2
        closed = body(clerk.post(f"/Batch/batch/{own}"))
        assert closed["statuscode"] == "000000"
        assert closed["batches"][0]["status"] == "closed"


def test_demo_gets_100010_for_a_store_that_does_not_exist(srv):
    unknown = "00000000-0000-4000-8000-000000000000"
    with httpx.Client(base_url=srv.url, auth=(srv.username, srv.password)) as demo:
        listed = body(demo.get(f"/Batch/{unknown}"))
        assert (listed["statuscode"], listed["batches"]) == ("100010", [])
        assert body(demo.post(f"/Batch/batch/{unknown}"))["statuscode"] == "100010"


def test_health_tells_the_server_clock(clock):
    with running(clock=clock) as srv:
        answer = httpx.get(f"{srv.url}/Health")
        assert answer.status_code == 200
        assert datetime.fromisoformat(answer.json()["time"]) == clock.now


def test_basic_scheme_is_case_insensitive_and_passwords_may_hold_colons(srv):
    srv.ledger.put_user("lane9", hash_password("pa:ss:word"), [srv.stores[0].id])
    encoded = base64.b64encode(b"lane9:pa:ss:word").decode()
    for scheme in ("Basic", "basic", "BASIC"):
        answer = httpx.put(
            f"{srv.url}/Auth/verify", headers={"Authorization": f"{scheme} {encoded}"}
        )
        assert answer.status_code == 200 and answer.json()["username"] == "lane9"
    wrong_case = base64.b64encode(b"LANE9:pa:ss:word").decode()
    refused = httpx.put(f"{srv.url}/Auth/verify", headers={"Authorization": f"Basic {wrong_case}"})
    assert refused.status_code == 401


def test_verify_ignores_a_body(srv):
    answer = httpx.put(
        f"{srv.url}/Auth/verify", auth=(srv.username, srv.password), content=b"{not json"
    )
    assert answer.status_code == 200 and answer.json()["statuscode"] == "000000"
