"""The analysts' dashboard (``giftcard-toolkit dashboard --demo``) in a real browser: it
renders whole, changing the store and the measure redraws the figure, no code is shown,
and the browser reports no severe errors."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import browserkit
import pytest

from giftcard_toolkit import scratch
from giftcard_toolkit.server.runner import free_port

FIGURE = ".gc-explore-figure"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Iterator[str]:
    """The dashboard on the demo history, started as a user would; its URL."""
    browserkit.require_browser()
    folder = tmp_path_factory.mktemp("dashboard")
    said = folder / "dashboard.out"
    port = free_port()
    with said.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "giftcard_toolkit.cli", "dashboard", "--demo"]
            + ["--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    try:
        text = browserkit.wait_until(
            lambda: (
                (process.poll() is None and "dashboard:" in said.read_text() and said.read_text())
                or (process.poll() is not None and f"exited: {said.read_text()}")
            ),
            "the dashboard to start",
            timeout=120,
        )
        assert "exited" not in text, text
        url = re.search(r"dashboard: (\S+)", text).group(1)
        assert url == f"http://127.0.0.1:{port}/"
        yield url
    finally:
        scratch.stop(process, signal.SIGTERM, timeout=30)  # a service manager's stop
    assert process.returncode == 0, said.read_text()
    assert not browserkit.answers(url), "Voilà stopped with the dashboard"


@pytest.fixture(scope="module")
def page(dashboard) -> Iterator[Any]:
    with browserkit.chrome() as browser:
        browser.get(dashboard)
        browserkit.wait_for(browser, f"{FIGURE}[src^='data:image/png'], {FIGURE}[src^='blob:']")
        yield browser


def _figure(page: Any) -> str:
    return str(browserkit.wait_for(page, FIGURE).get_attribute("src"))


def _redrawn(page: Any, before: str) -> str:
    return browserkit.wait_until(
        lambda: (now := _figure(page)) != before and now,
        lambda: (
            "the figure to change; the page shows: "
            + page.execute_script("return document.body.innerText")[:1500]
        ),
    )


def _text(page: Any) -> str:
    return str(page.execute_script("return document.body.innerText")).replace("\xa0", " ")


def _choose(page: Any, control: str, visible_text: str, *, multiple: bool = False) -> None:
    from selenium.webdriver.support.select import Select

    box = Select(browserkit.wait_for(page, f".gc-explore-{control} select"))
    if multiple:
        box.deselect_all()
    box.select_by_visible_text(visible_text)


def test_the_dashboard_renders_whole_and_shows_no_code(page, tmp_path):
    for size in (browserkit.WIDE, browserkit.NARROW):
        browserkit.resize(page, size)
        browserkit.shoot(page, tmp_path, f"{size[0]}-opened")
        assert browserkit.truncated_labels(page) == [], f"at {size[0]} px"
        stores = browserkit.wait_for(page, ".gc-explore-stores select")
        assert page.execute_script(
            "return arguments[0].scrollWidth <= arguments[0].clientWidth", stores
        ), f"store names cut off at {size[0]} px"
        assert browserkit.overflowing(page) == 0, f"scrolls sideways at {size[0]} px"
    browserkit.resize(page, browserkit.WIDE)
    shown = page.page_source
    assert "dashboard_page" not in shown, "no code shown"
    assert "export" not in _text(page).lower()
    assert browserkit.severe_log(page) == []


def test_changing_the_store_and_the_measure_redraws_the_figure(page, tmp_path):
    before = _figure(page)
    first_store = browserkit.wait_for(page, ".gc-explore-stores select option").text
    _choose(page, "stores", first_store, multiple=True)  # picking stores unticks "all"
    one_store = _redrawn(page, before)
    browserkit.shoot(page, tmp_path, "one-store")
    assert not page.find_element("css selector", ".gc-explore-all-stores input").is_selected()
    assert f"Stores: {first_store.split(' (')[0]}" in _text(page).replace("\xa0", " ")

    _choose(page, "measure", "outstanding liability")
    _redrawn(page, one_store)
    browserkit.shoot(page, tmp_path, "liability")
    assert browserkit.truncated_labels(page) == []
    assert browserkit.severe_log(page) == []


def test_an_empty_store_choice_is_said_in_words(page, tmp_path):
    from selenium.webdriver.support.select import Select

    if page.find_element("css selector", ".gc-explore-all-stores input").is_selected():
        page.find_element("css selector", ".gc-explore-all-stores input").click()
    Select(browserkit.wait_for(page, ".gc-explore-stores select")).deselect_all()
    message = browserkit.wait_for(page, ".gc-explore-message p")
    browserkit.wait_until(lambda: "No store is selected" in message.text, "the message")
    browserkit.shoot(page, tmp_path, "no-store")
    assert "Traceback" not in _text(page)
