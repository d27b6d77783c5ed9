"""Running the server: ``running()`` for notebooks and tests, ``serve()`` for the CLI."""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import json
import logging
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import uvicorn
from fastapi import FastAPI

from giftcard_toolkit import scratch
from giftcard_toolkit.cards import AesGcmCardCipher
from giftcard_toolkit.server.app import MAX_BODY, create_app
from giftcard_toolkit.server.auth import Throttle
from giftcard_toolkit.server.ledger import (
    Clock,
    DatabaseUnavailable,
    Ledger,
    Limits,
    SchemaMismatch,
    Store,
    utc_now,
)
from giftcard_toolkit.server.ledger.postgres import copy_from_sqlite, is_postgres_url
from giftcard_toolkit.server.seed import (
    DEFAULT_AS_OF,
    DEMO,
    DemoCard,
    DemoData,
    Shape,
    open_demo,
    write_card_stock,
)

log = logging.getLogger("giftcard_toolkit.server")


@dataclass
class RunningServer:
    """A live server on loopback and what a caller needs to use it.

    ``username``/``password`` are the demo user's (granted every store); ``users`` holds
    every demo login. ``ledger`` and ``app`` are there for tests that look behind the API.
    """

    url: str
    username: str | None
    password: str | None = field(repr=False)
    users: dict[str, str] = field(repr=False)
    stores: list[Store]
    card_stock: list[DemoCard] = field(repr=False)
    card_key: str | None = field(repr=False)
    db_path: Path
    ledger: Ledger = field(repr=False)
    app: FastAPI = field(repr=False)


# Where ``running()`` keeps a server's database when no ``db_path`` is given: None, a
# SQLite file in a scratch folder; or a function answering a new PostgreSQL database's url
# for each server (the test suite runs the server suite on both backends this way).
database_factory: Callable[[], str] | None = None

_templates: dict[tuple[int, date, str, str], Path] = {}
_templates_lock = threading.Lock()
# The sources a seeded database depends on: a change to any makes a new template.
_SEED_SOURCES = ("seed.py", "ledger/*.py", "auth.py", "schemas.py")
_KEEP_TEMPLATES = 3


def _demo_from_template(
    path: Path, seed_number: int, as_of: date, tz: tzinfo, shape: Shape, **options: object
) -> tuple[Ledger, DemoData]:
    """Open a fresh demo database at ``path``, copied from one seeded earlier.

    Seeding two years of trade takes seconds, and a test suite, the demo and every notebook
    start servers of their own: the seeded database is kept as a template, in this process
    and in the user's cache folder for the next ones (``GIFTCARD_CACHE_DIR``, else
    ``~/.cache/giftcard_toolkit``; safe to delete at any time).
    """
    key = (seed_number, as_of, str(tz), repr(shape))
    with _templates_lock:
        template = _templates.get(key)
        if template is None:
            template = _templates[key] = _template(seed_number, as_of, tz, shape)
    source, target = sqlite3.connect(template), sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return open_demo(path, seed_number, as_of, shape, tz=tz, **options)


def prepare_demo(seed_number: int = 0, as_of: date = DEFAULT_AS_OF, tz: tzinfo = UTC) -> None:
    """Seed the demo's template now, once, so that the servers several processes start
    next (the demo's notebooks, side by side) copy it rather than each seeding its own."""
    with _templates_lock:
        key = (seed_number, as_of, str(tz), repr(DEMO))
        if key not in _templates:
            _templates[key] = _template(seed_number, as_of, tz, DEMO)


def _template(seed_number: int, as_of: date, tz: tzinfo, shape: Shape) -> Path:
    """The template for a seed, from the cache folder, seeded there first if missing."""
    digest = hashlib.sha256(f"{seed_number}|{as_of}|{tz}|{shape!r}".encode())
    here = Path(__file__).resolve().parent
    for pattern in _SEED_SOURCES:
        for source in sorted(here.glob(pattern)):
            digest.update(source.read_bytes())
    name = f"demo-{digest.hexdigest()[:16]}.sqlite"
    folder = Path(
        os.environ.get("GIFTCARD_CACHE_DIR") or Path.home() / ".cache" / "giftcard_toolkit"
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / name).exists():
            _seed_template(folder, name, seed_number, as_of, tz, shape)
    except OSError:  # no writable cache folder: keep it for this process only
        folder = scratch.folder("templates")
        _seed_template(folder, name, seed_number, as_of, tz, shape)
    return folder / name


