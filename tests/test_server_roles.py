"""Roles and limits on the server: an analyst only reads, a user's own limit declines above
it, ``verify`` says both, and ``admin`` manages them (contract: "Roles and limits")."""

from __future__ import annotations

import io
import sqlite3
from decimal import Decimal

import httpx
import pytest
import simplejson
from serverkit import Pos, body, books

from giftcard_toolkit.cli import main
from giftcard_toolkit.server import Ledger, create_app, hash_password
from giftcard_toolkit.server.auth import Authenticator
from giftcard_toolkit.server.ledger import SCHEMA_VERSION

CAPPED = ("capped", "capped-password")


@pytest.fixture(scope="module")
def analyst(srv) -> Pos:
    terminal = Pos(srv, "analyst")
    yield terminal
    terminal.close()


@pytest.fixture(scope="module")
def capped(srv) -> Pos:
    """A clerk of the first store whose own limit is 100.00."""
    store = srv.stores[0].id
    srv.ledger.put_user(CAPPED[0], hash_password(CAPPED[1]), [store], max_amount=Decimal("100"))
    srv.users[CAPPED[0]] = CAPPED[1]
    terminal = Pos(srv, CAPPED[0])
    yield terminal
    terminal.close()


def _movement(card_token: str, amount: str, store: str) -> dict[str, object]:
    return {"cardtoken": card_token, "amount": Decimal(amount), "FranchiseeID": store}


def test_verify_reports_role_and_limit(srv, pos, analyst, capped):
    demo = pos.http.put("/Auth/verify").json()
    assert (demo["role"], demo["maxamount"]) == ("clerk", None)
    reader = analyst.http.put("/Auth/verify").json()
    assert (reader["role"], reader["maxamount"]) == ("analyst", None)
    assert {s["franchiseeid"] for s in reader["stores"]} == {s.id for s in srv.stores}
    assert body(capped.http.put("/Auth/verify"))["maxamount"] == Decimal("100.00")


def test_an_analyst_reads_everything_it_is_granted(srv, pos, analyst):
    card, _ = pos.sold_card("40.00")
    token = analyst.token(card)  # tokenizing is reading
    assert analyst.balance(token) == Decimal("40.00")
    batches = analyst.http.get(f"/Batch/{srv.stores[0].id}", params={"status": "open"}).json()
    assert batches["statuscode"] == "000000" and batches["batches"]


def test_an_analyst_is_refused_every_change_and_nothing_changes(srv, pos, analyst):
    store = srv.stores[0].id
    sold, _ = pos.sold_card("40.00")
    unsold = pos.fresh_card()
    sold_token, unsold_token = analyst.token(sold), analyst.token(unsold)
    attempts = [
        ("POST", "/Transaction/sellnewcard", _movement(unsold_token, "10.00", store)),
        ("POST", "/Transaction/reload", _movement(sold_token, "10.00", store)),
        ("POST", "/Transaction/radeem", _movement(sold_token, "10.00", store)),
        (
            "PATCH",
            "/Transaction/changestatus",
            {"cardtoken": sold_token, "status": False, "reason": "lost"},
        ),
        ("POST", f"/Batch/batch/{store}", {}),
    ]
    before = books(srv)
    for index, (method, path, payload) in enumerate(attempts):
        for key in (None, f"analyst-{index}"):  # with a key: none is kept either
            headers = {"Idempotency-Key": key} if key else {}
            answer = analyst.send(method, path, payload, headers=headers)
            assert answer.status_code == 200, answer.text
            declined = answer.json()
            assert declined["statuscode"] == "100017", (path, declined)
            assert declined["status"] is False
            assert "may only read" in declined["description"]
            assert "analyst" in declined["description"]
            assert books(srv) == before, f"{method} {path} changed something"
    assert pos.balance(pos.token(sold)) == Decimal("40.00")
    assert srv.ledger.check_invariants() == []


def test_an_analysts_malformed_request_is_still_a_400(srv, analyst):
    answer = analyst.send("POST", "/Transaction/reload", {"amount": "ten"})
    assert answer.status_code == 400


