"""Several server processes on one PostgreSQL: exactness comes from the database, not from a
process. Four workers (``serve --workers 4``) share one database; every request below opens
its own connection, so the requests spread over the workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import simplejson
from pgkit import new_database, own_server, require_postgres, stopped

from giftcard_toolkit.cli import main
from giftcard_toolkit.server import Ledger
from giftcard_toolkit.server.runner import server_process
from giftcard_toolkit.server.seed import DemoCard, read_card_stock

SERVER_BACKENDS = ("postgresql",)
AUTH = ("demo", "demo-password")
OK, PARTIAL, INSUFFICIENT = "000000", "000001", "100005"


@dataclass
class Chain:
    """A 4-worker server on one PostgreSQL database, its url and card stock."""

    url: str
    db: str
    process: subprocess.Popen[bytes]
    stock: Iterator[DemoCard]
    log: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fresh_card(self) -> DemoCard:
        with self.lock:
            return next(self.stock)


# Every request on a connection of its own (no keep-alive), so that any worker may take it;
# one client for them all, as making a client costs more than a request.
_http = httpx.Client(
    auth=AUTH, timeout=30, limits=httpx.Limits(max_connections=None, max_keepalive_connections=0)
)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    _http.close()


def _send(url: str, method: str, path: str, payload: Any = None, **headers: str) -> httpx.Response:
    """One request on a new connection."""
    content = None if payload is None else simplejson.dumps(payload, use_decimal=True)
    kind = {"Content-Type": "application/json"} if payload is not None else {}
    return _http.request(method, url + path, content=content, headers={**kind, **headers})


def _token(url: str, card: DemoCard) -> str:
    answer = _send(
        url, "POST", "/v1/Token", {"cardnumber": card.number, "securitycode": card.security_code}
    ).json()
    assert answer["statuscode"] == OK, answer
    return str(answer["token"])


def _sold(chain: Chain, amount: str) -> tuple[DemoCard, str, int]:
    """A fresh card sold for ``amount``: the card, a token, and its sale's ledger row id."""
    card = chain.fresh_card()
    token = _token(chain.url, card)
    sale = {"cardtoken": token, "amount": Decimal(amount), "FranchiseeID": card.store_id}
    sold = _send(chain.url, "POST", "/Transaction/sellnewcard", sale).json()
    assert sold["statuscode"] == OK, sold
    return card, token, int(sold["hostRef"])


def _redeem(token: str, amount: str, store: str, partial: bool = False) -> dict[str, Any]:
    return {
        "cardtoken": token,
        "amount": Decimal(amount),
        "FranchiseeID": store,
        "acceptpartialamount": partial,
    }


def _rows(db: str, sale_ref: int) -> list[tuple[int, str, int]]:
    """The ledger rows (id, type, cents) of the card whose sale was ``sale_ref``."""
    ledger = Ledger(db)
    try:
        with ledger.read() as conn:
            rows = conn.execute(
                "SELECT id, type, amount_cents FROM ledger WHERE card_id = "
                "(SELECT card_id FROM ledger WHERE id = ?) ORDER BY id",
                (sale_ref,),
            ).fetchall()
        return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]
    finally:
        ledger.close()


def _problems(db: str) -> list[str]:
    ledger = Ledger(db)
    try:
        return ledger.check_invariants()
    finally:
        ledger.close()


