"""The console a team shares, in headless Chromium: ``giftcard-toolkit console`` with only
``GIFTCARD_URL`` set, so each person signs in as themselves; roles, approval above a
limit, and a page served beyond loopback only with its token.

One console for the module (on the tests' demo server, with a clerk limited to 50.00), a
fresh browser page (and so a fresh kernel) per person. Screenshots land in each test's folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import browserkit
import httpx
import pytest

from giftcard_toolkit import GiftCardClient, audit, scratch
from giftcard_toolkit.server import hash_password
from giftcard_toolkit.server.runner import free_port

pytestmark = pytest.mark.slow

LIMITED, LIMITED_PASSWORD = "till-limited", "till-limited-password"
SECRETS = ("clerk-password", "analyst-password", "demo-password", LIMITED_PASSWORD)


@dataclass
class Served:
    url: str
    audit_log: Path
    said: Path


def _serve(folder: Path, server_url: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``giftcard-toolkit console`` with only the server's URL in its environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GIFTCARD_")}
    environ["GIFTCARD_URL"] = server_url
    said = folder / "console.out"
    with said.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "giftcard_toolkit.cli", "console", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=environ,
        )
    return process, said


def _started(process: subprocess.Popen[bytes], said: Path) -> str:
    text = browserkit.wait_until(
        lambda: (
            ("ops console:" in said.read_text() and said.read_text())
            or (process.poll() is not None and f"exited: {said.read_text()}")
        ),
        "the console to start",
        timeout=120,
    )
    assert "exited" not in text, text
    return re.search(r"ops console: (\S+)", text).group(1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    scratch.stop(process, signal.SIGINT, timeout=30)


@pytest.fixture(scope="module")
def served(server, tmp_path_factory) -> Iterator[Served]:
    browserkit.require_browser()
    server.ledger.put_user(
        LIMITED,
        hash_password(LIMITED_PASSWORD),
        [s.id for s in server.stores],
        max_amount=Decimal("50.00"),
    )
    folder = tmp_path_factory.mktemp("signin")
    log = folder / "audit.jsonl"
    process, said = _serve(folder, server.url, "--port", str(free_port()), "--audit-log", str(log))
    try:
        url = _started(process, said)
        assert "every visitor signs in" in said.read_text()
        yield Served(url, log, said)
    finally:
        _stop(process)


@pytest.fixture
def page(served) -> Iterator[Any]:
    """A fresh page on the console (its own kernel), at the sign-in."""
    with browserkit.chrome() as browser:
        browser.get(served.url)
        browserkit.wait_for(browser, ".gc-signin")
        yield browser


def _sign_in(page, username: str, password: str) -> None:
    form = browserkit.wait_for(page, ".gc-signin")
    browserkit.type_into(form, "username", username)
    browserkit.type_into(form, "password", password)
    browserkit.click(form, "sign_in")


def _unsold(server, taken=set()):  # noqa: B006 - one pool of cards for the module
    card = next(
        c
        for c in server.card_stock
        if not c.sold and c.number not in taken and c.store_id == server.stores[0].id
    )
    taken.add(card.number)
    return card


def _output(form) -> str:
    return form.find_element("css selector", ".gc-output").text


def _sell(page, card, amount: str):
    form = browserkit.open_tab(page, "Sell", "sell")
    browserkit.type_into(form, "card_number", card.number)
    browserkit.type_into(form, "security_code", card.security_code)
    browserkit.type_into(form, "amount", amount)
    browserkit.click(form, "submit")
    browserkit.wait_for(page, ".gc-sell .gc-confirmation")
    return form


def _no_secrets_in(page, served) -> None:
    """No password in the page (HTML, and so the widgets' state shown), the audit log or
    the console's own output."""
    shown = page.page_source + page.execute_script(
        "return [...document.querySelectorAll('input')].map(e => e.value).join(' ')"
    )
    written = served.audit_log.read_text() if served.audit_log.exists() else ""
    for secret in SECRETS:
        assert secret not in shown and secret not in written
        assert secret not in served.said.read_text()


def test_without_credentials_the_page_asks_to_sign_in_and_a_wrong_password_shows_nothing(
    page, served, tmp_path
):
    assert not page.find_elements("css selector", ".widget-tab")
    _sign_in(page, "clerk", "not-the-password")
    said = browserkit.wait_until(
        lambda: (
            "did not accept" in page.find_element("css selector", ".gc-signin").text
            and page.find_element("css selector", ".gc-signin").text
        ),
        "a wrong password said in words",
    )
    assert "username 'clerk'" in said and "sign in again" in said
    browserkit.shoot(page, tmp_path, "01-wrong-password")
    assert not page.find_elements("css selector", ".widget-tab"), "no tabs"
    assert "not-the-password" not in page.page_source


def test_an_analyst_sees_balance_and_history_but_no_money_moving_buttons(page, served, tmp_path):
    _sign_in(page, "analyst", "analyst-password")
    browserkit.wait_for(page, ".widget-tab")
    who = browserkit.wait_for(page, ".gc-who").text
    assert "Signed in as analyst" in who and "moves no money" in who
    titles = [t.text.strip() for t in page.find_elements("css selector", ".lm-TabBar-tab")]
    assert titles == ["Card", "Balance"]
    for money in (".gc-sell", ".gc-reload", ".gc-redeem", ".gc-status", ".gc-action"):
        assert not page.find_elements("css selector", money), money
    browserkit.shoot(page, tmp_path, "02-analyst")
    _no_secrets_in(page, served)


def test_a_clerks_sale_is_audited_under_the_clerks_name_then_sign_out(
    page, served, server, tmp_path
):
    _sign_in(page, "clerk", "clerk-password")
    browserkit.wait_for(page, ".widget-tab")
    card = _unsold(server)
    form = _sell(page, card, "20.00")
    browserkit.click(form, "confirm")
    browserkit.wait_until(lambda: "Approved: sold" in _output(form), lambda: _output(form))
    browserkit.shoot(page, tmp_path, "03-clerk-sale")
    sales = audit.read(served.audit_log).filter(
        audit.read(served.audit_log)["card"].str.ends_with(card.last4)
    )
    assert sales["user"].to_list() == ["clerk"] and sales["approved_by"].to_list() == [None]
    _no_secrets_in(page, served)
    browserkit.click(page, "sign_out")
    browserkit.wait_for(page, ".gc-signin")
    assert not page.find_elements("css selector", ".widget-tab")


def test_above_the_clerks_limit_a_supervisor_approves_on_screen_once(
    page, served, server, tmp_path
):
    _sign_in(page, LIMITED, LIMITED_PASSWORD)
    browserkit.wait_for(page, ".widget-tab")
    card = _unsold(server)
    form = _sell(page, card, "80.00")
    note = browserkit.wait_for(page, ".gc-sell .gc-approval_note").text
    assert "above your own limit of $50.00" in note
    browserkit.click(form, "confirm")  # nobody approved yet
    browserkit.wait_until(lambda: "Not approved" in _output(form), lambda: _output(form))
    with GiftCardClient(server.url, "demo", "demo-password") as demo:
        assert demo.balance(card).balance == 0, "nothing sent without approval"
        browserkit.type_into(form, "approver", "demo")
        browserkit.type_into(form, "approver_password", "demo-password")
        browserkit.shoot(page, tmp_path, "04-approval")
        browserkit.click(form, "confirm")
        browserkit.wait_until(lambda: "Approved: sold" in _output(form), lambda: _output(form))
        browserkit.shoot(page, tmp_path, "05-approved")
        assert demo.balance(card).balance == Decimal("80.00")
    log = audit.read(served.audit_log)
    sales = log.filter(log["card"].str.ends_with(card.last4))
    assert sales.select("user", "approved_by", "outcome").rows() == [(LIMITED, "demo", "approved")]
    _no_secrets_in(page, served)


def test_beyond_loopback_the_page_needs_its_token(server, tmp_path):
    browserkit.require_browser()
    port = free_port()
    process, said = _serve(tmp_path, server.url, "--host", "0.0.0.0", "--port", str(port))
    try:
        url = _started(process, said)
        token = re.search(r"\?token=(\S+)", url).group(1)
        assert len(token) >= 32, "a token is made when none is given"
        refused = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert refused.status_code == 302, "without the token: sent to the token's login"
        assert refused.headers["location"].startswith("/login")
        assert "gc-" not in refused.text
        with browserkit.chrome() as browser:
            browser.get(f"http://127.0.0.1:{port}/")
            assert not browser.find_elements("css selector", ".gc-signin")
            browser.get(url)
            browserkit.wait_for(browser, ".gc-signin")
    finally:
        _stop(process)


def test_no_token_beyond_loopback_is_refused_unless_said_explicitly(monkeypatch, server):
    from giftcard_toolkit.cli import main

    monkeypatch.setenv("GIFTCARD_URL", server.url)
    with pytest.raises(SystemExit) as refused:
        main(["console", "--host", "0.0.0.0", "--no-token", "--port", str(free_port())])
    said = str(refused.value)
    assert "refusing to serve the console on 0.0.0.0 without a token" in said
    assert "--i-know-this-is-unprotected" in said


def test_with_a_certificate_the_page_is_served_over_https(server, tmp_path):
    """``--certfile/--keyfile``: https, with the token (a self-signed certificate here)."""
    import ipaddress
    import ssl
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    port = free_port()
    process, said = _serve(
        tmp_path,
        server.url,
        *("--host", "0.0.0.0", "--port", str(port), "--token", "shop-token-123"),
        *("--certfile", str(certfile), "--keyfile", str(keyfile)),
    )
    try:
        url = _started(process, said)
        assert url == f"https://127.0.0.1:{port}/?token=shop-token-123"
        trusted = ssl.create_default_context(cafile=str(certfile))
        page = httpx.get(url, verify=trusted, timeout=60)
        assert page.status_code == 200 and "voila" in page.text.lower()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=30)  # no plain http
    finally:
        _stop(process)
