"""The audit log: one JSON line per attempted operation, appended and fsynced, readable as a
polars frame.

Ops' forms and bulk runs write here (issue 5 builds them); anyone can read it back with
:func:`read`. A record holds when, who (``user``: the person signed in, and
``approved_by``: the supervisor whose approval sent it, when it was above the user's own
limit), what, which card (masked, and its ``cardref`` when known), how much, where, the
server's ``hostRef``, the outcome and status code, and the ``Idempotency-Key`` that makes a
retry safe. Never a full card number, security code or password: cards are masked on the
way in, and every text field is scrubbed of anything that looks like a card number as a
last line of defence. Logs written before a column existed read back with it empty.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from giftcard_toolkit.analysis.frames import MONEY, TIME
from giftcard_toolkit.cards import CARD_LIKE, Card, mask, scrub

OUTCOMES = ("approved", "partial", "declined", "rejected", "error")
_AUDIT_COLUMNS: dict[str, Any] = {
    "at": TIME,
    "user": pl.String,
    "approved_by": pl.String,  # the approver, when the amount was above the user's limit
    "operation": pl.String,
    "card": pl.String,
    "card_ref": pl.String,
    "amount": MONEY,
    "store_id": pl.String,
    "host_ref": pl.String,
    "outcome": pl.Enum(list(OUTCOMES)),
    "statuscode": pl.String,
    "description": pl.String,
    "idempotency_key": pl.String,
    "case_id": pl.String,  # the card case (ops.cases) a step belongs to
}
AUDIT_SCHEMA = pl.Schema(_AUDIT_COLUMNS)


def _card_text(card: Card | str | None) -> str | None:
    if card is None:
        return None
    if isinstance(card, Card):
        return card.masked
    return mask(re.sub(r"[ -]", "", card)) if CARD_LIKE.fullmatch(card) else scrub(card)


@dataclass
class AuditLog:
    """An append-only audit log at ``path`` (JSON Lines). Safe to share between threads;
    each record is one ``write`` of a whole line on an ``O_APPEND`` file, then fsynced."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, log: str | Path | AuditLog | None) -> AuditLog | None:
        """``log`` as an AuditLog: a path opens one, a log or None is taken as it is."""
        return log if isinstance(log, AuditLog) or log is None else cls(log)

    def record(
        self,
        *,
        user: str,
        operation: str,
        outcome: str,
        card: Card | str | None = None,
        card_ref: str | None = None,
        amount: Decimal | int | str | None = None,
        store_id: str | None = None,
        host_ref: str | None = None,
        statuscode: str | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
        case_id: str | None = None,
        approved_by: str | None = None,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """Append one record; answers it as written (money as an exact decimal string)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        if isinstance(amount, float):
            raise TypeError("amount must be exact (Decimal, int or str), not a float")
        entry: dict[str, Any] = {
            "at": (at or datetime.now(UTC)).astimezone(UTC).isoformat(),
            "user": user,
            "approved_by": approved_by,
            "operation": operation,
            "card": _card_text(card),
            "card_ref": card_ref,
            "amount": None
            if amount is None
            else str(Decimal(str(amount)).quantize(Decimal("0.01"))),
            "store_id": store_id,
            "host_ref": host_ref,
            "outcome": outcome,
            "statuscode": statuscode,
            "description": None if description is None else scrub(description),
            "idempotency_key": idempotency_key,
            "case_id": case_id,
        }
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry


def read(path: str | Path, case_id: str | None = None) -> pl.DataFrame:
    """The audit log as a frame of ``AUDIT_SCHEMA`` (empty if there is no log yet), in the
    order written; with ``case_id``, that case's steps only."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pl.DataFrame(schema=AUDIT_SCHEMA)
    if case_id is not None:
        return read(path).filter(pl.col("case_id") == case_id)
    loose = {
        k: (pl.String if k in ("at", "amount", "outcome") else v) for k, v in AUDIT_SCHEMA.items()
    }
    raw = pl.read_ndjson(path, schema=loose)
    return raw.with_columns(
        pl.col("at").str.to_datetime(time_zone="UTC", time_unit="us"),
        pl.col("amount").cast(MONEY),
        pl.col("outcome").cast(AUDIT_SCHEMA["outcome"]),
    ).select(list(AUDIT_SCHEMA))
