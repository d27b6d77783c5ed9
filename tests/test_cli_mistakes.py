"""A newcomer's mistakes with the command line are answered in words, never a traceback, and
``serve`` says what a newcomer needs: who may act where, and whether ``encrypted`` works."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from giftcard_toolkit import GiftCardClient, frames
from giftcard_toolkit.cli import main
from giftcard_toolkit.server import Ledger, running
from giftcard_toolkit.server.runner import server_process
from giftcard_toolkit.server.seed import DEFAULT_AS_OF, HISTORY_DAYS

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script in a process of its own, with no terminal at all (a script, CI):
    stdin empty and no controlling terminal (a new session)."""
    return subprocess.run(
        [sys.executable, "-m", "giftcard_toolkit.cli", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
    )


def _store(db: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["admin", "--db", str(db), "add-store", "--name", "Main Street"]) == 0
    return capsys.readouterr().out.split()[1]


def test_add_user_without_a_terminal_names_password_stdin(tmp_path, capsys):
    db = tmp_path / "chain.sqlite"
    store = _store(db, capsys)
    done = _cli("admin", "--db", str(db), "add-user", "bob", "--store", store)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "EOFError" not in done.stderr
    assert "no terminal to ask for the password" in done.stderr
    assert "--password-stdin" in done.stderr and "nothing was changed" in done.stderr
    ledger = Ledger(db)
    try:
        assert ledger.user_record("bob") is None
    finally:
        ledger.close()


def test_add_user_reads_the_password_from_stdin_when_told(tmp_path, capsys, monkeypatch):
    db = tmp_path / "chain.sqlite"
    store = _store(db, capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO("long enough password\n"))
    assert (
        main(["admin", "--db", str(db), "add-user", "bob", "--store", store, "--password-stdin"])
        == 0
    )
    assert "may act for 1 store(s)" in capsys.readouterr().out


def test_serve_refuses_a_database_that_does_not_exist_and_creates_nothing(tmp_path):
    db = tmp_path / "misspeled.sqlite"
    done = _cli("serve", "--db", str(db), "--port", "0")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{db} does not exist, and nothing was created" in done.stderr
    assert f"giftcard-toolkit admin --db {db} add-store --name NAME" in done.stderr
    assert "giftcard-toolkit serve --seed demo" in done.stderr
    assert list(tmp_path.iterdir()) == [], "no database, no journal, nothing"


def test_serve_refuses_an_unknown_time_zone_in_words(tmp_path, capsys):
    db = tmp_path / "chain.sqlite"
    _store(db, capsys)
    with pytest.raises(SystemExit, match="unknown time zone 'Mars/Olympus'"):
        main(["serve", "--db", str(db), "--tz", "Mars/Olympus"])


def _served_output(db: Path, seed: str | None, log: Path) -> str:
    with server_process(db, seed=seed, log=log):
        pass
    return log.read_text()


def test_serve_says_encrypted_card_data_is_off_and_how_to_turn_it_on(tmp_path, capsys, monkeypatch):
    db = tmp_path / "chain.sqlite"
    _store(db, capsys)
    monkeypatch.delenv("GIFTCARD_CARD_KEY", raising=False)
    said = _served_output(db, None, tmp_path / "off.log")
    assert "encrypted card data is off: no card key is set (GIFTCARD_CARD_KEY)" in said
    command = said.split("  export ", 1)[1].splitlines()[0]
    assert command.startswith("GIFTCARD_CARD_KEY=$(python3 -c")
    assert "has no users" in said, "and the store still needs a user"
    made = subprocess.run(  # the command as printed makes a key the server takes
        ["sh", "-c", f'export {command}; printf %s "$GIFTCARD_CARD_KEY"'],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    ).stdout
    assert len(base64.b64decode(made, validate=True)) == 32
    monkeypatch.setenv("GIFTCARD_CARD_KEY", made)
    said = _served_output(db, None, tmp_path / "on.log")
    assert "encrypted card data is off" not in said


def test_serve_demo_says_which_stores_each_user_may_act_for(tmp_path):
    said = _served_output(tmp_path / "demo.sqlite", "demo", tmp_path / "demo.log")
    assert "user 'demo' password 'demo-password': acts for all 3 stores" in said
    assert "user 'clerk' password 'clerk-password': acts for 'Downtown Flagship'" in said
    assert "card key (GIFTCARD_CARD_KEY):" in said
    assert "Traceback" not in said


def test_serve_demo_with_no_as_of_anchors_to_today(tmp_path, monkeypatch):
    """``serve --seed demo`` with no --as-of anchors the history to now (injected here):
    yesterday's batches are the last closed ones, today's trade so far is in the open ones,
    and nothing lies in the future. With --as-of, the date given is used as it is."""
    now = datetime(2027, 3, 15, 13, 30, tzinfo=UTC)
    monkeypatch.setattr("giftcard_toolkit.cli._now", lambda zone: now.astimezone(zone))
    served: list[dict[str, object]] = []
    monkeypatch.setattr("giftcard_toolkit.server.serve", lambda **kw: served.append(kw))
    assert main(["serve", "--seed", "demo", "--db", str(tmp_path / "today.sqlite")]) == 0
    assert main(["serve", "--seed", "demo", "--as-of", "2026-09-30"]) == 0
    anchored, fixed = (call["as_of"] for call in served)
    assert anchored == now and fixed == DEFAULT_AS_OF == date(2026, 9, 30)

    with (
        running(db_path=tmp_path / "today.sqlite", as_of=anchored) as srv,
        GiftCardClient(srv.url, srv.username, srv.password) as gc,
    ):
        batches, txs = frames.fetch(gc, progress=False)
    closed = batches.filter(pl.col("status") == "closed")
    still_open = batches.filter(pl.col("status") == "open")
    assert closed["opened_at"].max().date() == date(2027, 3, 14), "the last closed: yesterday"
    assert still_open.height == 3
    assert set(still_open["opened_at"].dt.date()) == {date(2027, 3, 15)}, "the open ones: today"
    assert txs["at"].max() <= now, "no trade after now"
    assert txs["at"].max() > now - timedelta(hours=6), "today's trade up to now is there"
    assert txs["at"].min().date() == date(2027, 3, 15) - timedelta(days=HISTORY_DAYS - 1)


def test_running_keeps_the_fixed_anchor_of_the_notebooks_and_tests():
    with running() as srv, GiftCardClient(srv.url, srv.username, srv.password) as gc:
        batches, _ = frames.fetch(gc, progress=False)
    opened = batches.filter(pl.col("status") == "open")["opened_at"].dt.date()
    assert set(opened) == {DEFAULT_AS_OF}
