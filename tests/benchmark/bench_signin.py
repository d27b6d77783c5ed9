"""The cost a sign-in adds: ``ops.signin.sign_in`` of a person the server has not seen (one
password check, scrypt) beside the baseline, the same sign-in again (the server has the
credentials verified already: no password check), and a ``verify()`` on a signed-in client.

    python tests/benchmark/bench_signin.py [--people 20] [--rounds 3]

The demo server runs in this process (``server.running()``). Each round signs in
``--people`` users never seen before (so that every sign-in pays its password check), then
signs each in again (the baseline: a new client and connection, no password check), and
sends as many ``verify()`` calls through a client signed in already; the median of each
round, the best round reported; first minus again is what the password check adds.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time

from giftcard_toolkit.ops.signin import sign_in
from giftcard_toolkit.server import hash_password, running


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with running() as srv:
        stores = [s.id for s in srv.stores]
        people = [
            [(f"p{r}-{i}", secrets.token_urlsafe(12)) for i in range(args.people)]
            for r in range(args.rounds)
        ]
        for group in people:
            for name, password in group:
                srv.ledger.put_user(name, hash_password(password), stores)
        first, again, verified = [], [], []
        with sign_in(srv.url, "demo", "demo-password") as signed:
            for group in people:
                first.append(statistics.median(_timed(srv.url, group)))
                again.append(statistics.median(_timed(srv.url, group)))
                times = []
                for _ in group:
                    started = time.perf_counter()
                    signed.verify()
                    times.append(time.perf_counter() - started)
                verified.append(statistics.median(times))
    best_first, best_again, best_verify = min(first), min(again), min(verified)
    print(f"{args.people} people per round, best of {args.rounds} rounds; server in process")
    print(f"{'verify() on a signed-in client':44} {best_verify * 1000:7.2f} ms")
    print(f"{'sign_in() again, no password check (baseline)':44} {best_again * 1000:7.2f} ms")
    print(f"{'sign_in() first time: one password check':44} {best_first * 1000:7.2f} ms")
    print(
        f"first / baseline = {best_first / best_again:.1f}x: the password check adds "
        f"{(best_first - best_again) * 1000:.0f} ms, once per person and sign-in"
    )


def _timed(url: str, group: list[tuple[str, str]]) -> list[float]:
    """Seconds each person's ``sign_in`` took (a new client, its verify, closed)."""
    times = []
    for name, password in group:
        started = time.perf_counter()
        sign_in(url, name, password).close()
        times.append(time.perf_counter() - started)
    return times


if __name__ == "__main__":
    main()
