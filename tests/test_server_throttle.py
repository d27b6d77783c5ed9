"""Password guessing is slowed down (contract §1): after 10 failed authentications for one
username from one client address within the window, that pair is answered 429 with a
Retry-After that grows while the failures go on; other users and addresses are
unaffected; a success resets the count. Against the real server over loopback, with the
throttle's clock moved by the test (or a short real window), and the books checked."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from serverkit import Pos, Seconds

from giftcard_toolkit import GiftCardClient, errors
from giftcard_toolkit._protocol import raise_for_problem
from giftcard_toolkit.server import Throttle, running
from giftcard_toolkit.server.runner import RunningServer

WRONG = "not-the-password"


@pytest.fixture
def clock() -> Seconds:
    return Seconds()


@pytest.fixture
def guarded(clock: Seconds) -> Iterator[RunningServer]:
    """A demo server whose throttle runs on the test's clock (default limits)."""
    with running(throttle=Throttle(clock=clock)) as server:
        yield server
        assert server.ledger.check_invariants() == []


def _client(srv: RunningServer, address: str = "127.0.0.1") -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=srv.url, transport=transport, timeout=30)


def _verify(http: httpx.Client, user: str, password: str) -> httpx.Response:
    return http.put("/Auth/verify", auth=(user, password))


def _fail(http: httpx.Client, times: int, user: str = "demo") -> list[int]:
    return [_verify(http, user, WRONG).status_code for _ in range(times)]


def test_ten_failures_then_429_even_with_the_right_password(guarded, clock, caplog):
    caplog.set_level(logging.WARNING, logger="giftcard_toolkit.server")
    with _client(guarded) as http:
        assert _fail(http, 10) == [401] * 10
        refused = _verify(http, "demo", WRONG)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "60"
        assert "www-authenticate" not in refused.headers, "not an invitation to try again"
        problem = refused.json()
        assert problem["status"] == 429 and problem["title"] == "Too many failed sign-ins"
        assert "try again in 60 s" in problem["detail"]
        # The right password is refused too, or the 429 would tell a right guess apart.
        right = _verify(http, "demo", "demo-password")
        assert right.status_code == 429 and int(right.headers["Retry-After"]) <= 60
        clock.advance(59)
        assert _verify(http, "demo", "demo-password").headers["Retry-After"] == "1"
        clock.advance(1)
        assert _verify(http, "demo", "demo-password").status_code == 200, "over: let in"
    warnings = [r.getMessage() for r in caplog.records if "password guessing" in r.getMessage()]
    assert len(warnings) == 1, "each throttling is logged once"
    assert "user demo from 127.0.0.1 refused (429) for 60 s" in warnings[0]
    assert "10 failed authentications within 900 s" in warnings[0]
    assert WRONG not in caplog.text and "demo-password" not in caplog.text


def test_a_refused_pair_applies_nothing(guarded, clock):
    pos = Pos(guarded)
    card, token = pos.sold_card("50")
    store = guarded.stores[0].id
    with _client(guarded) as http:
        _fail(http, 10)
        for method, path, payload in [
            (
                "POST",
                "/Transaction/radeem",
                {"cardtoken": token, "amount": 5, "FranchiseeID": store},
            ),
            (
                "POST",
                "/Transaction/reload",
                {"cardtoken": token, "amount": 5, "FranchiseeID": store},
            ),
            (
                "PATCH",
                "/Transaction/changestatus",
                {"cardtoken": token, "status": False, "reason": "x"},
            ),
            ("POST", f"/Batch/batch/{store}", {}),
            ("POST", "/v1/Token", {"cardnumber": card.number, "securitycode": card.security_code}),
        ]:
            answer = http.request(method, path, json=payload, auth=("demo", "demo-password"))
            assert answer.status_code == 429, path
        listing = http.get(f"/Batch/{store}?limit=0", auth=("demo", "demo-password"))
        assert listing.status_code == 429, "refused before the query is judged"
    clock.advance(60)  # the POS shares the address: it waits as well
    assert pos.balance(token) == Decimal("50.00")
    with guarded.ledger.read() as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM batches WHERE store_id = ? AND status = 'open'", (store,)
            ).fetchone()[0]
            == 1
        )
    pos.close()


def test_other_users_and_other_addresses_are_unaffected(guarded):
    with _client(guarded) as here, _client(guarded, "127.0.0.2") as elsewhere:
        _fail(here, 11)
        assert _verify(here, "demo", "demo-password").status_code == 429
        assert _verify(here, "clerk", "clerk-password").status_code == 200, "another user"
        assert _verify(elsewhere, "demo", "demo-password").status_code == 200, "another address"
        assert _fail(elsewhere, 3) == [401] * 3, "counted apart"


def test_retry_after_grows_while_the_failures_go_on(guarded, clock, caplog):
    caplog.set_level(logging.WARNING, logger="giftcard_toolkit.server")
    waits = []
    with _client(guarded) as http:
        _fail(http, 10)
        for _ in range(8):  # one wrong password whenever a refusal ends: 25 minutes and more
            refused = _verify(http, "demo", WRONG)
            assert refused.status_code == 429
            waits.append(int(refused.headers["Retry-After"]))
            clock.advance(waits[-1])
            assert _verify(http, "demo", WRONG).status_code == 401, "one more try, wrong"
    assert waits == [60, 120, 240, 480, 900, 900, 900, 900], "doubling, up to 15 minutes"
    warnings = [r.getMessage() for r in caplog.records if "password guessing" in r.getMessage()]
    assert len(warnings) == 9, "each refusal logged once"
    assert warnings[-1].endswith("for 900 s: failed again after 8 refusal(s)")
    clock.advance(900 + 15 * 60)  # the last refusal over, then a window without failures
    with _client(guarded) as http:
        assert _fail(http, 9) == [401] * 9, "forgotten: a fresh count"


