"""Faults a store chain must survive: a server killed mid-load, answers lost on the way back.

Each test prints its figures (run with ``-s`` to see them; CI logs keep them too).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from decimal import Decimal

import pytest
from pgkit import BACKENDS, new_database

from giftcard_toolkit import GiftCardClient, errors
from giftcard_toolkit.server import Ledger, running
from giftcard_toolkit.server.runner import free_port, server_process
from giftcard_toolkit.server.seed import read_card_stock

AUTH = ("demo", "demo-password")


@pytest.mark.parametrize("backend", BACKENDS, scope="module")
def test_sigkill_during_redeems_loses_no_approval(backend, tmp_path, capsys):
    stock = tmp_path / "stock.csv"
    db = new_database() if backend == "postgresql" else tmp_path / "chain.sqlite"
    with server_process(db, card_stock=stock) as server:
        url = server.url
        cards = [c for c in read_card_stock(stock) if not c.sold][:8]
        with GiftCardClient(url, *AUTH) as gc:
            for card in cards:
                gc.sell(card, "100.00", card.store_id)
        approved: list[tuple[str, str]] = []  # (card number, hostRef) of every approval seen
        lock = threading.Lock()

        def redeemer(card) -> None:
            with GiftCardClient(url, *AUTH, attempts=1, timeout=5) as gc:
                while True:
                    try:
                        answer = gc.redeem(card, "0.10", card.store_id)
                    except errors.GiftCardError:
                        return  # the server is gone
                    with lock:
                        approved.append((card.number, answer.host_ref))

        workers = [threading.Thread(target=redeemer, args=(card,)) for card in cards]
        for worker in workers:
            worker.start()
        time.sleep(1.5)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        for worker in workers:
            worker.join(timeout=30)
    assert approved, "redeems were running when the server died"

    with server_process(db) as restarted, GiftCardClient(restarted.url, *AUTH) as gc:
        in_batches = {
            t.host_ref
            for s in {c.store_id for c in cards}
            for b in gc.batches(s, status="open")
            for t in b.transactions
        }
        balances = {c.number: gc.balance(c).balance for c in cards}
    missing = [ref for _, ref in approved if ref not in in_batches]
    assert not missing, f"approvals lost in the crash: {missing[:5]}"
    ledger = Ledger(db)
    problems = ledger.check_invariants()
    with ledger.read() as conn:
        redeemed = dict(
            conn.execute(
                "SELECT c.last4, count(*) FROM ledger l JOIN cards c ON c.id = l.card_id "
                "WHERE l.type = 'redeem' AND l.amount_cents = 10 GROUP BY c.id"
            ).fetchall()
        )
    ledger.close()
    assert problems == []
    for card in cards:
        seen = sum(1 for number, _ in approved if number == card.number)
        applied = redeemed.get(card.last4, 0)
        assert applied in (seen, seen + 1), "at most the one in flight is applied unseen"
        assert balances[card.number] == Decimal("100.00") - Decimal("0.10") * applied
    with capsys.disabled():
        print(
            f"\n[crash, {backend}] SIGKILL under 8 redeeming clients: "
            f"{len(approved)} approvals seen, all {len(approved)} in the batches after restart; "
            f"{sum(redeemed.values()) - len(approved)} applied but unanswered; "
            "ledger invariants hold; money lost or doubled: 0"
        )


class DroppingProxy:
    """A loopback TCP proxy that loses a share of the server's answers: the request is
    forwarded (and applied), then the client's connection is closed without the answer."""

    def __init__(self, target_port: int, drop: float, seed: int = 7) -> None:
        self.target_port = target_port
        self.drop = drop
        self.random = random.Random(seed)
        self.dropped = 0
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DroppingProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._started.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if self.random.random() < self.drop:
                    self.dropped += 1
                    client_w.transport.abort()
                    server_w.close()
                    return
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)


