"""The ops console as people use it: ``giftcard-toolkit console --demo`` in headless Chromium.

One console (and its demo server) for the module, one browser page on it; what the page
shows is checked in the browser, what was applied on the server. Each step leaves a
screenshot in the test's folder (``pytest --basetemp DIR`` keeps them where you want).
``GIFTCARD_UPDATE_DOCS=1`` also rewrites the README's picture, ``docs/console.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import browserkit
import pytest

from giftcard_toolkit import GiftCardClient, audit, scratch
from giftcard_toolkit.server.runner import free_port
from giftcard_toolkit.server.seed import DEMO_USERS, DemoCard, read_card_stock

ROOT = Path(__file__).resolve().parents[1]
MASK = "************"

pytestmark = pytest.mark.slow


@dataclass
class Console:
    url: str
    server_url: str
    cards: list[DemoCard]
    audit_log: Path
    client: GiftCardClient
    taken: set[str]

    def unsold(self) -> DemoCard:
        """A never-sold card of the first store that no other test here has used."""
        store = self.client.verify().stores[0]
        card = next(
            c
            for c in self.cards
            if not c.sold and c.store_id == store.id and c.number not in self.taken
        )
        self.taken.add(card.number)
        return card

    def sales_of(self, card: DemoCard) -> int:
        """How many sales of ``card`` the open batch of its store holds (checked on the server)."""
        (batch,) = self.client.batches(card.store_id, status="open")
        return sum(
            1 for t in batch.transactions if t.type == "sale" and t.card.endswith(card.last4)
        )


def _start_console(folder: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    said = folder / "console.out"
    with said.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "giftcard_toolkit.cli",
                "console",
                "--demo",
                "--port",
                str(port),
                "--card-stock",
                str(folder / "stock.csv"),
                "--audit-log",
                str(folder / "audit.jsonl"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    return process, said


@pytest.fixture(scope="module")
def console(tmp_path_factory) -> Iterator[Console]:
    browserkit.require_browser()
    folder = tmp_path_factory.mktemp("console")
    port = free_port()
    process, said = _start_console(folder, port)
    try:
        text = browserkit.wait_until(
            lambda: (
                process.poll() is None
                and "ops console:" in said.read_text()
                and said.read_text()
                or (process.poll() is not None and f"exited: {said.read_text()}")
            ),
            "the console to start",
            timeout=120,
        )
        assert "exited" not in text, text
        url = re.search(r"ops console: (\S+)", text).group(1)
        server_url = re.search(r"demo server: (\S+)", text).group(1)
        assert url == f"http://127.0.0.1:{port}/"
        with GiftCardClient(server_url, "demo", DEMO_USERS["demo"]) as client:
            yield Console(
                url,
                server_url,
                read_card_stock(folder / "stock.csv"),
                folder / "audit.jsonl",
                client,
                set(),
            )
    finally:
        scratch.stop(process, signal.SIGINT, timeout=30)  # Ctrl-C
    assert process.returncode == 0, said.read_text()
    assert not browserkit.answers(url), "Voilà stopped with the console"


@pytest.fixture(scope="module")
def page(console) -> Iterator[Any]:
    """One browser on the console's page for the module."""
    with browserkit.chrome() as browser:
        browser.get(console.url)
        browserkit.wait_for(browser, ".widget-tab")
        yield browser


# ------------------------------------------------------------------ starting (no browser)