def _at_once(count: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """``count`` calls released together from a barrier, each in its own thread."""
    barrier = threading.Barrier(count)

    def run(index: int) -> httpx.Response:
        barrier.wait(timeout=30)
        return call(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def _workers(server_pid: int) -> set[int]:
    """The uvicorn worker processes under ``serve --workers N`` (its spawned children)."""
    found: set[int] = set()
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"multiprocessing" in command and b"resource_tracker" not in command:
                found.add(child)
    return found


def _cpu_ticks(pid: int) -> int:
    """The CPU time a process has used so far (clock ticks, user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """One 4-worker server for the module (it takes seconds to start); its books must
    balance when the module is done."""
    require_postgres()
    db = new_database()
    folder = tmp_path_factory.mktemp("chain")
    stock, log = folder / "stock.csv", folder / "server.log"
    with server_process(db, card_stock=stock, workers=4, log=log, log_level="info") as server:
        unsold = iter([c for c in read_card_stock(stock) if not c.sold])
        yield Chain(server.url, db, server.process, unsold, log)
    assert _problems(db) == []


# ------------------------------------------------------------------ exactness


def test_every_worker_writes_the_access_log(chain: Chain) -> None:
    """Each request is a line of the access log whichever worker served it (the workers
    are separate processes: each sets up the server's logging itself)."""
    ids = [f"worker-log-{n}-{uuid.uuid4().hex[:8]}" for n in range(12)]
    answers = _at_once(
        len(ids),
        lambda n: httpx.put(
            f"{chain.url}/Auth/verify", auth=AUTH, headers={"X-Correlation-Id": ids[n]}
        ),
    )
    assert [a.status_code for a in answers] == [200] * len(ids)
    _wait_until(lambda: all(i in chain.log.read_text() for i in ids), 10, "the access log")
    lines = [line for line in chain.log.read_text().splitlines() if "worker-log-" in line]
    assert all("PUT /Auth/verify 200" in line and "user=demo" in line for line in lines)


def test_64_concurrent_redeems_of_one_card_approve_exactly_its_balance(chain):
    card, token, sale = _sold(chain, "10.00")
    # 0.30 does not divide 10.00: 33 whole approvals, one partial of the last 0.10.
    request = _redeem(token, "0.30", card.store_id, partial=True)
    answers = _at_once(64, lambda _: _send(chain.url, "POST", "/Transaction/radeem", request))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers if a.is_error]
    bodies = [json.loads(a.text, parse_float=Decimal) for a in answers]
    codes = [b["statuscode"] for b in bodies]
    assert codes.count(OK) == 33 and codes.count(PARTIAL) == 1, codes
    assert codes.count(INSUFFICIENT) == 30, "a zero balance is declined, never overdrawn"
    approved = [b["approvedbalance"] for b in bodies if b["statuscode"] in (OK, PARTIAL)]
    assert sum(approved) == Decimal("10.00"), "exactly the balance, to the cent"
    (partial,) = [b for b in bodies if b["statuscode"] == PARTIAL]
    assert partial["approvedbalance"] == Decimal("0.10") and partial["newbalance"] == 0
    rows = _rows(chain.db, sale)
    assert [cents for _, kind, cents in rows if kind == "redeem"].count(30) == 33
    assert sum(cents for _, kind, cents in rows if kind == "redeem") == 1000
    balance = _send(chain.url, "POST", "/Transaction/balancecheck", {"cardtoken": token})
    assert json.loads(balance.text, parse_float=Decimal)["balance"] == 0
    assert _problems(chain.db) == []


def test_one_idempotency_key_sent_to_several_workers_at_once_is_applied_once(chain):
    card, token, sale = _sold(chain, "50.00")
    request = _redeem(token, "5.00", card.store_id)
    key = {"Idempotency-Key": f"at-once-{uuid.uuid4()}"}
    answers = _at_once(
        12, lambda _: _send(chain.url, "POST", "/Transaction/radeem", request, **key)
    )
    firsts = [a for a in answers if a.status_code == 200 and "idempotent-replayed" not in a.headers]
    replays = [a for a in answers if a.headers.get("idempotent-replayed") == "true"]
    busy = [a for a in answers if a.status_code == 409]
    assert len(firsts) == 1, [(a.status_code, a.text) for a in answers]
    assert len(firsts) + len(replays) + len(busy) == 12, [a.text for a in answers]
    assert firsts[0].json()["statuscode"] == OK
    assert all(r.text == firsts[0].text for r in replays), "a replay is the first answer itself"
    for refused in busy:
        assert "same key" in refused.json()["detail"] or "in flight" in refused.text.lower()
    redeems = [row for row in _rows(chain.db, sale) if row[1] == "redeem"]
    assert redeems == [(int(firsts[0].json()["hostRef"]), "redeem", 500)], "applied once"
    after = _send(chain.url, "POST", "/Transaction/radeem", request, **key)
    assert after.headers["idempotent-replayed"] == "true" and after.text == firsts[0].text


# ------------------------------------------------------------------ tokens, lockout


def test_a_token_made_on_one_worker_works_on_every_other(chain):
    card, token, _ = _sold(chain, "20.00")
    checks = _at_once(
        16,
        lambda _: _send(chain.url, "POST", "/Transaction/balancecheck", {"cardtoken": token}),
    )
    assert [c.json()["statuscode"] for c in checks] == [OK] * 16
    assert {json.loads(c.text, parse_float=Decimal)["balance"] for c in checks} == {
        Decimal("20.00")
    }
    redeem = _send(chain.url, "POST", "/Transaction/radeem", _redeem(token, "1.25", card.store_id))
    assert json.loads(redeem.text, parse_float=Decimal)["newbalance"] == Decimal("18.75")


def test_the_security_code_lockout_counts_across_workers(chain):
    card = chain.fresh_card()
    wrong = [f"{(int(card.security_code) + i) % 10000:04d}" for i in range(1, 25)]
    answers = _at_once(
        24,
        lambda i: _send(
            chain.url, "POST", "/v1/Token", {"cardnumber": card.number, "securitycode": wrong[i]}
        ),
    )
    codes = [a.json()["statuscode"] for a in answers]
    assert codes.count("100008") == 5, codes  # five wrong codes, wherever they landed
    assert codes.count("100014") == 19, codes  # then locked on every worker
    right = {"cardnumber": card.number, "securitycode": card.security_code}
    tries = [_send(chain.url, "POST", "/v1/Token", right).json()["statuscode"] for _ in range(8)]
    assert tries == ["100014"] * 8, "locked even with the right code, on every worker"


# ------------------------------------------------------------------ a worker killed


def test_a_worker_killed_mid_load_loses_no_approval(chain, capsys):
    workers = _workers(chain.process.pid)
    assert len(workers) == 4, f"expected 4 worker processes, found {sorted(workers)}"
    sold = [_sold(chain, "20.00") for _ in range(6)]
    approved: dict[int, list[int]] = {sale: [] for _, _, sale in sold}  # sale -> hostRefs
    unknown: dict[int, int] = dict.fromkeys(approved, 0)  # answers lost with the worker
    killed = threading.Event()
    after_kill = [0]
    lock = threading.Lock()

    def redeemer(card: DemoCard, token: str, sale: int) -> None:
        for _ in range(30):
            try:
                answer = _send(
                    chain.url, "POST", "/Transaction/radeem", _redeem(token, "0.10", card.store_id)
                )
            except httpx.TransportError:
                with lock:
                    unknown[sale] += 1
                continue
            if answer.status_code != 200:
                with lock:
                    unknown[sale] += 1
                continue
            assert answer.json()["statuscode"] == OK, answer.text
            with lock:
                approved[sale].append(int(answer.json()["hostRef"]))
                if killed.is_set():
                    after_kill[0] += 1

    threads = [threading.Thread(target=redeemer, args=s) for s in sold]
    for thread in threads:
        thread.start()
    _wait_until(lambda: sum(map(len, approved.values())) >= 10, 60, "redeems to be running")
    before = {pid: _cpu_ticks(pid) for pid in workers}
    _wait_until(lambda: sum(map(len, approved.values())) >= 40, 60, "more redeems")
    busy = {pid: _cpu_ticks(pid) - before[pid] for pid in workers}
    victim = max(busy, key=busy.__getitem__)  # a worker serving the load right now
    assert busy[victim] > 0, busy
    os.kill(victim, signal.SIGKILL)
    killed.set()
    for thread in threads:
        thread.join(timeout=120)
    _wait_until(
        lambda: len(_workers(chain.process.pid)) == 4 and victim not in _workers(chain.process.pid),
        30,
        "uvicorn to start a worker in place of the killed one",
    )
    assert after_kill[0] > 0, "the other workers kept answering"
    for _, token, sale in sold:
        rows = _rows(chain.db, sale)
        redeems = {ref for ref, kind, _ in rows if kind == "redeem"}
        assert set(approved[sale]) <= redeems, "every approval seen is in the books"
        extra = len(redeems) - len(approved[sale])
        assert 0 <= extra <= unknown[sale], "at most the requests unanswered are applied unseen"
        balance = _send(chain.url, "POST", "/Transaction/balancecheck", {"cardtoken": token})
        assert json.loads(balance.text, parse_float=Decimal)["balance"] == (
            Decimal("20.00") - Decimal("0.10") * len(redeems)
        )
    assert _problems(chain.db) == []
    seen = sum(map(len, approved.values()))
    with capsys.disabled():
        print(
            f"\n[postgres] SIGKILL of 1 of 4 workers under 6 redeeming clients: {seen} "
            f"approvals seen, all in the books; {sum(unknown.values())} answers lost; "
            f"{sum(1 for t in busy.values() if t)} of 4 workers were busy; "
            f"{after_kill[0]} approvals after the kill; invariants hold"
        )


# ------------------------------------------------------------------ the database away


def test_the_database_going_away_answers_503_and_service_resumes(tmp_path):
    """A PostgreSQL of this test's own, stopped while serving, then started again."""
    require_postgres()
    stock = tmp_path / "stock.csv"
    with own_server() as pg:
        db = new_database(pg.get_uri())
        with server_process(db, card_stock=stock, workers=2) as server:
            url = server.url
            card = next(c for c in read_card_stock(stock) if not c.sold)
            token = _token(url, card)
            sale = {"cardtoken": token, "amount": Decimal(30), "FranchiseeID": card.store_id}
            assert _send(url, "POST", "/Transaction/sellnewcard", sale).json()["statuscode"] == OK
            request = _redeem(token, "1.00", card.store_id)
            keys = [f"away-{n}-{uuid.uuid4()}" for n in range(12)]

            def redeem(key: str) -> httpx.Response:
                return _send(
                    url, "POST", "/Transaction/radeem", request, **{"Idempotency-Key": key}
                )

            for key in keys[:4]:
                assert redeem(key).json()["statuscode"] == OK
            # Writes at once, so that every write thread of each worker holds a connection.
            warm = _redeem(token, "0.25", card.store_id)
            answers = _at_once(16, lambda _: _send(url, "POST", "/Transaction/radeem", warm))
            assert [a.json()["statuscode"] for a in answers] == [OK] * 16
            with stopped(pg):
                started_at = time.monotonic()
                health = _send(url, "GET", "/Health")
                assert health.status_code == 503 and health.json()["status"] == "Unhealthy"
                for key in keys[4:8]:
                    answer = redeem(key)
                    assert answer.status_code == 503, answer.text
                    problem = answer.json()
                    assert problem["statuscode"] == "999999" and problem["status"] is False
                    assert "database" in problem["description"], problem
                    assert "retry" in problem["description"], problem
                    assert "Traceback" not in answer.text
                read = _send(url, "POST", "/Transaction/balancecheck", {"cardtoken": token})
                assert read.status_code == 503 and read.json()["statuscode"] == "999999"
                assert time.monotonic() - started_at < 20, "answered, not hung"
            _wait_until(lambda: _send(url, "GET", "/Health").status_code == 200, 30, "health")
            # Each request the outage refused is sent again under its key, as a client does:
            # served at once (connections held through the outage are replaced on first use).
            for key in keys[4:]:
                answer = redeem(key)
                assert answer.status_code == 200, answer.text
                assert answer.json()["statuscode"] == OK, answer.text
            balance = _send(url, "POST", "/Transaction/balancecheck", {"cardtoken": token})
            assert balance.status_code == 200, balance.text
            assert json.loads(balance.text, parse_float=Decimal)["balance"] == Decimal("14.00")
        assert _problems(db) == [], "nothing half-applied"


# ------------------------------------------------------------------ refused at start


def _giftcard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "giftcard_toolkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unreachable_database_at_start_is_one_clear_line_and_a_failed_exit():
    done = _giftcard("serve", "--db", "postgresql://nobody@127.0.0.1:1/x", "--workers", "2")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot reach the PostgreSQL database postgresql://nobody@127.0.0.1:1/x" in lines[0]


def test_several_workers_on_sqlite_are_refused_with_what_to_do(tmp_path):
    existing = tmp_path / "own.sqlite"
    assert main(["admin", "--db", str(existing), "add-store", "--name", "Main Street"]) == 0
    new = tmp_path / "demo.sqlite"
    for command in (["--db", str(existing)], ["--db", str(new), "--seed", "demo"]):
        with pytest.raises(SystemExit) as refused:
            main(["serve", *command, "--workers", "2"])
        message = str(refused.value)
        assert "--workers 2 needs a PostgreSQL database" in message, message
        assert "Run one worker, or move to PostgreSQL" in message, message
    assert not new.exists(), "refused before the demo was seeded"


def test_a_database_of_another_schema_version_is_refused_by_serve_and_admin():
    import psycopg

    db = new_database()
    Ledger(db).close()  # this version's schema, then marked as a future one's
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    for command in (["serve", "--db", db], ["admin", "--db", db, "list-users"]):
        done = _giftcard(*command)
        assert done.returncode != 0, command
        assert "Traceback" not in done.stderr, done.stderr
        message = done.stderr.strip()
        assert len(message.splitlines()) == 1, message
        assert "schema version 99" in message and "upgrade this one" in message, message
        assert "nothing was changed" in message.lower(), message
    with psycopg.connect(db) as conn:
        found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert found == ("99",), "refused untouched"
