"""A leak scan over everything a working day leaves behind.

A real server (its log at INFO, access lines included) is driven by the client (its log at
DEBUG), the ops forms and a bulk run (audit log, journal), with declines and bad input;
frames are exported to Parquet and CSV; the notebooks are run into HTML reports. People
sign in with passwords of their own (a wrong one too), and a supervisor approves amounts
above a clerk's limit. Then every file is scanned for any of the 2,400 demo card numbers,
any token issued, security codes in any field-like context, and those passwords (plain, or
as the Basic header carries them).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import logging
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl

from giftcard_toolkit import GiftCardClient, Token, bulk, demo, errors, forms, frames
from giftcard_toolkit.cli import main
from giftcard_toolkit.ops import cases
from giftcard_toolkit.ops.signin import SignInFailed, sign_in
from giftcard_toolkit.server.runner import server_process
from giftcard_toolkit.server.seed import read_card_stock

ROOT = Path(__file__).resolve().parents[1]


def test_no_card_number_code_token_or_password_in_logs_audit_exports_or_reports(
    tmp_path, capsys, monkeypatch
):
    stock = tmp_path / "stock.csv"
    client_log = logging.FileHandler(tmp_path / "client.log")
    logger = logging.getLogger("giftcard_toolkit")
    logger.addHandler(client_log)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    tokens: set[str] = set()
    day = server_process(
        tmp_path / "day.sqlite", card_stock=stock, log=tmp_path / "server.log", log_level="info"
    )
    with day as server:  # stopped (and its log complete) before the scan
        url = server.url
        try:
            cards = read_card_stock(stock)
            fresh = [c for c in cards if not c.sold][:8]
            store = fresh[0].store_id
            with GiftCardClient(url, "demo", "demo-password") as gc:
                tokens.add(gc.tokenize(fresh[0]).token)
                gc.sell(fresh[0], "30", store)
                gc.redeem(fresh[0], "50", store, accept_partial=True)
                for failing in (
                    lambda: gc.redeem(fresh[0], 1, store),  # insufficient balance
                    lambda: gc.sell(fresh[0], 1, store),  # already active
                    lambda: gc.balance(Token("0" * 16, datetime.now(UTC))),  # unknown token
                    lambda: gc.balance(fresh[2].number),  # a bare string: refused, unsent
                ):
                    with contextlib.suppress(errors.GiftCardError):
                        failing()
                httpx.post(
                    f"{url}/v1/Token",
                    auth=("demo", "demo-password"),
                    json={"cardnumber": fresh[1].number[:15], "securitycode": "12"},
                )
                httpx.post(
                    f"{url}/v1/Token",
                    auth=("demo", "wrong"),
                    json={"cardnumber": fresh[1].number, "securitycode": fresh[1].security_code},
                )
                log = tmp_path / "audit.jsonl"
                sell = forms.sell_form(gc, audit_log=log)
                sell.card_number.value, sell.security_code.value = (
                    fresh[2].number,
                    fresh[2].security_code,
                )
                sell.amount.value = "15"
                sell.store.value = next(s for _, s in sell.store.options if s.id == store)
                sell.submit.click()
                sell.confirm.click()
                fixes = tmp_path / "fixes.csv"
                with fixes.open("w", newline="") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(bulk.COLUMNS)
                    for card in fresh[3:6]:
                        writer.writerow(
                            ["sell", card.number, card.security_code, "20", store, "", ""]
                        )
                    writer.writerow(
                        ["block", fresh[3].number, fresh[3].security_code, "", "", "lost", ""]
                    )
                bulk.run(gc, fixes, audit_log=log, progress=False)
                fixes.unlink()  # the input file holds numbers by nature; what it leaves must not
                batches, txs = frames.fetch(gc, progress=False)
                for frame, name in ((batches, "batches"), (txs, "transactions")):
                    frames.write(frame, tmp_path / f"{name}.parquet")
                    frames.write(frame, tmp_path / f"{name}.csv")
                tokens.update(t.token for t in gc._tokens.values())
            passwords = _people_sign_in_and_approve(
                tmp_path, monkeypatch, url, store, fresh[6:8], log
            )
            printed = capsys.readouterr()
            assert not any(p in printed.out + printed.err for p in passwords)
        finally:
            logger.removeHandler(client_log)
            logger.setLevel(level)
            client_log.close()
    demo.run(tmp_path / "reports")

    texts: dict[str, str] = {}
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "stock.csv" and not path.name.startswith("day.sqlite"):
            if path.suffix == ".parquet":
                texts[path.name] = pl.read_parquet(path).write_csv()
            else:
                texts[path.name] = path.read_bytes().decode("latin-1")
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        texts[notebook.name] = notebook.read_text()
    assert {
        "server.log",
        "client.log",
        "audit.jsonl",
        "fixes.csv.journal",
        "transactions.parquet",
        "transactions.csv",
        "01-quickstart.html",
        "widget-state.json",
    } <= set(texts)
    assert "POST /Transaction/radeem 200" in texts["server.log"], "the access log was on"
    numbers = {c.number for c in cards}
    digit_runs = re.compile(r"(?<![0-9])[0-9]{16}(?![0-9])")
    leaks = []
    for name, text in texts.items():
        found = set(digit_runs.findall(text))
        leaks += [(name, "card number") for _ in found & numbers]
        leaks += [(name, "token") for _ in found & tokens]
        for card in fresh:
            code = card.security_code
            if any(f in text for f in (f'"securitycode": "{code}"', f"'{code}'", f"={code}")):
                leaks.append((name, "security code"))
    for password in passwords:
        for name, text in texts.items():
            if password in text:
                leaks.append((name, "password"))
    assert leaks == []
    with capsys.disabled():
        size = sum(len(t) for t in texts.values())
        print(
            f"\n[leak scan] {len(texts)} files, {size / 1e6:.1f} MB scanned for "
            f"{len(numbers)} card numbers, {len(tokens)} tokens, security codes and "
            f"{len(passwords)} password forms: 0 found"
        )


def _people_sign_in_and_approve(tmp_path, monkeypatch, url, store, cards, log) -> list[str]:
    """A clerk with a limit and a supervisor, each with a password of their own, sign in
    (one wrong password first) and work: a bulk run and a card case with amounts above the
    clerk's limit, approved. Answers every form in which their passwords could leak."""
    db = str(tmp_path / "day.sqlite")
    secret = {"till": secrets.token_urlsafe(12), "lead": secrets.token_urlsafe(12)}
    for name, limit in (("till", "20.00"), ("lead", "none")):
        monkeypatch.setattr("sys.stdin", io.StringIO(secret[name] + "\n"))
        argv = ["admin", "--db", db, "add-user", name, "--store", store]
        assert main([*argv, "--max-amount", limit, "--password-stdin"]) == 0
    wrong = secrets.token_urlsafe(12)
    with contextlib.suppress(SignInFailed):
        sign_in(url, "till", wrong)
    fixes = tmp_path / "people.csv"
    with fixes.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(bulk.COLUMNS)
        for card, amount in zip(cards, ("15", "30"), strict=True):
            writer.writerow(["sell", card.number, card.security_code, amount, store, "", ""])
    with sign_in(url, "till", secret["till"]) as till, sign_in(url, "lead", secret["lead"]) as lead:
        bulk.run(till, fixes, audit_log=log, progress=False, approver=lead)
        cases.adjust(till, cards[1], "-25", store, "fix", audit_log=log, approver=lead)
    fixes.unlink()
    _on_the_console_page(url, store, cards[0], log, secret, wrong, tmp_path)
    forms = [wrong, *secret.values()]
    for name, password in secret.items():
        forms.append(base64.b64encode(f"{name}:{password}".encode()).decode())
    return forms


