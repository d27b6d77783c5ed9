"""``admin issue-cards``: the new cards and their stock file exist both or neither.

The stock file is the only copy of the numbers and codes (the database keeps HMACs): it is
created 0600 before anything is issued, written and fsynced inside the transaction that
adds the cards, and removed again when that transaction does not commit.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from giftcard_toolkit.cli import main
from giftcard_toolkit.server import Ledger


def _admin(db: Path, *args: str) -> None:
    assert main(["admin", "--db", str(db), *args]) == 0


def _issue(db: Path, store_id: str, out: Path, count: int = 5) -> int:
    return main(
        [
            "admin",
            "--db",
            str(db),
            "issue-cards",
            "--store",
            store_id,
            "--count",
            str(count),
            "--out",
            str(out),
        ]
    )


def _cards_in(db: Path, store_id: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM cards WHERE stock_store_id = ?", (store_id,)
            ).fetchone()[0]
        )


@pytest.fixture
def chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    db = tmp_path / "chain.sqlite"
    _admin(db, "add-store", "--name", "Main Street")
    store_id = capsys.readouterr().out.split()[1]
    return db, store_id


@pytest.mark.parametrize("under", ["afile/x.csv", "afile/deeper/x.csv"])
def test_an_unwritable_out_is_refused_clearly_and_issues_nothing(chain, tmp_path, under):
    db, store_id = chain
    (tmp_path / "afile").write_text("a regular file, not a folder\n")
    out = tmp_path / under
    with pytest.raises(SystemExit) as refused:
        _issue(db, store_id, out)
    message = str(refused.value.code)
    assert f"cannot create {out}" in message
    assert "no cards were issued" in message
    assert _cards_in(db, store_id) == 0
    assert (tmp_path / "afile").read_text() == "a regular file, not a folder\n"


def test_a_failing_write_of_the_file_issues_nothing_and_leaves_no_file(
    chain, tmp_path, monkeypatch
):
    db, store_id = chain
    out = tmp_path / "stock.csv"

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(SystemExit) as refused:
        _issue(db, store_id, out)
    message = str(refused.value.code)
    assert "No space left on device" in message
    assert "no cards were issued" in message
    assert not out.exists()
    assert _cards_in(db, store_id) == 0


def test_an_interrupt_while_writing_issues_nothing_and_leaves_no_file(chain, tmp_path, monkeypatch):
    db, store_id = chain
    out = tmp_path / "stock.csv"

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    assert _issue(db, store_id, out) == 130
    assert not out.exists()
    assert _cards_in(db, store_id) == 0


def test_a_deliver_callback_that_raises_after_writing_rolls_everything_back(chain, tmp_path):
    db, store_id = chain
    written = tmp_path / "written.csv"
    ledger = Ledger(db)
    try:

        def deliver(cards: list) -> None:
            written.write_text("\n".join(card.number for card in cards))
            raise RuntimeError("the stock file could not be made durable")

        with pytest.raises(RuntimeError, match="durable"):
            ledger.issue_cards(store_id, 7, deliver=deliver)
        numbers = written.read_text().split()
        assert len(numbers) == 7
        assert _cards_in(db, store_id) == 0
        for number in numbers:
            token = json.loads(ledger.tokenize("alice", number, "0000"))
            assert token["statuscode"] == "100001"  # not found: never committed
        assert ledger.check_invariants() == []
    finally:
        ledger.close()


def test_success_writes_a_private_fsynced_file_before_the_cards_commit(
    chain, tmp_path, monkeypatch
):
    db, store_id = chain
    out = tmp_path / "stock" / "new.csv"
    seen: list[tuple[int, int, int]] = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        real_fsync(fd)
        lines = out.read_text().count("\n")
        # (file mode, rows in the file, cards committed) while the transaction is open
        seen.append((stat.S_IMODE(os.stat(out).st_mode), lines, _cards_in(db, store_id)))

    monkeypatch.setattr(os, "fsync", watching_fsync)
    old_umask = os.umask(0)  # no help from the umask: the file must be 0600 by itself
    try:
        assert _issue(db, store_id, out, count=12) == 0
    finally:
        os.umask(old_umask)
    assert seen, "the file was fsynced"
    assert set(seen) == {(0o600, 13, 0)}, "written, fsynced and private before the commit"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["card_number", "security_code", "store_id"]
    issued = rows[1:]
    assert len(issued) == 12
    assert len({number for number, _, _ in issued}) == 12
    assert {store for _, _, store in issued} == {store_id}
    assert _cards_in(db, store_id) == 12
    ledger = Ledger(db)
    try:
        for number, code, _ in issued:
            token = json.loads(ledger.tokenize("alice", number, code))
            assert token["statuscode"] == "000000", token
        wrong = f"{(int(issued[0][1]) + 1) % 10000:04d}"
        assert json.loads(ledger.tokenize("alice", issued[0][0], wrong))["statuscode"] == "100008"
    finally:
        ledger.close()


def test_an_existing_out_is_never_touched_and_nothing_is_issued(chain, tmp_path):
    db, store_id = chain
    out = tmp_path / "stock.csv"
    out.write_text("precious\n")
    with pytest.raises(SystemExit, match="exists"):
        _issue(db, store_id, out)
    assert out.read_text() == "precious\n"
    assert _cards_in(db, store_id) == 0


def test_an_unknown_store_or_a_bad_count_creates_no_file(chain, tmp_path):
    db, store_id = chain
    out = tmp_path / "stock.csv"
    with pytest.raises(SystemExit, match="unknown store"):
        _issue(db, "00000000-0000-0000-0000-000000000000", out)
    with pytest.raises(SystemExit, match="at least 1"):
        _issue(db, store_id, out, count=0)
    assert not out.exists()
    assert _cards_in(db, store_id) == 0
