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
* each row's ``Idempotency-Key`` comes from that row alone (its content and its place
  among identical rows), keyed by the user's credentials so it reveals nothing of the
  card: editing one row changes no other row's key, and a row sent twice, by any run on
  any machine within the server's 24 hours, is applied once;
* a journal beside the file (JSON Lines, fsynced, mode 0600, cards masked) records each
  row before it is sent and its outcome once that is definite (approved, partially
  approved, declined, refused); a row whose answer was lost (a timeout, a dropped
  connection, a 5xx, a 409) is sent again by the next run **with the same key**, and the
  result says when the server answered it as a replay of the earlier attempt;
* a row sent earlier whose outcome is unknown must not change: if it did, the run is
  refused, naming it, with the advice to restore it (which can apply nothing twice);
* ``dry_run=True`` validates and checks every card (a balance check) without moving money.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from giftcard_toolkit import _protocol, errors
from giftcard_toolkit.cards import Card, card_number_problem, security_code_problem
from giftcard_toolkit.frames import MONEY
from giftcard_toolkit.ops import operations
from giftcard_toolkit.ops.audit import AuditLog
from giftcard_toolkit.rules import GUID, GUID_EXAMPLE

COLUMNS = ["operation", "card_number", "security_code", "amount", "store_id", "reason", "pos_ref"]
MONEY_OPERATIONS = set(operations.MONEY_OPERATIONS)
STATUS_OPERATIONS = set(operations.STATUS_OPERATIONS)
OPERATIONS = set(operations.OPERATIONS)
_RESULT_COLUMNS: dict[str, Any] = {
    "line": pl.Int64,
    "operation": pl.String,
    "card": pl.String,
    "status": pl.String,
    "statuscode": pl.String,
    "description": pl.String,
    "host_ref": pl.String,
    "new_balance": MONEY,
    "replayed": pl.Boolean,
    "idempotency_key": pl.String,
}
RESULT_SCHEMA = pl.Schema(_RESULT_COLUMNS)