def _seed_template(
    folder: Path, name: str, seed_number: int, as_of: date, tz: tzinfo, shape: Shape
) -> None:
    """Seed into a name of this process's own, then rename: a reader sees a whole template
    or none, even with several processes seeding at once."""
    partial = folder / f".{name}.{os.getpid()}"
    try:
        seeded, _ = open_demo(partial, seed_number, as_of, shape, tz=tz, durable=False)
        seeded.close()
        with sqlite3.connect(partial) as conn:  # one self-contained file
            conn.execute("PRAGMA journal_mode=DELETE")
        conn.close()
        os.replace(partial, folder / name)
    finally:
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
    older = sorted(folder.glob("demo-*.sqlite"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in older[_KEEP_TEMPLATES:]:
        stale.unlink(missing_ok=True)


class _ThreadedUvicorn:
    """uvicorn in a background thread, on a socket bound before it starts (no port race)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", log_level: str = "warning") -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            daemon=True,
            name=f"giftcard-server-{self.port}",
        )

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedded GiftCard server did not start; see its log")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()


@contextmanager
def running(
    seed: str | None = "demo",
    seed_number: int = 0,
    *,
    as_of: date = DEFAULT_AS_OF,
    clock: Clock = utc_now,
    tz: tzinfo = UTC,
    limits: Limits | None = None,
    db_path: str | Path | None = None,
    log_level: str = "warning",
    throttle: Throttle | None = None,
    max_body: int = MAX_BODY,
    shape: Shape = DEMO,
) -> Iterator[RunningServer]:
    """Start a real server on a free 127.0.0.1 port; stop it when the block ends.

    ``seed="demo"`` serves the demo data (contract §3) from a temporary database (or from
    ``db_path``, reopened as it is if it is a demo database already); ``seed=None`` serves
    an empty database with no users. ``clock`` drives token expiry, batches and card
    expiry, so tests move time instead of sleeping. ``throttle`` counts failed
    authentications (a short window for tests); ``max_body`` is the body limit in bytes.
    ``shape`` seeds a chain of another size (``seed.chain(stores, days)``). ``db_path`` may
    be a PostgreSQL url (an empty database gets a copy of the demo).
    """
    if db_path is None and database_factory is not None:
        db_path = database_factory()
    with scratch.scratch("server") as tmp:
        postgres = is_postgres_url(str(db_path))
        path = Path(db_path) if db_path and not postgres else tmp / "giftcard.sqlite"
        options: dict[str, object] = {"clock": clock, "limits": limits}
        demo: DemoData | None = None
        if postgres and seed == "demo":
            ledger, demo = demo_in_postgres(str(db_path), seed_number, as_of, tz, shape, **options)
        elif postgres and seed is None:
            ledger = Ledger(str(db_path), clock=clock, tz=tz, limits=limits)
        elif seed == "demo":
            if db_path is None:
                ledger, demo = _demo_from_template(path, seed_number, as_of, tz, shape, **options)
            else:
                ledger, demo = open_demo(path, seed_number, as_of, shape, tz=tz, **options)
        elif seed is None:
            ledger = Ledger(path, clock=clock, tz=tz, limits=limits)
        else:
            raise ValueError(f"unknown seed {seed!r}: use 'demo' or None")
        app = create_app(ledger, throttle=throttle, max_body=max_body)
        server = _ThreadedUvicorn(app, log_level=log_level)
        try:
            server.start()
            yield RunningServer(
                url=f"http://127.0.0.1:{server.port}",
                username="demo" if demo else None,
                password=demo.users["demo"] if demo else None,
                users=demo.users if demo else {},
                stores=demo.stores if demo else ledger.stores(),
                card_stock=demo.card_stock if demo else [],
                card_key=demo.card_key if demo else None,
                db_path=path,
                ledger=ledger,
                app=app,
            )
        finally:
            server.stop()
            ledger.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8800,
    db: str | Path | None = None,
    seed: str | None = None,
    seed_number: int = 0,
    card_stock: str | Path | None = None,
    as_of: date = DEFAULT_AS_OF,
    tz: str = "UTC",
    log_level: str = "info",
    max_body: int = MAX_BODY,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
    shape: Shape = DEMO,
    workers: int = 1,
) -> None:
    """Run the server in the foreground until interrupted (``giftcard-toolkit serve``).

    With ``certfile`` (PEM, the certificate chain; the key too unless ``keyfile``) it
    speaks HTTPS only. Listening beyond loopback without it is allowed (a TLS proxy may
    stand in front on another machine) but warned about: passwords travel in every request.
    ``db`` may be a PostgreSQL url (``postgresql://user@host/db``); then ``workers``
    processes serve it side by side (a SQLite ledger has one writer: one process).
    """
    server_logging()
    postgres = is_postgres_url(str(db) if db is not None else None)
    if workers < 1:
        raise SystemExit(f"--workers {workers}: give 1 or more")
    if workers > 1 and not postgres:
        raise SystemExit(
            f"--workers {workers} needs a PostgreSQL database (--db postgresql://...): a "
            "SQLite ledger is written by one process. Run one worker, or move to PostgreSQL "
            "(README: PostgreSQL)."
        )
    try:
        _serve(
            host=host,
            port=port,
            db=db,
            seed=seed,
            seed_number=seed_number,
            card_stock=card_stock,
            as_of=as_of,
            tz=tz,
            log_level=log_level,
            max_body=max_body,
            certfile=certfile,
            keyfile=keyfile,
            shape=shape,
            workers=workers,
        )
    except (DatabaseUnavailable, SchemaMismatch) as refused:
        raise SystemExit(f"cannot serve: {refused}") from None


def _serve(
    *,
    host: str,
    port: int,
    db: str | Path | None,
    seed: str | None,
    seed_number: int,
    card_stock: str | Path | None,
    as_of: date,
    tz: str,
    log_level: str,
    max_body: int,
    certfile: str | Path | None,
    keyfile: str | Path | None,
    shape: Shape,
    workers: int,
) -> None:
    if keyfile and not certfile:
        raise SystemExit("--keyfile needs --certfile (the certificate it belongs to)")
    for name, given in (("--certfile", certfile), ("--keyfile", keyfile)):
        if given and not Path(given).is_file():
            raise SystemExit(f"{name} {given}: no such file")
    if certfile:
        try:  # refuse a bad pair now, with a message, not in uvicorn's traceback
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise SystemExit(f"cannot use {certfile} / {keyfile or certfile}: {exc}") from None
    if max_body < 1024:
        raise SystemExit(f"--max-body {max_body} is too small: at least 1024 bytes")
    zone = ZoneInfo(tz)
    cipher = None
    if os.environ.get("GIFTCARD_CARD_KEY"):
        cipher = AesGcmCardCipher.from_base64(os.environ["GIFTCARD_CARD_KEY"])
    if seed in ("demo", "chain"):
        if not _is_loopback(host):
            raise SystemExit(
                "refusing to serve the demo (its passwords are public) on a non-loopback "
                f"address {host}: use --host 127.0.0.1"
            )
        if is_postgres_url(str(db)):
            ledger, demo = demo_in_postgres(
                str(db), seed_number, as_of, zone, shape, card_cipher=cipher
            )
        else:
            db = Path(db or f"giftcard-{seed}.sqlite")
            ledger, demo = open_demo(db, seed_number, as_of, shape, tz=zone, card_cipher=cipher)
        if card_stock:
            write_card_stock(demo.card_stock, card_stock)
        print(f"demo data (seed {seed_number}, {shape}, as of {demo.as_of}) in {ledger.where}")
        for store in demo.stores:
            print(f"  store {store.id} {store.name!r}")
        for name, password in demo.users.items():
            print(f"  user {name!r} password {password!r}: acts for {demo.grant_text(name)}")
        print(f"  card key (GIFTCARD_CARD_KEY): {demo.card_key}")
        if card_stock:
            print(f"  card stock written to {card_stock}")
    elif seed is None:
        ledger = Ledger(db or "giftcard.sqlite", tz=zone, card_cipher=cipher)
        if ledger.user_count() == 0:
            log.warning(
                "%s has no users: every authenticated endpoint answers 401. Add one with "
                "'giftcard-toolkit admin --db %s add-user NAME --store STORE_ID'",
                ledger.where,
                ledger.where,
            )
    else:
        raise SystemExit(f"unknown --seed {seed!r}: the seeds are 'demo' and 'chain'")
    scheme = "https" if certfile else "http"
    if not certfile and not _is_loopback(host):
        log.warning(
            "listening on %s without TLS: passwords and card data cross the network in "
            "clear. Serve HTTPS with --certfile/--keyfile, or put a TLS reverse proxy in "
            "front (README: production)",
            host,
        )
    print(
        f"serving on {scheme}://{host}:{port} (Ctrl-C to stop)"
        + (f", {workers} worker processes" if workers > 1 else ""),
        flush=True,
    )
    tls = {
        "ssl_certfile": str(certfile) if certfile else None,
        "ssl_keyfile": str(keyfile) if keyfile else None,
    }
    if workers > 1:  # each worker process opens the database and builds the app itself
        ledger.close()
        os.environ[_WORKER_CONFIG] = json.dumps({"db": str(db), "tz": tz, "max_body": max_body})
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            **tls,  # type: ignore[arg-type]
        )
        return
    app = create_app(ledger, max_body=max_body)
    # Everything made so far lives as long as the server: keep it out of the collector's
    # way, which otherwise rescans it on every full collection under load.
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            **tls,  # type: ignore[arg-type]
        )
    finally:
        ledger.close()


def server_logging() -> None:
    """The server's log on standard output: its access log (a line per request) and errors.
    Set up by ``serve`` and by each worker process it starts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The access log writes a line per request: skip what the format does not show
    # (the logging HOWTO's "Optimization" advice), a tenth of a balance check's time.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


# What ``serve --workers N`` tells each worker process (JSON: db, tz, max_body); the card
# key, if any, stays in GIFTCARD_CARD_KEY.
_WORKER_CONFIG = "GIFTCARD_SERVE_WORKER"


def worker_app() -> FastAPI:
    """One worker process's app (uvicorn's factory for ``serve --workers N``)."""
    config = json.loads(os.environ[_WORKER_CONFIG])
    server_logging()
    key = os.environ.get("GIFTCARD_CARD_KEY")
    ledger = Ledger(
        config["db"],
        tz=ZoneInfo(config["tz"]),
        card_cipher=AesGcmCardCipher.from_base64(key) if key else None,
    )
    app = create_app(ledger, max_body=config["max_body"])
    gc.collect()
    gc.freeze()
    return app


def demo_in_postgres(
    url: str,
    seed_number: int,
    as_of: date,
    tz: tzinfo,
    shape: Shape = DEMO,
    **options: object,
) -> tuple[Ledger, DemoData]:
    """The demo in a PostgreSQL database: a new one gets a copy of the demo seeded in SQLite
    (the cached template; or a scratch one for a history up to now), an existing demo is
    reopened as it is, anything else is refused untouched."""
    probe = Ledger(url, tz=tz)
    try:
        empty = probe.meta("kind") is None and not probe.stores()
    finally:
        probe.close()
    if empty:
        if isinstance(as_of, datetime):  # ``serve`` with no --as-of: history up to now
            with scratch.scratch("seed") as tmp:
                seeded, _ = open_demo(tmp / "demo.sqlite", seed_number, as_of, shape, tz=tz)
                seeded.close()
                copy_from_sqlite(tmp / "demo.sqlite", url)
        else:
            with _templates_lock:
                key = (seed_number, as_of, str(tz), repr(shape))
                template = _templates.get(key)
                if template is None:
                    template = _templates[key] = _template(seed_number, as_of, tz, shape)
            copy_from_sqlite(template, url)
    return open_demo(url, seed_number, as_of, shape, tz=tz, **options)


@dataclass
class ServerProcess:
    """A ``giftcard-toolkit serve`` running in a process of its own."""

    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server_process(
    db: str | Path,
    *,
    seed: str | None = "demo",
    card_stock: str | Path | None = None,
    log: str | Path | None = None,
    log_level: str = "warning",
    timeout: float = 60.0,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
    max_body: int | None = None,
    shape: Shape = DEMO,
    workers: int = 1,
) -> Iterator[ServerProcess]:
    """Run the server in its own process on a free loopback port, until the block ends.

    For benchmarks (the load generator must not share the server's interpreter) and crash
    tests (which kill it). ``log`` receives its output (access log included at ``info``).
    With ``certfile`` it serves HTTPS (the url says ``https``), trusted here as its own CA.
    ``db`` may be a PostgreSQL url, served by ``workers`` processes.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "giftcard_toolkit.cli",
        "serve",
        "--db",
        str(db),
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    if seed and shape != DEMO:
        command += [
            "--seed",
            "chain",
            "--stores",
            str(len(shape.stores)),
            "--days",
            str(shape.days),
        ]
    elif seed:
        command += ["--seed", seed]
    if card_stock:
        command += ["--card-stock", str(card_stock)]
    if certfile:
        command += ["--certfile", str(certfile)]
    if keyfile:
        command += ["--keyfile", str(keyfile)]
    if max_body is not None:
        command += ["--max-body", str(max_body)]
    if workers != 1:
        command += ["--workers", str(workers)]
    with open(log or os.devnull, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)  # noqa: S603
    url = f"{'https' if certfile else 'http'}://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(certfile)) if certfile else None
    try:
        deadline = time.monotonic() + timeout
        while not _answers(f"{url}/Health", trust):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start (exit code {process.poll()})")
            time.sleep(0.1)
        yield ServerProcess(url, process)
    finally:
        scratch.stop(process)


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False
