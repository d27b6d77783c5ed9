"""The giftcard-toolkit console script: admin commands, and the shipped demo card stock."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest

from giftcard_toolkit.cli import main
from giftcard_toolkit.server import running
from giftcard_toolkit.server.seed import open_demo, read_card_stock, write_card_stock

ROOT = Path(__file__).resolve().parents[1]


def _admin(db: Path, *args: str) -> None:
    assert main(["admin", "--db", str(db), *args]) == 0


def test_admin_builds_a_working_server_from_nothing(tmp_path, monkeypatch, capsys):
    db = tmp_path / "chain.sqlite"
    _admin(db, "add-store", "--name", "Main Street", "--address", "1 Main St")
    store_id = capsys.readouterr().out.split()[1]
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    _admin(db, "add-user", "alice", "--store", store_id, "--password-stdin")
    _admin(db, "issue-cards", "--store", store_id, "--count", "5", "--out", str(tmp_path / "s.csv"))
    with (tmp_path / "s.csv").open() as handle:
        issued = list(csv.DictReader(handle))
    assert len(issued) == 5
    assert all(len(row["card_number"]) == 16 and len(row["security_code"]) == 4 for row in issued)
    assert "correct horse battery" not in db.read_bytes().decode("latin-1")
    assert issued[0]["card_number"] not in db.read_bytes().decode("latin-1")

    with running(seed=None, db_path=db) as srv:
        auth = ("alice", "correct horse battery")
        with httpx.Client(base_url=srv.url, auth=auth) as http:
            verified = http.put("/Auth/verify").json()
            assert [s["franchiseeid"] for s in verified["stores"]] == [store_id]
            card = issued[0]
            token = http.post(
                "/v1/Token",
                json={"cardnumber": card["card_number"], "securitycode": card["security_code"]},
            ).json()["token"]
            sold = http.post(
                "/Transaction/sellnewcard",
                json={"cardtoken": token, "amount": 30, "FranchiseeID": store_id},
            ).json()
            assert sold["statuscode"] == "000000"
            assert http.put("/Auth/verify", auth=("alice", "wrong")).status_code == 401


def test_add_user_refuses_an_unknown_store(tmp_path, monkeypatch):
    db = tmp_path / "chain.sqlite"
    _admin(db, "add-store", "--name", "Main Street")
    monkeypatch.setattr("sys.stdin", io.StringIO("long enough password\n"))
    with pytest.raises(SystemExit, match="unknown store"):
        main(
            [
                "admin",
                "--db",
                str(db),
                "add-user",
                "bob",
                "--store",
                "00000000-0000-0000-0000-000000000000",
                "--password-stdin",
            ]
        )


def test_issue_cards_never_overwrites_a_stock_file(tmp_path):
    db = tmp_path / "chain.sqlite"
    _admin(db, "add-store", "--name", "Main Street")
    out = tmp_path / "stock.csv"
    out.write_text("precious\n")
    with pytest.raises(SystemExit, match="exists"):
        main(
            [
                "admin",
                "--db",
                str(db),
                "issue-cards",
                "--store",
                "00000000-0000-0000-0000-000000000000",
                "--count",
                "1",
                "--out",
                str(out),
            ]
        )
    assert out.read_text() == "precious\n"


def test_demo_seed_refuses_a_database_with_real_data(tmp_path):
    db = tmp_path / "real.sqlite"
    _admin(db, "add-store", "--name", "Main Street")
    before = db.read_bytes()
    with pytest.raises(SystemExit, match="non-demo"):
        main(["serve", "--seed", "demo", "--db", str(db)])
    assert db.read_bytes() == before


def test_demo_refuses_to_listen_beyond_loopback(tmp_path):
    with pytest.raises(SystemExit, match="non-loopback"):
        main(["serve", "--seed", "demo", "--host", "0.0.0.0", "--db", str(tmp_path / "d.sqlite")])


def test_shipped_demo_card_stock_is_the_default_seeds(tmp_path):
    ledger, demo = open_demo(tmp_path / "demo.sqlite")
    ledger.close()
    written = write_card_stock(demo.card_stock, tmp_path / "stock.csv")
    assert written.read_text() == (ROOT / "data" / "demo-card-stock.csv").read_text()
    shipped = read_card_stock(ROOT / "data" / "demo-card-stock.csv")
    assert len(shipped) >= 2000
    sold = sum(card.sold for card in shipped) / len(shipped)
    assert 0.65 < sold < 0.85, "about three-quarters of the demo stock is sold"
