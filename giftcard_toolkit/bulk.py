"""Bulk card fixes from a CSV file: checked whole first, applied exactly once, resumable.

The file has a header and these columns (``security_code``, ``amount``, ``store_id``,
``reason`` and ``pos_ref`` may be empty where the operation does not need them)::

    operation,card_number,security_code,amount,store_id,reason,pos_ref
    sell,6006 4912 3456 7897,1234,25.00,3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f,,lane 2
    block,6006491234567897,1234,,,card reported lost,

Operations: ``balance``, ``sell``, ``reload``, ``redeem``, ``block``, ``unblock``.

How a run stays safe:

* the whole file is validated before anything is sent, and every bad row is reported
  (``BulkFileError``, with its line number and why);
* each row gets a deterministic ``Idempotency-Key`` (a hash of the file's content and the
  row's line), so a row sent twice is applied once;
* a journal (JSON Lines, fsynced) records each finished row; a run started again after a
  crash or Ctrl-C skips the journalled rows and re-sends the rest with the same keys;
* ``dry_run=True`` validates and checks every card (a balance check) without moving money.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from giftcard_toolkit import _protocol, errors, models
from giftcard_toolkit.audit import AuditLog
from giftcard_toolkit.cards import Card, card_number_problem, security_code_problem
from giftcard_toolkit.frames import MONEY

COLUMNS = ["operation", "card_number", "security_code", "amount", "store_id", "reason", "pos_ref"]
MONEY_OPERATIONS = {"sell", "reload", "redeem"}
STATUS_OPERATIONS = {"block", "unblock"}
OPERATIONS = {"balance"} | MONEY_OPERATIONS | STATUS_OPERATIONS
_GUID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
_RESULT_COLUMNS: dict[str, Any] = {
    "line": pl.Int64,
    "operation": pl.String,
    "card": pl.String,
    "status": pl.String,
    "statuscode": pl.String,
    "description": pl.String,
    "host_ref": pl.String,
    "new_balance": MONEY,
    "idempotency_key": pl.String,
}
RESULT_SCHEMA = pl.Schema(_RESULT_COLUMNS)


class BulkFileError(errors.InvalidInput):
    """The file cannot be run; ``problems`` lists (line, why) for every bad row."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "\n".join(f"  line {line}: {why}" for line, why in problems)
        super().__init__(f"{len(problems)} bad row(s); nothing was sent:\n{shown}")


@dataclass(frozen=True, repr=False)
class Fix:
    """One validated row."""

    line: int
    operation: str
    card: Card
    amount: Decimal | None
    store_id: str | None
    reason: str | None
    pos_ref: str | None
    key: str

    def __repr__(self) -> str:
        return f"Fix(line={self.line}, {self.operation} {self.card.masked})"


def _problems(row: dict[str, str], needs_code: bool) -> tuple[list[str], Decimal | None]:
    why: list[str] = []
    operation = row["operation"].strip().lower()
    if operation not in OPERATIONS:
        why.append(f"operation {row['operation']!r} is not one of {', '.join(sorted(OPERATIONS))}")
    problem = card_number_problem(row["card_number"].strip())
    if problem:
        why.append(f"card_number {problem}")
    code = row["security_code"].strip()
    if code:
        problem = security_code_problem(code)
        if problem:
            why.append(f"security_code {problem}")
    elif needs_code:
        why.append("security_code is empty (and no card key is configured to send it encrypted)")
    amount = None
    if operation in MONEY_OPERATIONS:
        amount = _protocol.entered_amount(row["amount"])
        if amount is None:
            why.append(
                f"amount {row['amount'].strip()!r} must be above zero with at most 2 decimals"
            )
        if not _GUID.match(row["store_id"].strip()):
            why.append("store_id must be the store's GUID")
    if operation in STATUS_OPERATIONS and not row["reason"].strip():
        why.append("reason is required to block or unblock")
    return why, amount


def validate(path: str | Path, needs_code: bool = True) -> list[Fix]:
    """Every row of the file, checked; raises :class:`BulkFileError` naming all bad rows."""
    content = Path(path).read_bytes()
    digest = hashlib.sha256(content).hexdigest()[:24]
    reader = csv.DictReader(io.StringIO(content.decode("utf-8-sig")))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise BulkFileError(
            [(1, f"missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")]
        )
    fixes: list[Fix] = []
    problems: list[tuple[int, str]] = []
    for index, raw in enumerate(reader):
        line = index + 2  # the header is line 1
        row = {c: (raw.get(c) or "") for c in COLUMNS}
        why, amount = _problems(row, needs_code)
        if why:
            problems.append((line, "; ".join(why)))
            continue
        code = row["security_code"].strip() or None
        fixes.append(
            Fix(
                line=line,
                operation=row["operation"].strip().lower(),
                card=Card(row["card_number"].strip(), code),
                amount=amount,
                store_id=row["store_id"].strip().lower() or None,
                reason=row["reason"].strip() or None,
                pos_ref=row["pos_ref"].strip() or None,
                key=f"bulk-{digest}-{line}",
            )
        )
    if problems:
        raise BulkFileError(problems)
    if not fixes:
        raise BulkFileError([(2, "the file has no rows")])
    return fixes


