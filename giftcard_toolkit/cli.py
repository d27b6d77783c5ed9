"""The ``giftcard-toolkit`` console script: each command a thin layer over a Python function.

giftcard-toolkit serve [--host 127.0.0.1] [--port 8800] [--db PATH] [--seed demo|chain]
                       [--stores N --days D] [--seed-number N] [--card-stock PATH]
                       [--as-of DATE] [--tz ZONE]
                       [--max-body BYTES] [--certfile PEM [--keyfile PEM]]
giftcard-toolkit admin --db PATH add-store --name NAME [--address TEXT] [--id GUID]
                                           [--jurisdiction US-NY]
giftcard-toolkit admin --db PATH set-jurisdiction --store GUID --jurisdiction US-NY
giftcard-toolkit admin --db PATH add-user NAME --store GUID [--store GUID ...]
                                          [--role clerk|analyst] [--max-amount AMOUNT|none]
                                          [--password-stdin]
giftcard-toolkit admin --db PATH list-users
giftcard-toolkit admin --db PATH issue-cards --store GUID --count N --out stock.csv
giftcard-toolkit admin --db PATH stores
giftcard-toolkit console [--host 127.0.0.1] [--port 8866] [--demo [--sign-in]] [--audit-log PATH]
                         [--idle-minutes 15] [--token TOKEN | --no-token
                         [--i-know-this-is-unprotected]] [--certfile PEM --keyfile PEM]
giftcard-toolkit dashboard (--data PATH | --demo) [--host 127.0.0.1] [--port 8867] [--token T]
giftcard-toolkit bulk FILE [--dry-run] [--journal PATH] [--audit-log PATH] [--concurrency N]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import getpass
import os
import sqlite3
import sys
from collections.abc import Sequence
from datetime import date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from giftcard_toolkit import __version__
from giftcard_toolkit.server.seed import DEFAULT_AS_OF

if TYPE_CHECKING:
    from giftcard_toolkit.server.ledger import IssuedCard, Ledger


def _now(zone: tzinfo) -> datetime:
    """The moment ``serve --seed demo`` anchors its history to when no --as-of is given."""
    return datetime.now(zone)


_CARD_KEY_OFF = (
    "encrypted card data is off: no card key is set (GIFTCARD_CARD_KEY), so requests that "
    "name a card by 'encrypted' are declined with 100009; cards still work by token. To "
    "turn it on, make a key and give it to the server and to its POS clients:\n"
    "  export GIFTCARD_CARD_KEY=$(python3 -c "
    '"import base64, os; print(base64.b64encode(os.urandom(32)).decode())")'
)


def _serve(args: argparse.Namespace) -> int:
    from giftcard_toolkit.server import serve

    try:
        zone = ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise SystemExit(
            f"unknown time zone {args.tz!r}: use a name like America/New_York"
        ) from None
    if args.seed is None and not (args.db or "").startswith(("postgresql://", "postgres://")):
        db = Path(args.db or "giftcard.sqlite")
        if not db.exists():
            raise SystemExit(
                f"{db} does not exist, and nothing was created. Start your own server's "
                f"database with 'giftcard-toolkit admin --db {db} add-store --name NAME' "
                "(then add-user and issue-cards), or run the demo with "
                "'giftcard-toolkit serve --seed demo'"
            )
        if not os.environ.get("GIFTCARD_CARD_KEY"):
            print(_CARD_KEY_OFF, flush=True)
    # With no --as-of the demo's history runs up to now: yesterday's batches are the last
    # closed ones and today's trade, so far, is in the open ones.
    as_of = args.as_of if args.as_of is not None else _now(zone)
    from giftcard_toolkit.server.seed import DEMO, chain

    try:
        shape = chain(args.stores, args.days) if args.seed == "chain" else DEMO
    except ValueError as bad:
        raise SystemExit(f"--seed chain: {bad}") from None
    serve(
        host=args.host,
        port=args.port,
        db=args.db,
        seed=args.seed,
        seed_number=args.seed_number,
        card_stock=args.card_stock,
        as_of=as_of,
        tz=args.tz,
        log_level=args.log_level,
        max_body=args.max_body,
        certfile=args.certfile,
        keyfile=args.keyfile,
        shape=shape,
        workers=args.workers,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from giftcard_toolkit import demo

    print("running the notebooks against a seeded demo server...", flush=True)
    try:
        reports = demo.run(args.out)
    except (demo.NothingToRun, demo.CellFailed) as failed:
        raise SystemExit(f"error: {failed}") from None
    for report in reports:
        figures = f", {len(report.figures)} figure(s)" if report.figures else ""
        print(f"  {report.notebook:22} {report.seconds:5.1f} s  -> {report.html}{figures}")
    print("demo data:")
    for name, value in demo.summary().items():
        print(f"  {name:22} {value}")
    print(f"reports are in {Path(args.out).resolve()} (start with index.html)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from giftcard_toolkit import demo, reports

    given = dict(args.parameter)
    try:
        done = reports.run(args.notebook, given, args.out, use_demo=args.demo)
    except (reports.BadParameters, demo.NothingToRun, demo.CellFailed) as failed:
        raise SystemExit(f"error: {failed}") from None
    figures = f", {len(done.figures)} figure(s)" if done.figures else ""
    print(f"{done.notebook} ran in {done.seconds:.1f} s{figures}: {done.html.resolve()}")
    return 0


def _notebooks(args: argparse.Namespace) -> int:
    from giftcard_toolkit import demo

    try:
        copied = demo.copy_notebooks(args.dest)
    except (FileExistsError, demo.NothingToRun) as refused:
        raise SystemExit(f"error: {refused}") from None
    for path in copied:
        print(f"  {path}")
    print(f"{len(copied)} notebook(s) copied into {Path(args.dest).resolve()}")
    return 0


def _ledger(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from giftcard_toolkit.server import Ledger
    from giftcard_toolkit.server.ledger import DatabaseUnavailable, SchemaMismatch
    from giftcard_toolkit.server.ledger.postgres import is_postgres_url

    if is_postgres_url(args.db):
        where: str | Path = args.db
    else:
        where = Path(args.db)
        if not where.exists() and args.command != "add-store":
            raise SystemExit(f"{where} does not exist: start with 'admin --db {where} add-store'")
    try:
        return Ledger(where)
    except (DatabaseUnavailable, SchemaMismatch) as refused:
        raise SystemExit(f"{refused}; nothing was changed") from None


def _add_store(args: argparse.Namespace) -> int:
    from giftcard_toolkit.server.fields import text_problem

    for option, text, most in (("--name", args.name, 100), ("--address", args.address, 200)):
        problem = text_problem(text) or (
            f"must be at most {most} characters, got {len(text)}" if len(text) > most else None
        )
        if problem:
            raise SystemExit(f"{option} {problem}; nothing was changed")
    if not args.name.strip():
        raise SystemExit("--name must not be blank; nothing was changed")
    jurisdiction = _jurisdiction(args.jurisdiction)
    ledger = _ledger(args)
    try:
        store = ledger.add_store(args.name, args.address, args.id, jurisdiction)
    finally:
        ledger.close()
    where = f" in {store.jurisdiction}" if store.jurisdiction else ""
    print(f"store {store.id} {store.name!r}{where}")
    return 0


def _jurisdiction(text: str) -> str:
    """``--jurisdiction`` as stored (capitals), or a refusal that says what to give."""
    from giftcard_toolkit.rules import JURISDICTION, JURISDICTION_EXAMPLE

    code = text.strip().upper()
    if code and not JURISDICTION.match(code):
        raise SystemExit(
            f"--jurisdiction {text!r} is not an ISO 3166 code: give a country or a subdivision, "
            f"e.g. {JURISDICTION_EXAMPLE} or US-CA; nothing was changed"
        )
    return code


def _set_jurisdiction(args: argparse.Namespace) -> int:
    jurisdiction = _jurisdiction(args.jurisdiction)
    ledger = _ledger(args)
    try:
        store = ledger.set_jurisdiction(args.store.lower(), jurisdiction)
    except ValueError as refused:
        raise SystemExit(f"{refused}; nothing was changed") from None
    finally:
        ledger.close()
    print(f"store {store.id} {store.name!r} in {store.jurisdiction or '(no jurisdiction)'}")
    return 0


_NO_TERMINAL = (
    "there is no terminal to ask for the password on: pass it on standard input with "
    "--password-stdin, e.g. printf '%s\\n' \"$PASSWORD\" | giftcard-toolkit admin --db PATH "
    "add-user NAME --store STORE_ID --password-stdin; nothing was changed"
)


def _has_terminal() -> bool:
    """Whether getpass can ask: stdin is a terminal, or there is a controlling one."""
    if sys.stdin is not None and sys.stdin.isatty():
        return True
    try:
        with open("/dev/tty"):  # where getpass asks when stdin is redirected (POSIX)
            return True
    except OSError:
        return False


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        if not _has_terminal():
            raise SystemExit(_NO_TERMINAL)
        try:
            password = getpass.getpass("password: ")
            again = getpass.getpass("again: ")
        except EOFError:
            raise SystemExit(_NO_TERMINAL) from None
        if again != password:
            raise SystemExit("the two passwords differ; nothing was changed")
    if len(password) < 8:
        raise SystemExit("a password needs at least 8 characters; nothing was changed")
    return password


_ROLE_WORDS = "clerk (every endpoint: the default) or analyst (read only)"


def _max_amount(text: str | None) -> Decimal | None:
    """``--max-amount``: an amount, or ``none`` for no limit of the user's own."""
    from giftcard_toolkit.rules import is_money_amount

    if text is None or text.strip().lower() == "none":
        return None
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        amount = Decimal("NaN")
    if not is_money_amount(amount):
        raise SystemExit(
            f"--max-amount {text!r} must be a positive amount with at most 2 decimals, e.g. "
            "250.00, or none for no limit of the user's own; nothing was changed"
        )
    return amount