def _on_the_console_page(url, store, card, log, secret, wrong, tmp_path) -> None:
    """The same people on the console page: a wrong password, then the clerk's reload
    above the limit approved on screen by the supervisor; every widget's state is saved
    (as a notebook saves it) for the scan."""
    import ipywidgets

    from giftcard_toolkit.ops.forms import SignInConsole

    # Only this page's widgets in the saved state: earlier tests of the same process leave
    # forms with the cards they typed (as a person's unsent form would hold theirs).
    ipywidgets.Widget.close_all()
    page = SignInConsole(url, audit_log=log)
    for password in (wrong, secret["till"]):
        page.username.value, page.password.value = "till", password
        page.sign_in_button.click()
    reload = next(f for f in page.console.children if getattr(f, "operation", "") == "reload")
    reload.card_number.value, reload.security_code.value = card.number, card.security_code
    reload.amount.value = "25"
    reload.store.value = next(s for _, s in reload.store.options if s.id == store)
    reload.submit.click()
    reload.approval.username.value, reload.approval.password.value = "lead", secret["lead"]
    reload.confirm.click()
    assert reload.output.value.startswith("Approved: reloaded"), reload.output.value
    state = ipywidgets.Widget.get_manager_state(drop_defaults=False)
    (tmp_path / "widget-state.json").write_text(json.dumps(state, default=str))
    page.sign_out("Signed out.")