def test_the_console_refuses_to_start_without_its_settings_naming_them(monkeypatch):
    from giftcard_toolkit.cli import main

    for name in ("GIFTCARD_URL", "GIFTCARD_USERNAME", "GIFTCARD_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as refused:
        main(["console", "--port", str(free_port())])
    said = str(refused.value)
    assert said.startswith("error: GIFTCARD_URL not set") and "--demo" in said
    # A username without its password (or the reverse) is a mistake, not a sign-in page.
    monkeypatch.setenv("GIFTCARD_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GIFTCARD_USERNAME", "clerk")
    with pytest.raises(SystemExit) as refused:
        main(["console", "--port", str(free_port())])
    said = str(refused.value)
    assert said.startswith("error: GIFTCARD_PASSWORD not set") and "or neither" in said


def test_the_console_refuses_a_sign_in_the_server_refuses(monkeypatch, server):
    from giftcard_toolkit.cli import main

    monkeypatch.setenv("GIFTCARD_URL", server.url)
    monkeypatch.setenv("GIFTCARD_USERNAME", "demo")
    monkeypatch.setenv("GIFTCARD_PASSWORD", "not-the-password")
    with pytest.raises(SystemExit) as refused:
        main(["console", "--port", str(free_port())])
    said = str(refused.value)
    assert said.startswith(f"error: cannot sign in at {server.url}")
    assert "not-the-password" not in said


# ------------------------------------------------------------------ driving the page


_tab = browserkit.open_tab
_type = browserkit.type_into
_click = browserkit.click


def _pick(form, field: str, label: str) -> None:
    from selenium.webdriver.support.select import Select

    Select(form.find_element("css selector", f".gc-{field} select")).select_by_visible_text(label)


def _answer(form, *, contains: str, timeout: float = 30) -> str:
    """The form's answer once it says ``contains``."""
    output = form.find_element("css selector", ".gc-output")
    return str(
        browserkit.wait_until(
            lambda: contains in output.text and output.text,
            lambda: f"the answer to say {contains!r}; the form shows:\n{form.text}",
            timeout,
        )
    )


def _review(page, form) -> str:
    """Click Review; the confirmation it shows."""
    _click(form, "submit")
    shown = browserkit.wait_for(page, ".gc-confirmation", within=form)
    return str(
        browserkit.wait_until(lambda: "Please confirm" in shown.text and shown.text, "Review")
    )


def _store_name(console: Console, card: DemoCard) -> str:
    return next(s.name for s in console.client.verify().stores if s.id == card.store_id)


def _fill_card(form, card: DemoCard) -> None:
    _type(form, "card_number", card.number)
    _type(form, "security_code", card.security_code)


# ------------------------------------------------------------------ the tests

TABS = [
    ("Card", "card"),
    ("Balance", "balance"),
    ("Sell", "sell"),
    ("Reload", "reload"),
    ("Redeem", "redeem"),
    ("Block / unblock", "status"),
]


def test_every_tab_renders_whole_at_1280_and_at_800_wide(page, tmp_path):
    for size in (browserkit.WIDE, browserkit.NARROW):
        browserkit.resize(page, size)
        for title, form in TABS:
            _tab(page, title, form)
            browserkit.shoot(page, tmp_path, f"{size[0]}-{form}")
            assert browserkit.truncated_labels(page) == [], f"{title} at {size[0]} px"
            assert browserkit.overflowing(page) == 0, f"{title} scrolls sideways at {size[0]} px"
    browserkit.resize(page, browserkit.WIDE)
    assert browserkit.severe_log(page) == []
    shown = page.page_source
    assert DEMO_USERS["demo"] not in shown, "the password stays in the kernel"
    assert "console_page" not in shown, "no code shown"


def test_a_balance_check_shows_the_card_masked_and_its_balance(console, page, tmp_path):
    card = next(c for c in console.cards if c.sold)
    held = console.client.balance(card).balance
    form = _tab(page, "Balance", "balance")
    _fill_card(form, card)
    _click(form, "submit")
    said = _answer(form, contains=MASK + card.last4)
    browserkit.shoot(page, tmp_path, "balance")
    assert said == f"Card {MASK}{card.last4} holds ${held:,.2f} (active)"
    assert card.number not in page.page_source and card.security_code not in said
    assert form.find_element("css selector", ".gc-card_number input").get_attribute("value") == ""


def test_a_sale_is_sent_on_confirm_only(console, page, tmp_path):
    card = console.unsold()
    form = _tab(page, "Sell", "sell")
    _fill_card(form, card)
    _type(form, "amount", "25.00")
    _pick(form, "store", _store_name(console, card))
    shown = _review(page, form)
    browserkit.shoot(page, tmp_path, "1-review")
    assert shown == (
        f"Please confirm: Sell $25.00 onto card {MASK}{card.last4} at {_store_name(console, card)}"
    )
    assert form.find_element("css selector", ".gc-confirm").is_displayed()
    if os.environ.get("GIFTCARD_UPDATE_DOCS") == "1":
        page.find_element("css selector", ".gc-page").screenshot(str(ROOT / "docs" / "console.png"))
    time.sleep(0.5)  # were anything sent at Review, it would have landed by now
    assert console.sales_of(card) == 0, "nothing is sent before Confirm"
    _click(form, "confirm")
    said = _answer(form, contains="Approved")
    browserkit.shoot(page, tmp_path, "2-confirmed")
    assert said == f"Approved: sold {MASK}{card.last4} for $25.00; it holds $25.00"
    assert console.sales_of(card) == 1
    assert console.client.balance(card).balance == Decimal("25.00")
    assert not form.find_element("css selector", ".gc-confirm").is_displayed()


def test_a_double_click_on_confirm_applies_once(console, page, tmp_path):
    card = console.unsold()
    form = _tab(page, "Sell", "sell")
    _fill_card(form, card)
    _type(form, "amount", "10.00")
    _pick(form, "store", _store_name(console, card))
    _review(page, form)
    confirm = form.find_element("css selector", ".gc-confirm")
    page.execute_script("arguments[0].click(); arguments[0].click();", confirm)  # at once
    _answer(form, contains="Approved")
    time.sleep(0.5)  # a second sale, were one sent, would have landed by now
    browserkit.shoot(page, tmp_path, "double-click")
    assert console.sales_of(card) == 1, "two clicks, one sale"
    assert console.client.balance(card).balance == Decimal("10.00")
    sales = audit.read(console.audit_log).filter(
        audit.read(console.audit_log)["operation"] == "sell"
    )
    assert sales.filter(sales["card"].str.ends_with(card.last4)).height == 1


def test_a_decline_is_said_in_words_with_the_balance(console, page, tmp_path):
    card = console.unsold()
    console.client.sell(card, "40.00", card.store_id)
    form = _tab(page, "Redeem", "redeem")
    _fill_card(form, card)
    _type(form, "amount", "55.00")
    _pick(form, "store", _store_name(console, card))
    _review(page, form)
    _click(form, "confirm")
    said = _answer(form, contains="Declined")
    browserkit.shoot(page, tmp_path, "declined")
    assert said == "Declined: insufficient balance, card holds $40.00"
    assert console.client.balance(card).balance == Decimal("40.00")


def test_bad_input_is_named_beside_its_field(console, page, tmp_path):
    form = _tab(page, "Reload", "reload")
    _type(form, "card_number", "6006 1234")
    _type(form, "amount", "1.234")
    _click(form, "submit")
    _answer(form, contains="Nothing was sent")
    browserkit.shoot(page, tmp_path, "bad-input")
    rows = {
        field: form.find_element("css selector", f".gc-{field}").find_element("xpath", "..").text
        for field in ("card_number", "security_code", "amount")
    }
    assert "16 digits" in rows["card_number"]
    assert "4 digits" in rows["security_code"]
    assert "2 decimals" in rows["amount"]
    assert browserkit.truncated_labels(page) == []


def test_block_then_a_reload_is_refused_then_unblock(console, page, tmp_path):
    card = console.unsold()
    console.client.sell(card, "30.00", card.store_id)
    store = _store_name(console, card)

    form = _tab(page, "Block / unblock", "status")
    _fill_card(form, card)
    form.find_element("xpath", ".//*[contains(@class,'gc-active')]//button[.='Block']").click()
    _type(form, "reason", "customer reported it lost")
    assert "Block card" in _review(page, form)
    _click(form, "confirm")
    assert "blocked" in _answer(form, contains="Done")
    browserkit.shoot(page, tmp_path, "1-blocked")
    assert console.client.balance(card).active is False

    form = _tab(page, "Reload", "reload")
    _fill_card(form, card)
    _type(form, "amount", "10.00")
    _pick(form, "store", store)
    _review(page, form)
    _click(form, "confirm")
    said = _answer(form, contains="Declined")
    browserkit.shoot(page, tmp_path, "2-reload-refused")
    assert "inactive" in said.lower() or "not active" in said.lower(), said
    assert console.client.balance(card).balance == Decimal("30.00")

    form = _tab(page, "Block / unblock", "status")
    _fill_card(form, card)
    form.find_element("xpath", ".//*[contains(@class,'gc-active')]//button[.='Unblock']").click()
    _type(form, "reason", "card found")
    assert "Unblock card" in _review(page, form)
    _click(form, "confirm")
    assert "unblocked" in _answer(form, contains="Done")
    browserkit.shoot(page, tmp_path, "3-unblocked")
    assert console.client.balance(card).active is True


def test_the_card_tab_looks_up_and_adjusts_once(console, page, tmp_path):
    card = console.unsold()
    console.client.sell(card, "20.00", card.store_id)
    form = _tab(page, "Card", "card")
    _fill_card(form, card)
    _click(form, "lookup")
    summary = form.find_element("css selector", ".gc-summary")
    browserkit.wait_until(lambda: card.last4 in summary.text, lambda: f"the summary ({form.text})")
    assert summary.text.startswith(f"Card {MASK}{card.last4} holds $20.00")
    history = form.find_element("css selector", ".gc-history").text
    assert "sale" in history and "$20.00" in history and card.number not in page.page_source
    _pick(form, "action", "Adjust the balance (+ or -)")
    _type(form, "amount", "5.00")
    _pick(form, "store", _store_name(console, card))
    _type(form, "reason", "goodwill")
    assert "Adjust card" in _review(page, form)
    browserkit.shoot(page, tmp_path, "1-review")
    assert browserkit.truncated_labels(page) == []
    browserkit.resize(page, browserkit.NARROW)
    assert browserkit.truncated_labels(page) == [] and browserkit.overflowing(page) == 0
    browserkit.shoot(page, tmp_path, "2-review-800")
    browserkit.resize(page, browserkit.WIDE)
    _click(form, "confirm")
    assert "adjusted" in _answer(form, contains="Done")
    browserkit.shoot(page, tmp_path, "3-done")
    assert console.client.balance(card).balance == Decimal("25.00")
    assert browserkit.severe_log(page) == []


# ------------------------------------------------------------------ inside JupyterLab


@pytest.fixture
def lab(tmp_path) -> Iterator[str]:
    """JupyterLab on notebook 03 (a copy), in a folder of its own; its URL."""
    browserkit.require_browser()
    home = tmp_path / "lab"
    home.mkdir()
    shutil.copy(ROOT / "notebooks" / "03-ops-card-fixes.ipynb", home)
    port, token = free_port(), "console-test"
    environ = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    environ.pop("GIFTCARD_URL", None)  # the notebook's own embedded demo server
    said = tmp_path / "lab.out"
    with said.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                f"--port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={home}",
                f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
                "--allow-root",  # CI runs as root
                "--ServerApp.terminals_enabled=False",
                "--LabApp.extension_manager=readonly",  # asks no package index
                "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to run cells
                "--LabApp.news_url=",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd=home,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        browserkit.wait_until(
            lambda: (
                browserkit.answers(f"{url}/api/status?token={token}")
                or (process.poll() is not None and pytest.fail(said.read_text()))
            ),
            "JupyterLab to start",
            timeout=120,
        )
        yield f"{url}/lab/tree/03-ops-card-fixes.ipynb?token={token}"
    finally:
        scratch.stop(process, signal.SIGTERM, timeout=30)


def test_the_same_console_renders_in_jupyterlab(lab, tmp_path):
    """Notebook 03 opened in JupyterLab, its first cells run: the console renders there."""
    with browserkit.chrome() as page:
        page.get(lab)
        browserkit.wait_until(
            lambda: page.execute_script(
                "const app = window.jupyterapp; const nb = app && app.shell.currentWidget;"
                "return !!(nb && nb.sessionContext && nb.sessionContext.session"
                " && nb.sessionContext.session.kernel);"
            ),
            "the notebook to open with its kernel",
            timeout=120,
        )
        browserkit.shoot(page, tmp_path, "1-opened")
        # Run the cells up to the console's (the setup cell, then the console).
        page.execute_script(
            """
            const app = window.jupyterapp, notebook = app.shell.currentWidget.content;
            const last = notebook.widgets.findIndex(
                cell => cell.model.sharedModel.getSource().includes('forms.ops_console('));
            notebook.activeCellIndex = 0;
            notebook.deselectAll();
            notebook.extendContiguousSelectionTo(last);
            app.commands.execute('notebook:run-cell');
            """
        )
        tab = browserkit.wait_for(page, ".jp-OutputArea-output .widget-tab", timeout=120)
        page.execute_script("arguments[0].scrollIntoView()", tab)
        browserkit.shoot(page, tmp_path, "2-console")
        titles = [t.text for t in tab.find_elements("css selector", ".lm-TabBar-tabLabel")]
        assert titles == [title for title, _ in TABS]
        card_form = tab.find_element("css selector", ".gc-card")
        assert card_form.find_element("css selector", ".gc-card_number input").is_displayed()
        assert browserkit.truncated_labels(page, ".jp-OutputArea-output") == []