def _add_user(args: argparse.Namespace) -> int:
    from giftcard_toolkit.server import hash_password
    from giftcard_toolkit.server.ledger import ROLES

    if args.role is not None and args.role not in ROLES:
        raise SystemExit(
            f"unknown role {args.role!r}: the roles are {_ROLE_WORDS}; nothing was changed"
        )
    limit = _max_amount(args.max_amount)
    ledger = _ledger(args)
    try:
        stores = [s.lower() for s in args.store]
        unknown = [s for s in stores if ledger.store(s) is None]
        if unknown:
            raise SystemExit(f"unknown store id(s) {', '.join(unknown)}: see 'admin stores'")
        existing = ledger.user_record(args.username)  # a reset keeps what is not given
        role = args.role or (existing.role if existing else "clerk")
        if args.max_amount is None and existing is not None:
            limit = existing.max_amount
        password = hash_password(_read_password(args.password_stdin))
        ledger.put_user(args.username, password, stores, role=role, max_amount=limit)
    finally:
        ledger.close()
    own = f"up to {limit:,.2f} per sale, reload or redemption" if limit else "no limit of its own"
    print(f"user {args.username!r} ({role}, {own}) may act for {len(stores)} store(s)")
    return 0


def _list_users(args: argparse.Namespace) -> int:
    """Name, role, own limit and stores of every user: never a password hash."""
    ledger = _ledger(args)
    try:
        names = {s.id: s.name for s in ledger.stores()}
        for account in ledger.accounts():
            limit = "none" if account.max_amount is None else f"{account.max_amount:,.2f}"
            stores = ", ".join(names.get(s, s) for s in account.stores) or "(none)"
            print(f"{account.username}  role {account.role}  limit {limit}  stores: {stores}")
    finally:
        ledger.close()
    return 0