def test_a_users_own_limit_declines_above_and_approves_at_it(srv, pos, capped):
    store = srv.stores[0].id
    card = pos.fresh_card()  # the shared terminal knows which cards are untouched
    token = capped.token(card)
    before = books(srv)
    over = capped.post("/Transaction/sellnewcard", _movement(token, "100.01", store))
    assert over["statuscode"] == "100012"
    assert "100.00" in over["description"] and "capped" in over["description"]
    assert books(srv) == before, "a decline changes nothing"
    sold = capped.post("/Transaction/sellnewcard", _movement(token, "100.00", store))
    assert sold["statuscode"] == "000000" and sold["balance"] == Decimal("100.00")
    reload = capped.post("/Transaction/reload", _movement(token, "150.00", store))
    assert reload["statuscode"] == "100012"
    redeem = capped.post("/Transaction/radeem", _movement(token, "100.01", store))
    assert redeem["statuscode"] == "100012" and "100.00" in redeem["description"]
    assert capped.balance(token) == Decimal("100.00")
    taken = capped.post("/Transaction/radeem", _movement(token, "60.00", store))
    assert taken["statuscode"] == "000000" and taken["newbalance"] == Decimal("40.00")


@pytest.mark.anyio
async def test_the_server_wide_limits_hold_for_a_user_with_a_higher_limit(database):
    ledger = Ledger(database)
    try:
        store = ledger.add_store("Main Street").id
        ledger.put_user("big", hash_password("big-password"), [store], max_amount=Decimal(900))
        (card,) = ledger.issue_cards(store, 1)
        async with _asgi(ledger, ("big", "big-password")) as http:
            token = await _token(http, card)
            sold = await _post(http, "/Transaction/sellnewcard", _movement(token, "600.00", store))
            assert sold.json()["statuscode"] == "100012"
            assert "own limit" not in sold.json()["description"]
    finally:
        ledger.close()


def _asgi(ledger: Ledger, auth: tuple[str, str]) -> httpx.AsyncClient:
    """The app in process, with no verified-sign-in cache: a changed limit applies at once."""
    app = create_app(ledger, authenticator=Authenticator(ledger, 0.001, refresh_seconds=0))
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://chain", auth=auth)


async def _post(
    http: httpx.AsyncClient, path: str, payload: dict[str, object], key: str | None = None
) -> httpx.Response:
    headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
    content = simplejson.dumps(payload, use_decimal=True)
    return await http.post(path, content=content, headers=headers)


async def _token(http: httpx.AsyncClient, card) -> str:
    payload = {"cardnumber": card.number, "securitycode": card.security_code}
    return str((await _post(http, "/v1/Token", payload)).json()["token"])


@pytest.mark.anyio
async def test_a_replay_stays_a_replay_after_the_limit_is_lowered(database):
    ledger = Ledger(database)
    try:
        store = ledger.add_store("Main Street").id
        ledger.put_user("sam", hash_password("sam-password"), [store], max_amount=Decimal(200))
        (card,) = ledger.issue_cards(store, 1)
        async with _asgi(ledger, ("sam", "sam-password")) as http:
            token = await _token(http, card)
            sale = _movement(token, "150.00", store)
            first = await _post(http, "/Transaction/sellnewcard", sale, key="s1")
            assert first.json()["statuscode"] == "000000"
            ledger.put_user("sam", hash_password("sam-password"), [store], max_amount=Decimal(100))
            again = await _post(http, "/Transaction/sellnewcard", sale, key="s1")
            assert again.headers.get("Idempotent-Replayed") == "true"
            assert again.text == first.text
            reload = _movement(token, "150.00", store)
            new = await _post(http, "/Transaction/reload", reload, key="r1")
            assert new.json()["statuscode"] == "100012", "the lowered limit applies to new ones"
        with ledger.read() as conn:
            assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 1
    finally:
        ledger.close()


# ------------------------------------------------------------------ admin