@pytest.mark.parametrize("backend", BACKENDS, scope="module")  # running() follows it
def test_lost_answers_through_a_proxy_are_applied_exactly_once(backend, capsys):
    with running() as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        cards = [c for c in srv.card_stock if not c.sold][:10]
        with GiftCardClient(srv.url, srv.username, srv.password) as direct:
            for card in cards:
                direct.sell(card, "200.00", card.store_id)
            # Tokens are made directly: a lost /v1/Token answer is not retried (a resent
            # wrong code would count twice toward the lockout); money calls are.
            tokens = {card.number: direct.tokenize(card) for card in cards}
        with srv.ledger.read() as conn:
            before = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
        operations = 1000
        with (
            DroppingProxy(port, drop=0.10) as proxy,
            GiftCardClient(
                f"http://127.0.0.1:{proxy.port}",
                srv.username,
                srv.password,
                attempts=8,
                backoff=0.005,
            ) as gc,
        ):
            for index in range(operations):
                card = cards[index % len(cards)]
                token = tokens[card.number]
                if (index // len(cards)) % 2:  # each card: reload, redeem, reload, ...
                    gc.redeem(token, "0.10", card.store_id)
                else:
                    gc.reload(token, "0.10", card.store_id)
            dropped = proxy.dropped
        with srv.ledger.read() as conn:
            after = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
        with GiftCardClient(srv.url, srv.username, srv.password) as direct:
            balances = {direct.balance(c).balance for c in cards}
        assert after - before == operations, "each operation applied exactly once"
        assert balances == {Decimal("200.00")}, "as many reloads as redeems of 0.10 each"
        assert srv.ledger.check_invariants() == []
        assert dropped > operations * 0.05, "the proxy really lost answers"
    with capsys.disabled():
        print(
            f"\n[lost answers, {backend}] {operations} money operations through a proxy "
            f"losing 10% of answers: {dropped} answers lost and retried, "
            f"{after - before} ledger rows; money lost or doubled: 0"
        )


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_mixed_load_has_no_errors_and_flat_memory(tmp_path, capsys):
    db, stock = tmp_path / "chain.sqlite", tmp_path / "stock.csv"
    with server_process(db, card_stock=stock) as server:
        url = server.url

        def rss_mb() -> float:
            with open(f"/proc/{server.process.pid}/status") as status:
                lines = [line for line in status if line.startswith("VmRSS")]
            return int(lines[0].split()[1]) / 1024

        cards = [c for c in read_card_stock(stock) if not c.sold][:16]
        with GiftCardClient(url, *AUTH) as gc:
            for card in cards:
                gc.sell(card, "500.00", card.store_id)
        requests, clients = 20_000, 16
        start_rss = rss_mb()
        failures: list[str] = []
        moved: dict[str, Decimal] = {c.number: Decimal("500.00") for c in cards}

        def client(worker: int) -> None:
            card = cards[worker]
            with GiftCardClient(url, *AUTH) as gc:
                for index in range(requests // clients):
                    try:
                        kind = index % 10
                        if kind < 6:
                            gc.balance(card)
                        elif kind < 8:
                            moved[card.number] -= gc.redeem(card, "0.05", card.store_id).approved
                        elif kind < 9:
                            gc.reload(card, "0.05", card.store_id)
                            moved[card.number] += Decimal("0.05")
                        else:
                            gc.batches(card.store_id, status="open", transactions=False)
                    except errors.GiftCardError as failed:
                        failures.append(str(failed))

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        end_rss = rss_mb()
        with GiftCardClient(url, *AUTH) as gc:
            held = {c.number: gc.balance(c).balance for c in cards}
    ledger = Ledger(db)
    problems = ledger.check_invariants()
    ledger.close()
    assert failures == []
    assert held == moved, "every approved movement, and nothing else, is on the cards"
    assert problems == []
    assert end_rss < start_rss * 1.5 + 50, "memory stays flat"
    with capsys.disabled():
        print(
            f"\n[load] {requests} mixed requests from {clients} clients in {seconds:.1f} s "
            f"({requests / seconds:.0f}/s): 0 errors, money lost or doubled 0; server RSS "
            f"{start_rss:.0f} MB -> {end_rss:.0f} MB"
        )