class BulkFileError(errors.InvalidInput):
    """The file cannot be run; ``problems`` lists (line, why) for every bad row."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "\n".join(f"  line {line}: {why}" for line, why in problems)
        super().__init__(f"{len(problems)} problem(s); nothing was sent:\n{shown}")


@dataclass(frozen=True, repr=False)
class Fix:
    """One validated row, and the Idempotency-Key that is its own."""

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

    def as_operation(self, dry_run: bool = False) -> operations.Operation:
        return operations.Operation(
            "balance" if dry_run else self.operation,
            self.card,
            amount=self.amount,
            store=self.store_id,
            reason=self.reason,
            pos_ref=self.pos_ref,
            key=self.key,
        )


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
        if not GUID.match(row["store_id"].strip()):
            why.append(f"store_id must be the store's GUID, e.g. {GUID_EXAMPLE}")
    if operation in STATUS_OPERATIONS and not row["reason"].strip():
        why.append("reason is required to block or unblock")
    return why, amount


def _random_keys() -> Callable[[str], str]:
    secret = secrets.token_bytes(32)
    return lambda material: hmac.new(secret, material.encode(), hashlib.sha256).hexdigest()


def validate(
    path: str | Path, needs_code: bool = True, derive_key: Callable[[str], str] | None = None
) -> list[Fix]:
    """Every row of the file, checked; raises :class:`BulkFileError` naming all bad rows.

    ``derive_key`` turns a row's content into its Idempotency-Key (``run`` passes the
    client's, stable across runs); by default keys are good for this validation only.
    """
    derive = derive_key or _random_keys()
    content = Path(path).read_bytes()
    reader = csv.DictReader(io.StringIO(content.decode("utf-8-sig")))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise BulkFileError(
            [(1, f"missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")]
        )
    fixes: list[Fix] = []
    problems: list[tuple[int, str]] = []
    seen: Counter[str] = Counter()
    for index, raw in enumerate(reader):
        line = index + 2  # the header is line 1
        row = {c: (raw.get(c) or "") for c in COLUMNS}
        why, amount = _problems(row, needs_code)
        if why:
            problems.append((line, "; ".join(why)))
            continue
        operation = row["operation"].strip().lower()
        card = Card(row["card_number"].strip(), row["security_code"].strip() or None)
        store_id = row["store_id"].strip().lower() or None
        reason = row["reason"].strip() or None
        pos_ref = row["pos_ref"].strip() or None
        # The row alone decides its key: what it does, and which of identical rows it is.
        material = json.dumps(
            [operation, card.number, str(amount), store_id, reason, pos_ref], separators=(",", ":")
        )
        occurrence = seen[material]
        seen[material] += 1
        key = "bulk-" + derive(f"{material}#{occurrence}")[:40]
        fixes.append(Fix(line, operation, card, amount, store_id, reason, pos_ref, key))
    if problems:
        raise BulkFileError(problems)
    if not fixes:
        raise BulkFileError([(2, "the file has no rows")])
    return fixes


def _result(fix: Fix, outcome: operations.Outcome, dry_run: bool) -> dict[str, Any]:
    status = "checked" if dry_run and outcome.status == "approved" else outcome.status
    return {
        "line": fix.line,
        "operation": fix.operation,
        "card": fix.card.masked,
        "status": status,
        "statuscode": outcome.statuscode,
        "description": outcome.description,
        "host_ref": outcome.host_ref,
        "new_balance": None if outcome.balance is None else str(outcome.balance),
        "replayed": outcome.replayed,
        "idempotency_key": fix.key,
    }


class _Journal:
    """Each row before it is sent (``sending``) and its outcome once definite (``done``),
    one fsynced JSON line each; cards masked, file mode 0600."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.sent: dict[str, dict[str, Any]] = {}
        self.done: dict[str, dict[str, Any]] = {}
        if path is None or not path.exists():
            return
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
                key = entry["idempotency_key"]
            except (ValueError, KeyError, TypeError):
                raise BulkFileError(
                    [
                        (
                            0,
                            f"journal {path} line {number} cannot be read; it was not written by "
                            "this toolkit, or was cut off: move it aside only if no run of this "
                            "file was ever interrupted",
                        )
                    ]
                ) from None
            if entry.get("event") == "sending":
                self.sent[key] = entry
            else:  # "done" (or a journal from before events were written)
                self.done[key] = entry

    def unknown(self) -> dict[str, dict[str, Any]]:
        """Rows sent whose outcome was never learnt: they may have been applied."""
        return {k: e for k, e in self.sent.items() if k not in self.done}

    def add(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_unchanged(book: _Journal, fixes: list[Fix]) -> None:
    """Refuse a file whose rows of unknown outcome changed since they were sent."""
    keys = {f.key for f in fixes}
    changed = [e for k, e in book.unknown().items() if k not in keys]
    if changed:
        raise BulkFileError(
            [
                (
                    int(e["line"]),
                    f"{e['operation']} {e['card']}"
                    + (f" {e['amount']}" if e.get("amount") else "")
                    + " was sent by an earlier run and its outcome is unknown (it may have "
                    "been applied); this row has changed or gone since. Restore it as it "
                    "was and run again: it is then answered, never applied twice",
                )
                for e in sorted(changed, key=lambda e: int(e["line"]))
            ]
        )


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
    runs): rows with a definite outcome are not sent again; rows whose answer was lost are
    sent again under the same key (``replayed`` is then true if the earlier attempt had
    been applied). At most ``concurrency`` requests are in flight. Every attempted
    operation is written to ``audit_log`` when one is given.
    """
    path = Path(path)
    needs_code = getattr(client, "_cipher", None) is None
    fixes = validate(path, needs_code=needs_code, derive_key=client.derived_key)
    journal_path = None if dry_run else Path(journal or f"{path}.journal")
    book = _Journal(journal_path)
    _check_unchanged(book, fixes)
    log = audit_log if isinstance(audit_log, AuditLog) or audit_log is None else AuditLog(audit_log)
    user = getattr(client, "username", "?")
    pending = [f for f in fixes if f.key not in book.done]
    results: dict[str, dict[str, Any]] = {
        k: {**{c: e.get(c) for c in _RESULT_COLUMNS}, "replayed": bool(e.get("replayed"))}
        for k, e in book.done.items()
    }

    def attempt(fix: Fix) -> dict[str, Any]:
        if not dry_run and fix.operation != "balance":
            book.add(
                {
                    "event": "sending",
                    "line": fix.line,
                    "operation": fix.operation,
                    "card": fix.card.masked,
                    "amount": None if fix.amount is None else str(fix.amount),
                    "idempotency_key": fix.key,
                }
            )
        outcome = operations.apply(client, fix.as_operation(dry_run))
        entry = _result(fix, outcome, dry_run)
        if outcome.definite and not dry_run:
            book.add({"event": "done", **entry})
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
        return entry

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
        futures = {pool.submit(attempt, fix): fix for fix in pending}
        try:
            for future in as_completed(futures):
                results[futures[future].key] = future.result()
                shown.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    rows = [results[f.key] for f in fixes]
    as_text = {**_RESULT_COLUMNS, "new_balance": pl.String}
    return pl.DataFrame(rows, schema=as_text).with_columns(pl.col("new_balance").cast(MONEY))
