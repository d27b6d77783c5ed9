"""``giftcard-toolkit bulk FILE``: a bulk file run from a terminal against GIFTCARD_URL; its
exit status, the summary, and the results written beside the file."""

from __future__ import annotations

import csv
from decimal import Decimal

import pytest
from bulkkit import ledger_rows, unsold

from giftcard_toolkit import GiftCardClient, bulk
from giftcard_toolkit.cli import main


@pytest.fixture
def env(server, monkeypatch):
    monkeypatch.setenv("GIFTCARD_URL", server.url)
    monkeypatch.setenv("GIFTCARD_USERNAME", server.username)
    monkeypatch.setenv("GIFTCARD_PASSWORD", server.password)
    monkeypatch.delenv("GIFTCARD_CARD_KEY", raising=False)
    return server


def _write(path, rows, encoding="utf-8-sig", separator=","):
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, delimiter=separator)
        writer.writerow([c.replace("_", " ").title() for c in bulk.COLUMNS])
        writer.writerows(rows)
    return path


def _read(path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def _no_card_data(text: str, cards) -> None:
    for card in cards:
        assert card.number not in text
        assert f",{card.security_code}," not in text and f"'{card.security_code}'" not in text


def test_a_run_exits_non_zero_on_a_decline_and_writes_its_results_beside_the_file(
    env, tmp_path, capsys
):
    a, b = unsold(env, 2)
    path = _write(
        tmp_path / "fixes.csv",
        [
            ["sell", a.number, a.security_code, "25,00", a.store_id, "", "cli"],
            ["redeem", a.number, a.security_code, "30,00", a.store_id, "", "cli"],
            ["sell", b.number, b.security_code, "10,00", b.store_id, "", "cli"],
        ],
        separator=";",
    )
    before = ledger_rows(env)
    assert main(["bulk", str(path), "--dry-run"]) == 1, "a decline is predicted"
    out = capsys.readouterr().out
    assert "dry run of 3 row(s): 2 would be applied, 1 would be declined" in out
    assert f"line 3: redeem {a.masked}: would be declined 100005" in out
    assert ledger_rows(env) == before
    assert not (tmp_path / "fixes.csv.journal").exists()
    assert [r["status"] for r in _read(tmp_path / "fixes.dry-run.csv")] == [
        "checked",
        "would be declined",
        "checked",
    ]

    assert main(["bulk", str(path)]) == 1
    out = capsys.readouterr().out
    assert "3 row(s): 2 applied now, 0 already applied before, 1 declined, 0 not sent" in out
    assert f"line 3: redeem {a.masked}: declined 100005: Insufficient balance" in out
    assert f"results: {tmp_path / 'fixes.results.csv'}" in out
    rows = _read(tmp_path / "fixes.results.csv")
    assert [(r["line"], r["status"], r["statuscode"]) for r in rows] == [
        ("2", "approved", "000000"),
        ("3", "declined", "100005"),
        ("4", "approved", "000000"),
    ]
    assert rows[0]["card"] == a.masked and rows[0]["new_balance"] == "25.00"
    assert list(rows[0]) == list(bulk.RESULT_SCHEMA)
    assert ledger_rows(env) == before + 2

    assert main(["bulk", str(path)]) == 1, "the declined row is still declined"
    assert "0 applied now, 2 already applied before, 1 declined" in capsys.readouterr().out
    assert [r["status"] for r in _read(tmp_path / "fixes.results.csv")] == [
        "already applied",
        "declined",
        "already applied",
    ]
    assert ledger_rows(env) == before + 2
    for name in ("fixes.results.csv", "fixes.dry-run.csv", "fixes.csv.journal"):
        _no_card_data((tmp_path / name).read_text("utf-8-sig"), (a, b))


def test_a_clean_run_exits_zero_with_its_own_journal_and_audit_log(env, tmp_path, capsys):
    (a,) = unsold(env, 1)
    path = _write(
        tmp_path / "fixes.txt",
        [["sell", a.number, a.security_code, "$12.50", a.store_id, "", ""]],
        encoding="utf-16",
        separator="\t",
    )
    journal, log = tmp_path / "state" / "run.journal", tmp_path / "audit.jsonl"
    journal.parent.mkdir()
    assert main(["bulk", str(path), "--dry-run"]) == 0
    assert main(["bulk", str(path), "--journal", str(journal), "--audit-log", str(log)]) == 0
    assert "1 row(s): 1 applied now" in capsys.readouterr().out
    assert journal.exists() and not (tmp_path / "fixes.txt.journal").exists()
    assert log.exists() and a.number not in log.read_text()
    assert [r["status"] for r in _read(tmp_path / "fixes.results.csv")] == ["approved"]
    with GiftCardClient(env.url, env.username, env.password) as gc:
        assert gc.balance(a).balance == Decimal("12.50")


def test_a_file_that_cannot_run_exits_2_and_sends_nothing(env, tmp_path, capsys):
    cards = unsold(env, 3)
    rows = [["sell", c.number, c.security_code, "1,000", c.store_id, "", ""] for c in cards * 10]
    path = _write(tmp_path / "fixes.csv", rows)
    before = ledger_rows(env)
    assert main(["bulk", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: 30 problem(s); nothing was sent:\n  line 2: amount '1,000'")
    assert "... and 10 more; every one is listed in" in err
    assert len(_read(tmp_path / "fixes.errors.csv")) == 30
    assert ledger_rows(env) == before
    assert not (tmp_path / "fixes.results.csv").exists()
    _no_card_data(err + (tmp_path / "fixes.errors.csv").read_text("utf-8-sig"), cards)


def test_missing_settings_or_file_are_one_line_errors(env, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="cannot read .*missing.csv"):
        main(["bulk", str(tmp_path / "missing.csv")])
    monkeypatch.delenv("GIFTCARD_PASSWORD")
    with pytest.raises(SystemExit, match="GIFTCARD_PASSWORD not set"):
        main(["bulk", str(tmp_path / "missing.csv")])
