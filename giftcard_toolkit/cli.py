"""The ``giftcard-toolkit`` console script: each command a thin layer over a Python function.

giftcard-toolkit serve [--host 127.0.0.1] [--port 8800] [--db PATH] [--seed demo]
                       [--seed-number N] [--card-stock PATH] [--as-of DATE] [--tz ZONE]
giftcard-toolkit admin --db PATH add-store --name NAME [--address TEXT] [--id GUID]
giftcard-toolkit admin --db PATH add-user NAME --store GUID [--store GUID ...]
                                          [--password-stdin]
giftcard-toolkit admin --db PATH issue-cards --store GUID --count N --out stock.csv
giftcard-toolkit admin --db PATH stores
"""

from __future__ import annotations

import argparse
import csv
import getpass
import logging
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from giftcard_toolkit.server.seed import DEFAULT_AS_OF


def _serve(args: argparse.Namespace) -> int:
    from giftcard_toolkit.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The access log writes a line per request: skip what the format does not show
    # (the logging HOWTO's "Optimization" advice), a tenth of a balance check's time.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    serve(
        host=args.host,
        port=args.port,
        db=args.db,
        seed=args.seed,
        seed_number=args.seed_number,
        card_stock=args.card_stock,
        as_of=args.as_of,
        tz=args.tz,
        log_level=args.log_level,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from giftcard_toolkit import demo

    print("running the notebooks against a seeded demo server...", flush=True)
    reports = demo.run(args.out)
    for report in reports:
        figures = f", {len(report.figures)} figure(s)" if report.figures else ""
        print(f"  {report.notebook:22} {report.seconds:5.1f} s  -> {report.html}{figures}")
    print("demo data:")
    for name, value in demo.summary().items():
        print(f"  {name:22} {value}")
    print(f"reports are in {Path(args.out).resolve()}")
    return 0


def _ledger(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from giftcard_toolkit.server import Ledger

    path = Path(args.db)
    if not path.exists() and args.command != "add-store":
        raise SystemExit(f"{path} does not exist: start with 'admin --db {path} add-store'")
    return Ledger(path)


def _add_store(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    try:
        store = ledger.add_store(args.name, args.address, args.id)
    finally:
        ledger.close()
    print(f"store {store.id} {store.name!r}")
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("the two passwords differ; nothing was changed")
    if len(password) < 8:
        raise SystemExit("a password needs at least 8 characters; nothing was changed")
    return password


def _add_user(args: argparse.Namespace) -> int:
    from giftcard_toolkit.server import hash_password

    ledger = _ledger(args)
    try:
        stores = [s.lower() for s in args.store]
        unknown = [s for s in stores if ledger.store(s) is None]
        if unknown:
            raise SystemExit(f"unknown store id(s) {', '.join(unknown)}: see 'admin stores'")
        ledger.put_user(args.username, hash_password(_read_password(args.password_stdin)), stores)
    finally:
        ledger.close()
    print(f"user {args.username!r} may act for {len(stores)} store(s)")
    return 0


def _issue_cards(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new file (card numbers are shown only once)")
    ledger = _ledger(args)
    try:
        if ledger.store(args.store.lower()) is None:
            raise SystemExit(f"unknown store id {args.store}: see 'admin stores'")
        cards = ledger.issue_cards(args.store.lower(), args.count)
    finally:
        ledger.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["card_number", "security_code", "store_id"])
        writer.writerows((c.number, c.security_code, c.store_id) for c in cards)
    out.chmod(0o600)
    print(f"{len(cards)} cards issued to store {args.store}; numbers and codes in {out}")
    return 0


def _stores(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    try:
        for store in ledger.stores():
            print(f"{store.id}  {store.name}  {store.address}")
    finally:
        ledger.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giftcard-toolkit", description="POSPointe GiftCard toolkit and embedded server."
    )
    commands = parser.add_subparsers(dest="group", required=True)

    serve = commands.add_parser("serve", help="run the GiftCard server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8800)
    serve.add_argument(
        "--db",
        help="SQLite file (default giftcard.sqlite, or giftcard-demo.sqlite with --seed demo)",
    )
    serve.add_argument("--seed", choices=["demo"], help="build (or reopen) the demo data set")
    serve.add_argument("--seed-number", type=int, default=0)
    serve.add_argument("--card-stock", help="write the demo card stock CSV here")
    serve.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=DEFAULT_AS_OF,
        help="the demo history's anchor date (YYYY-MM-DD)",
    )
    serve.add_argument("--tz", default="UTC", help="the server's time zone, e.g. America/New_York")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo", help="run every notebook against a seeded demo server and write reports"
    )
    demo.add_argument("--out", default="reports", help="folder for the HTML and PNG reports")
    demo.set_defaults(func=_demo)

    admin = commands.add_parser("admin", help="manage stores, users and card stock")
    admin.add_argument("--db", default="giftcard.sqlite", help="SQLite file of the server")
    actions = admin.add_subparsers(dest="command", required=True)
    store = actions.add_parser("add-store", help="add a store")
    store.add_argument("--name", required=True)
    store.add_argument("--address", default="")
    store.add_argument("--id", help="its GUID (default: a new one)")
    store.set_defaults(func=_add_store)
    user = actions.add_parser("add-user", help="add a user (or reset its password and stores)")
    user.add_argument("username")
    user.add_argument("--store", action="append", required=True, help="a store it may act for")
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of prompting",
    )
    user.set_defaults(func=_add_user)
    issue = actions.add_parser("issue-cards", help="create new cards in a store's stock")
    issue.add_argument("--store", required=True)
    issue.add_argument("--count", type=int, required=True)
    issue.add_argument("--out", required=True, help="CSV file for the new numbers and codes")
    issue.set_defaults(func=_issue_cards)
    listing = actions.add_parser("stores", help="list the stores")
    listing.set_defaults(func=_stores)
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