def _add_user(db, monkeypatch, *args: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    return main(["admin", "--db", str(db), "add-user", *args, "--password-stdin"])


def test_admin_adds_users_with_roles_and_limits_and_lists_them(database, capsys, monkeypatch):
    db = database
    assert main(["admin", "--db", str(db), "add-store", "--name", "Main Street"]) == 0
    store = capsys.readouterr().out.split()[1]
    assert _add_user(db, monkeypatch, "ann", "--store", store, "--role", "analyst") == 0
    assert _add_user(db, monkeypatch, "cal", "--store", store, "--max-amount", "250.00") == 0
    assert _add_user(db, monkeypatch, "dee", "--store", store) == 0
    capsys.readouterr()
    # A reset (new password) keeps the role and limit it is not given.
    assert _add_user(db, monkeypatch, "cal", "--store", store) == 0
    assert "250.00" in capsys.readouterr().out
    assert main(["admin", "--db", str(db), "list-users"]) == 0
    listed = capsys.readouterr().out
    lines = {line.split()[0]: line for line in listed.splitlines()}
    assert "role analyst" in lines["ann"] and "limit none" in lines["ann"]
    assert "role clerk" in lines["cal"] and "limit 250.00" in lines["cal"]
    assert "role clerk" in lines["dee"] and "Main Street" in lines["dee"]
    assert "scrypt" not in listed and "a-long-password" not in listed
    assert _add_user(db, monkeypatch, "cal", "--store", store, "--max-amount", "none") == 0
    ledger = Ledger(db)
    try:
        assert ledger.user_record("cal").max_amount is None
    finally:
        ledger.close()


def test_admin_refuses_an_unknown_role_naming_the_roles(database, capsys, monkeypatch):
    db = database
    assert main(["admin", "--db", str(db), "add-store", "--name", "Main Street"]) == 0
    store = capsys.readouterr().out.split()[1]
    with pytest.raises(SystemExit) as refused:
        _add_user(db, monkeypatch, "eve", "--store", store, "--role", "manager")
    message = str(refused.value)
    assert "unknown role 'manager'" in message
    assert "clerk" in message and "analyst" in message and "nothing was changed" in message
    with pytest.raises(SystemExit) as bad_limit:
        _add_user(db, monkeypatch, "eve", "--store", store, "--max-amount", "12.345")
    assert "--max-amount" in str(bad_limit.value)
    ledger = Ledger(db)
    try:
        assert ledger.user_record("eve") is None
        with pytest.raises(ValueError, match="clerk, analyst"):
            ledger.put_user("eve", hash_password("x" * 8), [store], role="manager")
    finally:
        ledger.close()


# ------------------------------------------------------------------ schema


def _as_version_2(path) -> None:
    """Make ``path`` what schema version 2 wrote: users without a role or limit, stores
    without a jurisdiction."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            PRAGMA foreign_keys=OFF;
            BEGIN;
            CREATE TABLE users_v2 (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL);
            INSERT INTO users_v2 SELECT username, password_hash FROM users;
            DROP TABLE users;
            ALTER TABLE users_v2 RENAME TO users;
            ALTER TABLE stores DROP COLUMN jurisdiction;
            UPDATE meta SET value = '2' WHERE key = 'schema_version';
            COMMIT;
            """
        )
    finally:
        conn.close()


@pytest.mark.anyio
@pytest.mark.backends("sqlite")  # a SQLite file of schema version 2, migrated in place
async def test_a_version_2_database_upgrades_keeping_its_users_and_money(tmp_path):
    path = tmp_path / "old.sqlite"
    ledger = Ledger(path)
    store = ledger.add_store("Main Street").id
    ledger.put_user("old", hash_password("old-password"), [store])
    (card,) = ledger.issue_cards(store, 1)
    ledger.close()
    _as_version_2(path)
    conn = sqlite3.connect(path)
    assert "role" not in {r[1] for r in conn.execute("PRAGMA table_info(users)")}
    conn.close()

    upgraded = Ledger(path)
    try:
        assert upgraded.meta("schema_version") == SCHEMA_VERSION  # and on to the latest
        record = upgraded.user_record("old")
        assert record is not None
        assert (record.role, record.max_amount, record.stores) == ("clerk", None, {store})
        async with _asgi(upgraded, ("old", "old-password")) as http:
            assert (await http.put("/Auth/verify")).json()["role"] == "clerk"
            token = await _token(http, card)
            sold = await _post(http, "/Transaction/sellnewcard", _movement(token, "25.00", store))
            assert sold.json()["statuscode"] == "000000"
        upgraded.put_user("reader", hash_password("reader-password"), [store], role="analyst")
        assert upgraded.user_record("reader").role == "analyst"
    finally:
        upgraded.close()
    again = Ledger(path)  # opening an upgraded database again changes nothing
    try:
        assert again.meta("schema_version") == SCHEMA_VERSION
        assert again.check_invariants() == []
    finally:
        again.close()