def _copy_from_sqlite(args: argparse.Namespace) -> int:
    """Move a server from SQLite to PostgreSQL: every row, in one transaction."""
    from giftcard_toolkit.server.ledger import DatabaseUnavailable, SchemaMismatch
    from giftcard_toolkit.server.ledger.postgres import copy_from_sqlite, is_postgres_url

    if not is_postgres_url(args.db):
        raise SystemExit(
            f"--db {args.db} is not a PostgreSQL url: give the target as "
            "--db postgresql://user@host/dbname; nothing was copied"
        )
    source = Path(args.source)
    if not source.is_file():
        raise SystemExit(f"{source} does not exist: give the SQLite file of the server")
    try:
        copied = copy_from_sqlite(source, args.db)
    except (DatabaseUnavailable, SchemaMismatch, ValueError) as refused:
        raise SystemExit(f"{refused}; nothing was copied") from None
    rows = ", ".join(f"{table} {count:,}" for table, count in copied.items() if table != "meta")
    print(f"copied {source} into PostgreSQL: {rows}")
    return 0


_NOT_ISSUED = "choose a writable path (no cards were issued)"


def _create_stock_file(out: Path) -> int:
    """Create ``out`` for writing, readable by its owner only from the start (0600), and
    refuse a file that exists; a clear SystemExit, not a traceback, when it cannot be."""
    try:
        if not out.parent.is_dir():
            out.parent.mkdir(parents=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        if exc.filename is not None and os.fspath(exc.filename) != os.fspath(out):
            raise SystemExit(
                f"cannot create {out}: {exc.filename} exists and is not a folder; {_NOT_ISSUED}"
            ) from None
        raise SystemExit(
            f"{out} exists; choose a new file (card numbers are shown only once)"
        ) from None
    except OSError as exc:
        raise SystemExit(f"cannot create {out}: {exc.strerror or exc}; {_NOT_ISSUED}") from None
    if hasattr(os, "fchmod"):  # POSIX: exactly 0600, whatever the umask took away
        with contextlib.suppress(OSError):  # if refused, the umask made it narrower still
            os.fchmod(fd, 0o600)
    return fd


def _fsync_folder(folder: Path) -> None:
    """Make a new file's directory entry durable too (POSIX; elsewhere nothing to do)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _card_in_ledger(ledger: Ledger, card: IssuedCard) -> bool:
    """Whether an issued card is in the database; True when that cannot be told."""
    try:
        with ledger.read() as conn:
            found = conn.execute(
                "SELECT 1 FROM cards WHERE lookup = ?", (ledger.card_lookup(card.number),)
            ).fetchone()
    except sqlite3.Error:
        return True
    return found is not None


def _issue_cards(args: argparse.Namespace) -> int:
    """New cards and their stock file, both or neither: the file is written and fsynced
    inside the transaction that adds the cards, before it commits."""
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new file (card numbers are shown only once)")
    if args.count < 1:
        raise SystemExit("--count must be at least 1; no cards were issued")
    store_id = args.store.lower()
    ledger = _ledger(args)
    try:
        if ledger.store(store_id) is None:
            raise SystemExit(f"unknown store id {args.store}: see 'admin stores'")
        handle = os.fdopen(_create_stock_file(out), "w", newline="", encoding="utf-8")
        delivered: list[IssuedCard] = []

        def deliver(cards: list[IssuedCard]) -> None:
            writer = csv.writer(handle)
            writer.writerow(["card_number", "security_code", "store_id"])
            writer.writerows((c.number, c.security_code, c.store_id) for c in cards)
            handle.flush()
            os.fsync(handle.fileno())
            _fsync_folder(out.parent)
            delivered.extend(cards)

        try:
            with handle:
                cards = ledger.issue_cards(store_id, args.count, deliver=deliver)
        except BaseException as exc:
            if delivered and _card_in_ledger(ledger, delivered[0]):
                # Committed after all (the failure came later): the file is their only copy.
                raise SystemExit(
                    f"{len(delivered)} cards were issued to store {args.store} and their "
                    f"numbers and codes are in {out}, but then: {type(exc).__name__}: {exc}"
                ) from exc
            out.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise SystemExit(
                    f"cannot write {out}: {exc.strerror or exc}; {_NOT_ISSUED}, "
                    f"and {out} was removed"
                ) from None
            if isinstance(exc, sqlite3.Error):
                raise SystemExit(
                    f"cannot issue cards in {args.db}: {exc}; no cards were issued and {out} "
                    "was removed; retry when the database is free"
                ) from None
            raise
    finally:
        ledger.close()
    print(f"{len(cards)} cards issued to store {args.store}; numbers and codes in {out}")
    return 0


def _stores(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    try:
        for store in ledger.stores():
            where = store.jurisdiction or "(no jurisdiction)"
            print(f"{store.id}  {store.name}  {store.address}  {where}")
    finally:
        ledger.close()
    return 0


def _bulk(args: argparse.Namespace) -> int:
    """Run (or dry-run) a bulk file against GIFTCARD_URL; the results go beside the file.
    Exit status: 0 when every row is (or would be) applied, 1 when any was declined, not
    sent or of unknown outcome, 2 when the file cannot be run."""
    from giftcard_toolkit import errors
    from giftcard_toolkit.client import GiftCardClient
    from giftcard_toolkit.ops import bulk

    try:
        client = GiftCardClient.from_env()
    except errors.ConfigurationError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        with client:
            results = bulk.run(
                client,
                args.file,
                journal=args.journal,
                concurrency=args.concurrency,
                dry_run=args.dry_run,
                audit_log=args.audit_log,
            )
    except bulk.BulkFileError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        raise SystemExit(f"error: cannot read {args.file}: {exc.strerror or exc}") from None
    except errors.GiftCardError as exc:
        raise SystemExit(f"error: {exc}") from None
    out = bulk.write_results(results, bulk.results_path(args.file, dry_run=args.dry_run))
    outcome = bulk.summary(results, dry_run=args.dry_run)
    failed = results.filter(~results["status"].is_in(bulk.APPLIED_STATUSES))
    for row in failed.head(20).iter_rows(named=True):
        code = f" {row['statuscode']}" if row["statuscode"] else ""
        print(
            f"  line {row['line']}: {row['operation']} {row['card']}: "
            f"{row['status']}{code}: {row['description']}"
        )
    if failed.height > 20:
        print(f"  ... and {failed.height - 20:,} more")
    print(f"results: {out}")
    return 0 if outcome.clean else 1


def _console(args: argparse.Namespace) -> int:
    from giftcard_toolkit import apps

    if args.card_stock and not args.demo:
        raise SystemExit("error: --card-stock goes with --demo (the demo's cards)")
    if args.idle_minutes <= 0:
        raise SystemExit("error: --idle-minutes must be above zero (default 15)")
    try:
        protection = apps.Protection.for_host(
            args.host,
            token=args.token,
            no_token=args.no_token,
            unprotected_ok=args.i_know_this_is_unprotected,
            certfile=args.certfile,
            keyfile=args.keyfile,
        )
    except ValueError as refused:
        raise SystemExit(f"error: {refused}") from None
    apps.serve_console(
        host=args.host,
        port=args.port,
        demo=args.demo,
        audit_log=args.audit_log,
        card_stock=args.card_stock,
        protection=protection,
        idle_minutes=args.idle_minutes,
        sign_in=args.sign_in,
    )
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from giftcard_toolkit import apps

    protection = apps.Protection.for_host(args.host, token=args.token)
    apps.serve_dashboard(
        data=args.data, demo=args.demo, host=args.host, port=args.port, protection=protection
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giftcard-toolkit", description="POSPointe GiftCard toolkit and embedded server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="group", required=True)

    serve = commands.add_parser("serve", help="run the GiftCard server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8800)
    serve.add_argument(
        "--db",
        help="SQLite file (default giftcard.sqlite, or giftcard-demo.sqlite with --seed demo), "
        "or a PostgreSQL url: postgresql://user@host:5432/dbname (password in PGPASSWORD or "
        "~/.pgpass)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes side by side (PostgreSQL only; default 1)",
    )
    serve.add_argument(
        "--seed",
        choices=["demo", "chain"],
        help="build (or reopen) the demo data set; 'chain': the same trade over --stores "
        "stores and --days days (for syncs and benchmarks at a chain's size)",
    )
    serve.add_argument("--stores", type=int, default=50, help="stores of --seed chain")
    serve.add_argument("--days", type=int, default=365, help="days of history of --seed chain")
    serve.add_argument("--seed-number", type=int, default=0)
    serve.add_argument("--card-stock", help="write the demo card stock CSV here")
    serve.add_argument(
        "--as-of",
        type=date.fromisoformat,
        help="the demo history's anchor date (YYYY-MM-DD; default today, its trade so far; "
        f"the notebooks and tests use {DEFAULT_AS_OF})",
    )
    serve.add_argument("--tz", default="UTC", help="the server's time zone, e.g. America/New_York")
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--max-body",
        type=int,
        default=64 * 1024,
        help="the largest request body read, in bytes (65536); a larger one is answered 413",
    )
    serve.add_argument("--certfile", help="serve HTTPS: the certificate chain (PEM)")
    serve.add_argument("--keyfile", help="its private key (PEM), unless in --certfile")
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo", help="run every notebook against a seeded demo server and write reports"
    )
    demo.add_argument("--out", default="reports", help="folder for the HTML and PNG reports")
    demo.set_defaults(func=_demo)

    report = commands.add_parser(
        "report",
        help="run one notebook with parameters (a store, a day, a month) and write its HTML",
        description="Run NOTEBOOK (a .ipynb file, or a shipped one by name or number, e.g. 04) "
        "with parameters, against GIFTCARD_URL or the demo server (--demo), and write it as "
        "HTML with its figures. Parameters are checked before anything runs.",
    )
    report.add_argument(
        "notebook", help="a .ipynb file, or a shipped notebook: 04, 04-reconciliation"
    )
    report.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter of the notebook, e.g. -p store 'Riverside Mall' -p day 2026-09-29",
    )
    report.add_argument("--out", default="reports", help="folder for the HTML and PNG files")
    report.add_argument("--demo", action="store_true", help="run against a seeded demo server")
    report.set_defaults(func=_report)

    notebooks = commands.add_parser(
        "notebooks", help="copy the shipped notebooks into a folder, to start your own from"
    )
    notebooks.add_argument("dest", help="the folder to copy them into (made if missing)")
    notebooks.set_defaults(func=_notebooks)

    admin = commands.add_parser("admin", help="manage stores, users and card stock")
    admin.add_argument(
        "--db",
        default="giftcard.sqlite",
        help="the server's SQLite file, or its PostgreSQL url (postgresql://user@host/dbname)",
    )
    actions = admin.add_subparsers(dest="command", required=True)
    store = actions.add_parser("add-store", help="add a store")
    store.add_argument("--name", required=True)
    store.add_argument("--address", default="")
    store.add_argument("--id", help="its GUID (default: a new one)")
    store.add_argument(
        "--jurisdiction",
        default="",
        help="where it trades, an ISO 3166 code such as US-NY (for unclaimed-property rules)",
    )
    store.set_defaults(func=_add_store)
    place = actions.add_parser("set-jurisdiction", help="say where an existing store trades")
    place.add_argument("--store", required=True, help="the store's GUID")
    place.add_argument("--jurisdiction", required=True, help="an ISO 3166 code such as US-NY")
    place.set_defaults(func=_set_jurisdiction)
    user = actions.add_parser("add-user", help="add a user (or reset its password and stores)")
    user.add_argument("username")
    user.add_argument("--store", action="append", required=True, help="a store it may act for")
    user.add_argument("--role", help=f"{_ROLE_WORDS}; a reset keeps the user's role unless given")
    user.add_argument(
        "--max-amount",
        metavar="AMOUNT",
        help="its own limit per sale, reload or redemption (e.g. 250.00; 'none': only the "
        "server's limits); a reset keeps the user's limit unless given",
    )
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of prompting",
    )
    user.set_defaults(func=_add_user)
    users = actions.add_parser("list-users", help="list the users: role, limit, stores")
    users.set_defaults(func=_list_users)
    issue = actions.add_parser("issue-cards", help="create new cards in a store's stock")
    issue.add_argument("--store", required=True)
    issue.add_argument("--count", type=int, required=True)
    issue.add_argument("--out", required=True, help="CSV file for the new numbers and codes")
    issue.set_defaults(func=_issue_cards)
    listing = actions.add_parser("stores", help="list the stores")
    listing.set_defaults(func=_stores)
    move = actions.add_parser(
        "copy-from-sqlite",
        help="copy a SQLite server's whole ledger into the empty PostgreSQL database of --db",
    )
    move.add_argument("source", help="the SQLite file (stop its server first)")
    move.set_defaults(func=_copy_from_sqlite)

    console = commands.add_parser(
        "console",
        help="serve the ops console as a web page (Voilà), until Ctrl-C",
        description="Serve the ops console as a web page for the server at GIFTCARD_URL. "
        "Without GIFTCARD_USERNAME/GIFTCARD_PASSWORD every visitor signs in as themselves; "
        "with them the page is signed in as that user. Passwords stay on this machine; "
        "--demo starts the seeded demo server (signed in as 'demo', or --sign-in). Beyond "
        "loopback (--host) the page needs its token (printed in its URL).",
    )
    console.add_argument("--host", default="127.0.0.1")
    console.add_argument("--port", type=int, default=8866)
    console.add_argument("--demo", action="store_true", help="on a seeded demo server")
    console.add_argument(
        "--audit-log", default="audit.jsonl", help="every action is appended here (audit.jsonl)"
    )
    console.add_argument("--card-stock", help="with --demo: write the demo's cards to this CSV")
    console.add_argument(
        "--sign-in",
        action="store_true",
        help="with --demo: every visitor signs in (demo users demo, clerk, analyst)",
    )
    console.add_argument(
        "--idle-minutes",
        type=float,
        default=15.0,
        help="a signed-in page idle this long signs out (default 15)",
    )
    console.add_argument(
        "--token",
        help="the page's access token (default: one is made when --host is not loopback)",
    )
    console.add_argument(
        "--no-token",
        action="store_true",
        help="serve without a token; beyond loopback also needs --i-know-this-is-unprotected",
    )
    console.add_argument(
        "--i-know-this-is-unprotected",
        action="store_true",
        help="with --no-token: serve on a non-loopback address anyway (behind your own proxy)",
    )
    console.add_argument("--certfile", help="TLS certificate (PEM): serve over https")
    console.add_argument("--keyfile", help="TLS private key (PEM), with --certfile")
    console.set_defaults(func=_console)

    dashboard = commands.add_parser(
        "dashboard",
        help="serve the analysts' explorer as a read-only web page (Voilà), until Ctrl-C",
        description="Serve the explorer (stores, dates, measure, grain) over a dataset "
        "written by frames.sync as a read-only page. --demo syncs the seeded demo server's "
        "history into a temporary dataset. Beyond loopback (--host) the page needs its token "
        "(printed in its URL).",
    )
    source = dashboard.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="the dataset folder (written by frames.sync)")
    source.add_argument("--demo", action="store_true", help="on the seeded demo history")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8867)
    dashboard.add_argument("--token", help="the page's access token (default: made off loopback)")
    dashboard.set_defaults(func=_dashboard)

    fixes = commands.add_parser(
        "bulk",
        help="apply a bulk fix file (CSV) against GIFTCARD_URL as GIFTCARD_USERNAME",
        description="Apply a bulk fix file against GIFTCARD_URL (GIFTCARD_USERNAME, "
        "GIFTCARD_PASSWORD); the results are written beside it as FILE.results.csv "
        "(FILE.dry-run.csv). Exit status 1 when any row was declined or not sent.",
    )
    fixes.add_argument("file", help="the CSV file (as Excel or Google Sheets save it)")
    fixes.add_argument(
        "--dry-run", action="store_true", help="check and predict every row; change nothing"
    )
    fixes.add_argument("--journal", help="the run's journal (default FILE.journal)")
    fixes.add_argument("--audit-log", help="append every attempted operation to this log")
    fixes.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    fixes.set_defaults(func=_bulk)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