def test_a_success_resets_the_count(guarded, clock):
    with _client(guarded) as http:
        assert _fail(http, 9) == [401] * 9
        assert _verify(http, "demo", "demo-password").status_code == 200
        assert _fail(http, 9) == [401] * 9, "counted from zero again"
        # Cached credentials (no scrypt) reset it too.
        assert _verify(http, "demo", "demo-password").status_code == 200
        assert _fail(http, 9) == [401] * 9
        _fail(http, 1)
        assert _verify(http, "demo", WRONG).status_code == 429


def test_failures_spread_wider_than_the_window_are_not_throttled(guarded, clock):
    with _client(guarded) as http:
        for _ in range(3):
            assert _fail(http, 9) == [401] * 9
            clock.advance(15 * 60 + 1)


def test_unknown_usernames_are_throttled_alike(guarded):
    with _client(guarded) as http:
        assert _fail(http, 10, user="nobody") == [401] * 10
        assert _verify(http, "nobody", WRONG).status_code == 429, "no hint that it does not exist"
        assert _verify(http, "demo", "demo-password").status_code == 200


def test_concurrent_guesses_cannot_outrun_the_throttle(guarded):
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def guess() -> None:
        with _client(guarded) as http:
            start.wait()
            status = _verify(http, "demo", WRONG).status_code
        with lock:
            statuses.append(status)

    workers = [threading.Thread(target=guess) for _ in range(24)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(statuses) == [401] * 10 + [429] * 14, "exactly 10 passwords were checked"


def test_a_short_real_window_ends_on_its_own():
    throttle = Throttle(limit=3, window=2.0, first_delay=0.5, max_delay=1.0)
    with running(throttle=throttle) as srv, _client(srv) as http:
        assert _fail(http, 3) == [401] * 3
        refused = _verify(http, "demo", "demo-password")
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        time.sleep(0.6)
        assert _verify(http, "demo", "demo-password").status_code == 200
        time.sleep(2.1)  # past the window: the failures before are forgotten
        assert _fail(http, 2) == [401] * 2
        assert _verify(http, "demo", "demo-password").status_code == 200


def test_the_toolkit_client_raises_too_many_attempts_and_does_not_retry(guarded, clock):
    card = next(c for c in guarded.card_stock if c.sold)
    with GiftCardClient(guarded.url, "demo", WRONG) as gc:
        for _ in range(10):
            with pytest.raises(errors.AuthenticationError) as wrong:
                gc.verify()
            assert not isinstance(wrong.value, errors.TooManyAttempts)
        with pytest.raises(errors.TooManyAttempts) as throttled:
            gc.balance(card)
    assert throttled.value.status == 429 and throttled.value.retry_after == 60
    assert isinstance(throttled.value, errors.AuthenticationError)
    assert "try again in 60 s" in str(throttled.value)
    clock.advance(30)
    with _client(guarded) as http:
        assert _verify(http, "demo", "demo-password").headers["Retry-After"] == "30", (
            "the client sent it once: no retry extended or counted anything"
        )


def test_raise_for_problem_reads_429_and_413():
    request = httpx.Request("PUT", "https://giftcard.example/Auth/verify")
    no_wait = httpx.Response(429, request=request, json={"title": "Too Many Requests"})
    with pytest.raises(errors.TooManyAttempts) as unknown:
        raise_for_problem(no_wait)
    assert unknown.value.retry_after is None and "try again later" in str(unknown.value)
    too_big = httpx.Response(413, request=request, json={"detail": "at most 65,536 bytes"})
    with pytest.raises(errors.RequestRejected) as rejected:
        raise_for_problem(too_big)
    assert rejected.value.status == 413 and "65,536 bytes" in str(rejected.value)


# ------------------------------------------------------------- the Throttle alone


def test_memory_is_bounded_and_hostile_usernames_are_kept_small(clock):
    throttle = Throttle(max_pairs=100, clock=clock)
    for n in range(1_000):
        throttle.failed(f"user-{n}", "10.0.0.1")
        clock.advance(0.001)
    assert len(throttle._pairs) <= 100
    assert ("user-999", "10.0.0.1") in throttle._pairs, "the most recent are kept"
    for _ in range(10):
        throttle.failed("x" * 100_000, "10.0.0.2")
    assert throttle.retry_after("x" * 100_000, "10.0.0.2") == 60
    assert all(len(user) <= 128 for user, _ in throttle._pairs)
    clock.advance(60 + 15 * 60)
    throttle.failed("late", "10.0.0.3")
    assert throttle.retry_after("x" * 100_000, "10.0.0.2") == 0
    assert not throttle.refusing, "ended refusals are forgotten"


def test_the_throttle_is_thread_safe(clock):
    throttle = Throttle(limit=10, clock=clock)
    refused: list[int] = []

    def hammer() -> None:
        for _ in range(1_000):
            refusal = throttle.failed("demo", "10.0.0.9")
            if refusal:
                refused.append(refusal.seconds)
            throttle.retry_after("demo", "10.0.0.9")

    workers = [threading.Thread(target=hammer) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert refused == [60], "one refusal: the others came while it held"
    throttle.succeeded("demo", "10.0.0.9")
    assert throttle.retry_after("demo", "10.0.0.9") == 0 and not throttle.counting
