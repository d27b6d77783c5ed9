"""Moving a server from SQLite to PostgreSQL with ``admin copy-from-sqlite``, and ``admin``
on a PostgreSQL database."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pgkit import new_database, require_postgres
from serverkit import Pos

from giftcard_toolkit.cli import main
from giftcard_toolkit.server import Ledger, running


@pytest.fixture(autouse=True)
def _postgres() -> None:
    require_postgres()


def test_a_sqlite_servers_ledger_moves_to_postgresql_whole(tmp_path, capsys):
    """Every row arrives, money and card lookups work on the copy, and new rows get new
    ids (the identity sequences continue past the copied rows)."""
    source = tmp_path / "chain.sqlite"
    with running(db_path=source) as srv:
        pos = Pos(srv)
        card, token = pos.sold_card("40.00")
        pos.close()
    url = new_database()
    assert main(["admin", "--db", url, "copy-from-sqlite", str(source)]) == 0
    said = capsys.readouterr().out
    assert "copied" in said and "ledger" in said and card.number not in said

    before, after = Ledger(source), Ledger(url)
    try:
        for table in ("stores", "users", "cards", "batches", "ledger", "tokens"):
            query = f"SELECT count(*) FROM {table}"
            with before.read() as a, after.read() as b:
                assert a.execute(query).fetchone()[0] == b.execute(query).fetchone()[0], table
        assert after.check_invariants() == []
    finally:
        before.close()
        after.close()

    with running(db_path=url) as srv:  # the copy serves: the same card, the same balance
        pos = Pos(srv)
        assert pos.balance(token) == Decimal("40.00")
        _, second = pos.sold_card("15.00")
        assert pos.balance(second) == Decimal("15.00")
        assert srv.ledger.check_invariants() == []
        pos.close()


def test_copying_into_a_database_with_data_is_refused_and_changes_nothing(tmp_path, capsys):
    source = tmp_path / "chain.sqlite"
    with running(db_path=source):
        pass
    url = new_database()
    assert main(["admin", "--db", url, "copy-from-sqlite", str(source)]) == 0
    with pytest.raises(SystemExit) as refused:
        main(["admin", "--db", url, "copy-from-sqlite", str(source)])
    assert "holds data already" in str(refused.value) and "nothing was copied" in str(refused.value)
    ledger = Ledger(url)
    try:
        assert ledger.check_invariants() == []
        assert len(ledger.stores()) == 3
    finally:
        ledger.close()


def test_copy_needs_a_postgresql_target_and_an_existing_source(tmp_path):
    with pytest.raises(SystemExit, match="is not a PostgreSQL url"):
        main(["admin", "--db", str(tmp_path / "x.sqlite"), "copy-from-sqlite", "y.sqlite"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["admin", "--db", new_database(), "copy-from-sqlite", str(tmp_path / "none")])


def test_admin_works_on_a_postgresql_database(capsys):
    url = new_database()
    assert main(["admin", "--db", url, "add-store", "--name", "Main Street"]) == 0
    assert main(["admin", "--db", url, "stores"]) == 0
    assert "Main Street" in capsys.readouterr().out


def test_an_unreachable_database_is_one_clear_line(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["admin", "--db", "postgresql://nobody@127.0.0.1:1/none", "stores"])
    text = str(refused.value)
    assert "cannot reach the PostgreSQL database" in text and "nothing was changed" in text
