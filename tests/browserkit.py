"""A real browser for tests and benchmarks: Debian's headless Chromium driven by Selenium.

    with browserkit.chrome() as browser:        # skips (locally) when there is no browser
        browser.get(url)
        browserkit.wait_for(browser, ".widget-tab")
        browserkit.shoot(browser, tmp_path, "01-opened")
        assert browserkit.truncated_labels(browser) == []

No browser is ever downloaded: Selenium is pointed at /usr/bin/chromium and chromedriver.
Without them a local run skips, saying how to install them; with ``CI=true`` it fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

INSTALL = "apt-get install chromium chromium-driver"
WIDE, NARROW = (1280, 800), (800, 800)

# Every element that shows a label or a title: ipywidgets' descriptions, checkbox and
# button text, the console's tab titles (Lumino).
LABELS = ".widget-label, .widget-label-basic span, .widget-button, .lm-TabBar-tabLabel"


def find_browser() -> tuple[str, str] | None:
    """Chromium and its driver from the system, or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def require_browser() -> tuple[str, str]:
    """Chromium and chromedriver, or a skip saying how to get them (a failure in CI)."""
    found = find_browser()
    if found is None:
        message = f"no Chromium/chromedriver on this machine: {INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI never skips browser tests)")
        pytest.skip(message)
    return found


@contextmanager
def chrome(size: tuple[int, int] = WIDE) -> Iterator[Any]:
    """A headless Chromium with its console log kept, closed at the end of the block."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Chromium's profile and its singleton socket go to a temporary folder of their own,
    # removed after: chromedriver stops Chromium before it cleans up, which otherwise
    # leaves an org.chromium.Chromium.* folder in the system's temporary folder each time.
    with tempfile.TemporaryDirectory(prefix="giftcard-browser-", ignore_cleanup_errors=True) as own:
        service = Service(driver, env={**os.environ, "TMPDIR": own})
        browser = webdriver.Chrome(options=options, service=service)
        try:
            yield browser
        finally:
            browser.quit()


def resize(browser: Any, size: tuple[int, int]) -> None:
    """Make the page's viewport ``size`` (the window's frame added)."""
    browser.set_window_size(*size)
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    browser.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])


def wait_for(
    browser: Any, css: str, *, timeout: float = 60, visible: bool = True, within: Any = None
) -> Any:
    """The first element matching ``css`` (displayed, unless ``visible`` is False), waited for."""
    from selenium.webdriver.common.by import By

    root = within or browser
    deadline = time.monotonic() + timeout
    while True:
        for element in root.find_elements(By.CSS_SELECTOR, css):
            if not visible or element.is_displayed():
                return element
        if time.monotonic() > deadline:
            shown = browser.execute_script("return document.body.innerText")[:2000]
            raise AssertionError(f"no {css!r} within {timeout} s; the page shows:\n{shown}")
        time.sleep(0.02)


def wait_until(check: Callable[[], Any], what: str | Callable[[], str], timeout: float = 30) -> Any:
    """``check()``'s first truthy answer, polled every 20 ms; ``what`` names it in the
    failure (a callable: asked then, to say what the page showed at that moment)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said}: not within {timeout} s (last: {answer!r})")
        time.sleep(0.02)


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def shoot(browser: Any, folder: Path, name: str) -> Path:
    """A screenshot of the page now, as ``folder/name.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def truncated_labels(browser: Any, within: str = "body") -> list[str]:
    """The visible labels (inside ``within``) whose text does not fit
    (scrollWidth > clientWidth): cut off."""
    return list(
        browser.execute_script(
            """
            return [...document.querySelectorAll(arguments[0])]
              .flatMap(root => [...root.querySelectorAll(arguments[1])])
              .filter(e => e.offsetParent !== null && e.clientWidth > 0)
              .filter(e => e.scrollWidth > e.clientWidth)
              .map(e => `${e.textContent.trim()} (${e.scrollWidth} > ${e.clientWidth} px)`);
            """,
            within,
            LABELS,
        )
    )


def overflowing(browser: Any) -> int:
    """How far the page is wider than the window, in px (0: no sideways scrolling)."""
    return int(
        browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
    )


def severe_log(browser: Any) -> list[str]:
    """The browser console's SEVERE entries since the last call (errors, failed loads)."""
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


# ------------------------------------------------------------------ the console's forms


def open_tab(page: Any, title: str, form: str) -> Any:
    """Open the console's tab titled ``title``; its form (CSS class ``gc-<form>``)."""
    for tab in page.find_elements("css selector", ".lm-TabBar-tab"):
        if tab.text.strip() == title:
            tab.click()
            break
    else:
        raise AssertionError(f"no tab {title!r}")
    return wait_for(page, f".gc-{form}")


def type_into(form: Any, field: str, text: str) -> None:
    """Type ``text`` over the field ``gc-<field>`` of ``form`` (sent when the field is left)."""
    from selenium.webdriver.common.keys import Keys

    box = wait_for(form.parent, f".gc-{field} input", within=form)
    box.send_keys(Keys.CONTROL, "a")  # typed over what is there: one change, sent on leaving
    box.send_keys(text)


def click(form: Any, button: str) -> None:
    """Click the button ``gc-<button>`` of ``form``."""
    form.find_element("css selector", f".gc-{button}").click()