def _result(
    fix: Fix,
    status: str,
    *,
    statuscode: str | None = None,
    description: str | None = None,
    host_ref: str | None = None,
    new_balance: Decimal | None = None,
) -> dict[str, Any]:
    return {
        "line": fix.line,
        "operation": fix.operation,
        "card": fix.card.masked,
        "status": status,
        "statuscode": statuscode,
        "description": description,
        "host_ref": host_ref,
        "new_balance": None if new_balance is None else str(new_balance),
        "idempotency_key": fix.key,
    }


def _apply(client: Any, fix: Fix, dry_run: bool) -> dict[str, Any]:
    """Send one fix; its result (a decline or an error is a result too)."""
    try:
        if dry_run or fix.operation == "balance":
            balance: models.Balance = client.balance(fix.card)
            status = "checked" if dry_run else "approved"
            return _result(fix, status, statuscode="000000", new_balance=balance.balance)
        if fix.operation in ("sell", "reload"):
            send = client.sell if fix.operation == "sell" else client.reload
            load: models.Load = send(
                fix.card, fix.amount, fix.store_id, pos_ref=fix.pos_ref, idempotency_key=fix.key
            )
            return _result(
                fix,
                "approved",
                statuscode="000000",
                host_ref=load.host_ref,
                new_balance=load.balance,
            )
        if fix.operation == "redeem":
            redemption: models.Redemption = client.redeem(
                fix.card, fix.amount, fix.store_id, pos_ref=fix.pos_ref, idempotency_key=fix.key
            )
            return _result(
                fix,
                "partial" if redemption.partial else "approved",
                statuscode="000001" if redemption.partial else "000000",
                host_ref=redemption.host_ref,
                new_balance=redemption.new_balance,
            )
        change: models.StatusChange = client.change_status(
            fix.card, fix.operation == "unblock", fix.reason or "", idempotency_key=fix.key
        )
        return _result(fix, "approved", statuscode="000000", new_balance=change.balance)
    except errors.Declined as declined:
        return _result(
            fix, "declined", statuscode=declined.statuscode, description=declined.description
        )
    except errors.RequestRejected as rejected:
        return _result(fix, "rejected", description=str(rejected))
    except errors.GiftCardError as failed:
        return _result(fix, "error", description=str(failed))


class _Journal:
    """Finished rows, one fsynced JSON line each, tied to the file they came from."""

    def __init__(self, path: Path | None, keys: set[str]) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        if path is None or not path.exists():
            return
        for text in path.read_text().splitlines():
            if not text.strip():
                continue
            entry = json.loads(text)
            if entry["idempotency_key"] not in keys:
                raise BulkFileError(
                    [
                        (
                            0,
                            f"journal {path} belongs to another file (or an "
                            "edited one): use a new journal",
                        )
                    ]
                )
            self.done[entry["idempotency_key"]] = entry

    def add(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def run(
    client: Any,
    path: str | Path,
    journal: str | Path | None = None,
    concurrency: int = 8,
    dry_run: bool = False,
    audit_log: str | Path | AuditLog | None = None,
    progress: bool = True,
) -> pl.DataFrame:
    """Apply every row of ``path`` through ``client`` (a ``GiftCardClient``); one result
    row per input row, in file order.

    ``journal`` makes the run resumable (default: ``<file>.journal`` beside it, not for dry
    runs). At most ``concurrency`` requests are in flight. Every attempted operation is
    written to ``audit_log`` when one is given.
    """
    path = Path(path)
    needs_code = getattr(client, "_cipher", None) is None
    fixes = validate(path, needs_code=needs_code)
    journal_path = None if dry_run else Path(journal or f"{path}.journal")
    book = _Journal(journal_path, {f.key for f in fixes})
    log = audit_log if isinstance(audit_log, AuditLog) or audit_log is None else AuditLog(audit_log)
    user = getattr(client, "username", "?")
    pending = [f for f in fixes if f.key not in book.done]
    results: dict[str, dict[str, Any]] = dict(book.done)

    def finish(fix: Fix, entry: dict[str, Any]) -> None:
        results[fix.key] = entry
        if not dry_run:
            book.add(entry)
        if log is not None:
            log.record(
                user=user,
                operation=f"bulk {fix.operation}",
                outcome="approved" if entry["status"] == "checked" else entry["status"],
                card=fix.card,
                amount=fix.amount,
                store_id=fix.store_id,
                host_ref=entry["host_ref"],
                statuscode=entry["statuscode"],
                description=entry["description"],
                idempotency_key=fix.key,
            )

    with (
        tqdm(
            total=len(fixes),
            initial=len(fixes) - len(pending),
            unit="row",
            desc="dry run" if dry_run else "bulk",
            disable=not progress,
        ) as shown,
        ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool,
    ):
        futures = {pool.submit(_apply, client, fix, dry_run): fix for fix in pending}
        try:
            for future in as_completed(futures):
                finish(futures[future], future.result())
                shown.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    rows = [results[f.key] for f in fixes]
    as_text = {**_RESULT_COLUMNS, "new_balance": pl.String}
    return pl.DataFrame(rows, schema=as_text).with_columns(pl.col("new_balance").cast(MONEY))
