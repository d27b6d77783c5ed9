"""The credential cache: no till waits for scrypt when its cached credentials are re-checked.

Checking a password (scrypt) costs tens of milliseconds on purpose, so a verified
Authorization header is trusted for a minute. When that minute ends, the requests in
flight must not each run scrypt (one check per user at a time, the others take its
answer), and a till in steady use must not wait at all (its entry is checked again in the
background before it expires). A changed password is still refused once the minute is over.
These tests move the Authenticator's clock and count the real password checks it runs.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serverkit import Seconds

from giftcard_toolkit.server import auth as auth_module
from giftcard_toolkit.server import create_app
from giftcard_toolkit.server.auth import CACHE_SECONDS, REFRESH_SECONDS, Authenticator
from giftcard_toolkit.server.ledger import Ledger


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


TILL = basic("till", "till-password")


class Checks:
    """The real password check, counted, and held at its start while ``gate`` is clear."""

    def __init__(self) -> None:
        self.real = auth_module.verify_password
        self.gate = threading.Event()
        self.gate.set()
        self.started = self.finished = 0
        self._changed = threading.Condition()

    def __call__(self, password: str, stored: str) -> bool:
        with self._changed:
            self.started += 1
            self._changed.notify_all()
        self.gate.wait(timeout=30)
        try:
            return self.real(password, stored)
        finally:
            with self._changed:
                self.finished += 1
                self._changed.notify_all()

    def wait_started(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.started >= count, timeout=30)

    def settle(self) -> None:
        """Wait until every check that started has finished (background ones too)."""
        with self._changed:
            assert self._changed.wait_for(lambda: self.finished == self.started, timeout=30)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Checks:
    counted = Checks()
    monkeypatch.setattr(auth_module, "verify_password", counted)
    return counted


@pytest.fixture
def ledger(database: str | Path) -> Iterator[Ledger]:
    ledger = Ledger(database)
    ledger.put_user("till", auth_module.hash_password("till-password"), [])
    yield ledger
    ledger.close()


@pytest.fixture
def clock() -> Seconds:
    return Seconds()


def test_a_cached_credential_costs_no_scrypt_within_its_minute(ledger, checks, clock):
    auth = Authenticator(ledger, clock=clock)
    for _ in range(100):
        assert auth.authenticate(TILL).username == "till"
        clock.advance((CACHE_SECONDS - REFRESH_SECONDS) / 200)
    assert checks.started == 1


def test_requests_arriving_when_the_minute_ends_run_one_scrypt_between_them(ledger, checks, clock):
    auth = Authenticator(ledger, clock=clock)
    assert auth.authenticate(TILL) is not None
    clock.advance(CACHE_SECONDS + 1)
    checks.gate.clear()  # the first check to start waits here until every request is in
    with ThreadPoolExecutor(16) as pool:
        answers = [pool.submit(auth.authenticate, TILL) for _ in range(16)]
        checks.wait_started(2)
        time.sleep(0.2)  # all sixteen are in: one in scrypt, fifteen waiting for its answer
        assert checks.started == 2
        checks.gate.set()
        users = [answer.result(timeout=30) for answer in answers]
    assert all(user is not None and user.username == "till" for user in users)
    assert checks.started == 2, "one scrypt for sixteen requests"


def test_a_credential_in_use_is_checked_again_ahead_and_no_request_waits_for_it(
    ledger, checks, clock
):
    auth = Authenticator(ledger, clock=clock)
    assert auth.authenticate(TILL) is not None
    clock.advance(CACHE_SECONDS - REFRESH_SECONDS / 2)  # the entry's last seconds
    checks.gate.clear()  # the re-check is held: a request that waited for it would hang
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(auth.authenticate, TILL) for _ in range(8)]
        users = [answer.result(timeout=5) for answer in answers]
    assert all(user is not None and user.username == "till" for user in users)
    checks.wait_started(2)
    assert checks.started == 2, "one re-check in the background"
    checks.gate.set()
    checks.settle()
    clock.advance(REFRESH_SECONDS)  # past the first minute, within the renewed one
    assert auth.authenticate(TILL) is not None
    assert checks.started == 2, "the renewed entry answers without scrypt"


@pytest.mark.parametrize("use", ["every 5 s", "idle"])
def test_a_changed_password_is_refused_once_the_minute_is_over(ledger, checks, clock, use):
    auth = Authenticator(ledger, clock=clock)
    assert auth.authenticate(TILL) is not None
    ledger.put_user("till", auth_module.hash_password("new-password"), [])
    accepted = []
    step = 5.0 if use == "every 5 s" else CACHE_SECONDS
    while clock.now < 1000 + CACHE_SECONDS:
        clock.advance(step)
        accepted.append(auth.authenticate(TILL) is not None)
        checks.settle()
    assert accepted[-1] is False, f"the old password still worked a minute later: {accepted}"
    assert accepted == sorted(accepted, reverse=True), "refused once, refused from then on"
    assert auth.authenticate(basic("till", "new-password")) is not None


def test_a_wrong_password_is_checked_never_answered_from_the_cache(ledger, checks, clock):
    auth = Authenticator(ledger, clock=clock)
    assert auth.authenticate(TILL) is not None
    assert auth.cached(basic("till", "till-passwore")) is None
    assert auth.authenticate(basic("till", "till-passwore")) is None
    assert checks.started == 2, "the wrong password went through scrypt"
    assert auth.authenticate(TILL) is not None, "and did not evict the right one"
    assert checks.started == 2


def test_a_refresh_window_as_long_as_the_cache_is_refused(ledger):
    with pytest.raises(ValueError, match="refresh_seconds < cache_seconds"):
        Authenticator(ledger, cache_seconds=10, refresh_seconds=10)


@pytest.mark.anyio
async def test_requests_over_http_when_the_minute_ends_share_one_scrypt(ledger, checks, clock):
    app = create_app(ledger, authenticator=Authenticator(ledger, clock=clock))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://giftcard") as http:
        headers = {"Authorization": TILL}
        assert (await http.put("/Auth/verify", headers=headers)).status_code == 200
        clock.advance(CACHE_SECONDS + 1)
        answers = await asyncio.gather(
            *(http.put("/Auth/verify", headers=headers) for _ in range(20))
        )
    assert [a.status_code for a in answers] == [200] * 20
    assert checks.started == 2
