"""Bulk card fixes from a CSV file: checked whole first, predicted, applied exactly once,
resumable.

The file has a header and these columns (``security_code``, ``amount``, ``store_id``,
``reason`` and ``pos_ref`` may be empty where the operation does not need them)::

    operation,card_number,security_code,amount,store_id,reason,pos_ref
    sell,6006 4912 3456 7897,1234,25.00,3f2a6c1e-8b1d-4c7a-9e2f-0a1b2c3d4e5f,,lane 2
    block,6006491234567897,1234,,,card reported lost,

Operations: ``balance``, ``sell``, ``reload``, ``redeem``, ``block``, ``unblock``, and the
card cases of :mod:`giftcard_toolkit.ops.cases`, which read three more columns, optional in
the header (a file without them works as before)::

    operation,card_number,security_code,amount,store_id,reason,pos_ref,new_card_number,new_security_code,host_ref
    replace,6006491234567897,1234,,3f2a6c1e-...,customer lost it,,6006499876543210,4321,
    reverse,6006491234567897,1234,,3f2a6c1e-...,charged twice,,,,3790
    adjust,6006491234567897,1234,-45.00,3f2a6c1e-...,loaded 50 not 5,,,,

* ``replace``: the card's whole balance onto the card in ``new_card_number`` /
  ``new_security_code`` (sold when it never was, else reloaded), then the card blocked;
  ``amount`` empty (the balance, at most 500.00: one sale or reload moves it);
* ``reverse``: undoes the card's transaction whose hostRef is ``host_ref`` (a redemption by
  a reload, a sale or reload by a redemption), once ever; ``amount`` empty;
* ``adjust``: a signed correction in ``amount`` (``12.50`` loads, ``-45.00`` takes off;
  never zero);
* each needs ``store_id`` and ``reason``; ``pos_ref`` stays empty (each step carries its
  case's own mark, ``case <id> <step>``); the new columns stay empty on other rows.

A case row is applied exactly once like any row: ``replace`` and ``reverse`` are the
case of those cards / that hostRef (whoever runs it, from whichever file: a rerun, or a
colleague's file, finds it done), ``adjust`` is keyed by the row's own key (identical rows
on two lines are two corrections). Its ``host_ref`` result is the hostRef of its last money
step, ``new_balance`` what the row's card holds after, and the description names the case
id (``audit.read(log, case_id=...)`` shows its steps). A case refused or undone is
``declined`` (nothing moved); one stopped by a lost answer is ``error``, and the next run
finishes it. A ``replace`` row runs after the earlier rows of both its cards, and before
their later ones.

Files as Excel and Google Sheets write them are read as they are:

* UTF-8 with or without a BOM, UTF-16 (Excel's "Unicode Text"), and Windows-1252 (Excel's
  "CSV (Comma delimited)"); anything else is refused, saying how to save as "CSV UTF-8";
* comma, semicolon or tab separators (found from the header), any line ending (CR LF, LF,
  CR alone); header names in any letter case and spacing (``Card Number``); rows holding
  only separators or spaces (Excel's ``,,,,,,``) are skipped;
* amounts with a currency sign, thousands separators or a decimal comma where they can
  be read one way only (``$1,000.00``, ``1.000,00 €`` in a semicolon file); an amount that
  reads two ways (``1,000``) is refused naming both readings;
* a card number Excel turned into ``6.00649E+15``, or a security code that lost its leading
  zero, is refused with how to keep the column as text;
* every message and every result cites the file's physical line (blank lines counted).

How a run stays safe:

* the whole file is validated before anything is sent, and every bad row is reported
  (``BulkFileError``: the first 20 in its message, all of them in ``<file>.errors.csv``);
* each row's ``Idempotency-Key`` comes from that row alone (its normalised content and
  its place among identical rows), keyed by the user's credentials so it reveals nothing of
  the card: editing one row changes no other row's key; re-saving the file in another
  encoding or with another separator changes none, nor does Excel writing ``25.00`` as
  ``25`` (amounts are keyed in cents); a row sent twice, by any run on any machine within
  the server's 24 hours, is applied once;
* the rows of one card are sent one after another in file order (different cards in
  parallel), as the dry run predicts them; after a row whose outcome is unknown, the
  card's later rows are not sent;
* a journal beside the file (JSON Lines, fsynced, mode 0600, cards masked) records each
  row before it is sent and its outcome once that is definite (approved, partially
  approved, declined, refused); a row whose answer was lost (a timeout, a dropped
  connection, a 5xx, a 409) is sent again by the next run **with the same key**;
* a row sent earlier whose outcome is unknown must not change: if it did, the run is
  refused, naming it, with the advice to restore it (which can apply nothing twice).

Result statuses (the ``status`` column; :func:`summary` counts them):

* a run: ``approved``, ``partial`` (applied now); ``already applied`` (found in the journal,
  or answered by the server as a replay of an earlier attempt, ``replayed`` true: nothing
  moved now); ``declined``, ``rejected`` (not applied); ``not sent`` (this run did not send
  it: an earlier row of the card has an unknown outcome, or the server could not be reached
  or refused the credentials); ``error`` (the outcome is unknown: run the file again).
* a dry run (``dry_run=True``): every card is checked against the server (a balance check;
  nothing changes) and every row simulated in file order with the user's stores and limits
  from ``verify``: ``checked`` (would be approved, as far as can be known), ``would be
  declined`` (with the status code and reason the server would give), ``not checked`` (the
  card could not be checked), and rows the journal already settled as in a run.
  ``new_balance`` is then what the card would hold after the row.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from giftcard_toolkit import errors, models
from giftcard_toolkit.analysis.frames import MONEY
from giftcard_toolkit.cards import (
    CARD_LIKE,
    Card,
    card_number_problem,
    luhn_valid,
    security_code_problem,
)
from giftcard_toolkit.ops import cases, operations
from giftcard_toolkit.ops.approval import Approval, verification_of
from giftcard_toolkit.ops.audit import AuditLog, scrub
from giftcard_toolkit.rules import GUID, GUID_EXAMPLE, is_money_amount

COLUMNS = ["operation", "card_number", "security_code", "amount", "store_id", "reason", "pos_ref"]
# Optional in the header; read by the card-case rows (replace: the new card; reverse: the
# hostRef of the transaction to undo).
CASE_COLUMNS = ["new_card_number", "new_security_code", "host_ref"]
MONEY_OPERATIONS = set(operations.MONEY_OPERATIONS)
STATUS_OPERATIONS = set(operations.STATUS_OPERATIONS)
CASE_OPERATIONS = {"replace", "reverse", "adjust"}
OPERATIONS = set(operations.OPERATIONS) | CASE_OPERATIONS
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

# Result statuses (see the module docstring).
APPROVED, PARTIAL = "approved", "partial"
ALREADY_APPLIED = "already applied"
DECLINED, REJECTED = "declined", "rejected"
NOT_SENT = "not sent"
ERROR = "error"
CHECKED, WOULD_BE_DECLINED, NOT_CHECKED = "checked", "would be declined", "not checked"
# The statuses of rows that are (or, in a dry run, would be) applied.
APPLIED_STATUSES = (APPROVED, PARTIAL, ALREADY_APPLIED, CHECKED)

# The contract's server-wide limits (status 100012): per sale or reload, and per card.
SERVER_MAX_LOAD = Decimal("500.00")
SERVER_MAX_BALANCE = Decimal("2000.00")
# A BulkFileError's message lists at most this many rows; the full list goes to a file.
LISTED_PROBLEMS = 20

_SAVE_AS_UTF8 = (
    "save it as CSV UTF-8: in Excel, File > Save As > 'CSV UTF-8 (Comma delimited) (*.csv)'; "
    "in Google Sheets, File > Download > 'Comma Separated Values (.csv)'"
)
_AS_TEXT = (
    "format the column as Text before typing or pasting (Excel: select the column, Format "
    "Cells > Text, or open the CSV with Data > From Text/CSV and set the column to Text; "
    "Google Sheets: Format > Number > Plain text), enter the values again and save"
)


class BulkFileError(errors.InvalidInput):
    """The file cannot be run; ``problems`` lists (line, why) for every bad row.

    The message shows the first :data:`LISTED_PROBLEMS`; ``errors_file`` is where the full
    list was written (beside the input) when there were more.
    """

    def __init__(
        self,
        problems: list[tuple[int, str]],
        errors_file: Path | None = None,
        unwritten: str | None = None,
    ) -> None:
        self.problems = problems
        self.errors_file = errors_file
        shown = "\n".join(f"  line {line}: {why}" for line, why in problems[:LISTED_PROBLEMS])
        more = len(problems) - LISTED_PROBLEMS
        if more > 0:
            where = (
                f"; every one is listed in {errors_file}"
                if errors_file is not None
                else f" (the full list could not be written: {unwritten})"
                if unwritten
                else ""
            )
            shown += f"\n  ... and {more:,} more{where}"
        super().__init__(f"{len(problems):,} problem(s); nothing was sent:\n{shown}")


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
    # The key this row had before amounts were keyed in cents ("25" and "25.00" alike),
    # when it differs: a journal that knows it keeps it (see ``_keep_journalled_keys``).
    legacy_key: str | None = None
    new_card: Card | None = None  # replace: the card the balance moves onto
    reversed_ref: str | None = None  # reverse: the hostRef of the transaction to undo

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


# ------------------------------------------------------------------ reading the file


def _line_of(content: bytes, offset: int) -> int:
    head = content[:offset]
    if b"\n" in head or b"\r" not in head:
        return head.count(b"\n") + 1
    return head.count(b"\r") + 1


def _decode(content: bytes) -> tuple[str, str]:
    """(the text, the encoding's name) of a file as spreadsheets save them; raises
    :class:`BulkFileError` for anything else, saying how to save as CSV UTF-8."""

    def refuse(why: str, line: int = 1) -> BulkFileError:
        return BulkFileError([(line, f"{why}; {_SAVE_AS_UTF8}")])

    if content.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        raise refuse("this is an Excel workbook (.xlsx or .xls), not a CSV file")
    boms = (
        (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
        (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
        (codecs.BOM_UTF8, "utf-8-sig", "UTF-8 with BOM"),
        (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
        (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
    )
    for bom, codec, name in boms:
        if content.startswith(bom):
            try:
                return content.decode(codec), name
            except UnicodeDecodeError as bad:
                raise refuse(
                    f"the file starts as {name} but is not valid {name} further on",
                    _line_of(content, bad.start),
                ) from None
    head = content[:4096]
    if b"\x00" in head:  # UTF-16 without a BOM: every other byte of ASCII text is zero
        even, odd = head[0::2].count(0), head[1::2].count(0)
        codec = "utf-16-le" if odd > even else "utf-16-be"
        try:
            return content.decode(codec), "UTF-16"
        except UnicodeDecodeError:
            raise refuse("the file holds zero bytes: it is not a text CSV file") from None
    try:
        return content.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError as bad:
        line, byte = _line_of(content, bad.start), content[bad.start]
    if b"\r" in content and b"\n" not in content:
        raise refuse(
            f"byte 0x{byte:02x} is not UTF-8, and the lines end in CR alone: "
            "this looks like Excel's 'CSV (Macintosh)' (Mac Roman), whose accented letters "
            "cannot be told from Windows-1252 ones",
            line,
        )
    try:
        text = content.decode("cp1252")
    except UnicodeDecodeError:
        raise refuse(
            f"byte 0x{byte:02x} is neither UTF-8 nor Windows-1252 (Excel's "
            "'CSV (Comma delimited)'): the file's encoding is unknown",
            line,
        ) from None
    if any(unicodedata.category(c) == "Cc" and c not in "\t\r\n" for c in text):
        raise refuse("the file is not UTF-8 and holds control characters", line)
    return text, "Windows-1252"


_SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}


def _column_name(text: str) -> str:
    return re.sub(r"[\s_\-.]+", "", unicodedata.normalize("NFKC", text)).lower()


_WANTED = {_column_name(c): c for c in [*COLUMNS, *CASE_COLUMNS]}


@dataclass(frozen=True)
class _Table:
    encoding: str
    separator: str
    header_line: int
    rows: list[tuple[int, dict[str, str], list[str]]]  # (line, cells by column, extra cells)


def _cells(line: str, separator: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=separator), [])
    except csv.Error:
        return line.split(separator)


def _read_table(content: bytes) -> _Table:
    text, encoding = _decode(content)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    header_index = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_index is None:
        raise BulkFileError([(1, f"the file is empty; its first line must be {','.join(COLUMNS)}")])
    header_line = header_index + 1

    def matched(separator: str) -> int:
        return len(
            {_column_name(c) for c in _cells(lines[header_index], separator)} & _WANTED.keys()
        )

    separator = max(_SEPARATORS, key=matched)  # the first of equals: comma
    reader = csv.reader(io.StringIO(text), delimiter=separator, strict=True)
    rows: list[tuple[int, dict[str, str], list[str]]] = []
    header: list[str] | None = None
    positions: dict[str, int] = {}
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as bad:
            raise BulkFileError(
                [
                    (
                        start,
                        f"cannot be read as CSV ({bad}): a value that starts with a quote must "
                        "end with one (write a quote inside a value as two quotes)",
                    )
                ]
            ) from None
        if header is None:
            if not any(c.strip() for c in cells):
                continue
            header = [_column_name(c) for c in cells]
            twice = sorted({_WANTED[n] for n in header if n in _WANTED and header.count(n) > 1})
            if twice:
                raise BulkFileError([(start, f"column(s) {', '.join(twice)} appear twice")])
            positions = {_WANTED[n]: i for i, n in enumerate(header) if n in _WANTED}
            missing = [c for c in COLUMNS if c not in positions]
            if missing:
                raise BulkFileError(
                    [
                        (
                            start,
                            f"missing column(s) {', '.join(missing)}; expected "
                            f"{','.join(COLUMNS)} (the header was read with "
                            f"{_SEPARATORS[separator]} as separator)",
                        )
                    ]
                )
            continue
        if not any(c.strip() for c in cells):
            continue  # a blank line, or Excel's ",,,,,," under the data
        row = dict.fromkeys(CASE_COLUMNS, "")
        row.update({c: (cells[i] if i < len(cells) else "") for c, i in positions.items()})
        extra = [c for c in cells[len(header) :] if c.strip()]
        rows.append((start, row, extra))
    return _Table(encoding, separator, header_line, rows)


# ------------------------------------------------------------------ reading the cells

_CURRENCY = r"(?:US\$|\$|€|£|¥|USD|EUR|GBP)"
_MONEY_TEXT = re.compile(
    rf"^(?P<sign>[-+]?)\s*(?:{_CURRENCY}\s*)?(?P<sign2>[-+]?)(?P<number>[0-9][0-9.,\s'’]*|[.,][0-9]+)"
    rf"\s*(?:{_CURRENCY})?$",
    re.IGNORECASE,
)
_GROUPED = {sep: re.compile(rf"^[0-9]{{1,3}}(?:{re.escape(sep)}[0-9]{{3}})+$") for sep in ".,"}
CENT = Decimal("0.01")
_SPACES_IN_NUMBER = re.compile(r"(?<=[0-9])[\s'’](?=[0-9]{3}(?![0-9]))")


class AmountError(ValueError):
    """An amount cell that cannot be read as one amount; the message says why."""


def parse_amount(text: str, separator: str = ",") -> Decimal:
    """The amount in a cell as spreadsheets write it: ``25``, ``25.00``, ``$1,000.00``,
    ``1.000,00 €`` or ``12,50``; :class:`AmountError` when it is not one (or reads two
    ways, e.g. ``1,000``), or is not above zero with at most 2 decimals.

    ``separator`` is the file's: in a semicolon file (European Excel) a single ``.``
    before three digits (``1.000``) is ambiguous; elsewhere it is a decimal point.
    """
    raw = text.strip()
    shown = scrub(raw)
    if not raw:
        raise AmountError("amount is empty: sell, reload and redeem need one")
    found = _MONEY_TEXT.match(raw)
    if found is None:
        raise AmountError(
            f"amount {shown!r} is not a number this can read; write it like 25.00 (a currency "
            "sign, thousands separators and a decimal comma are understood)"
        )
    if "-" in found["sign"] + found["sign2"]:
        raise AmountError(f"amount {shown!r} must be above zero with at most 2 decimals")
    number = _SPACES_IN_NUMBER.sub("", found["number"].strip())
    if re.search(r"[\s'’]", number):
        raise AmountError(f"amount {shown!r} is not a number this can read")
    dots, commas = number.count("."), number.count(",")
    plain: str
    if dots and commas:
        last = max(number.rfind("."), number.rfind(","))
        decimal_mark = number[last]
        grouping = "," if decimal_mark == "." else "."
        whole, fraction = number[:last], number[last + 1 :]
        if number.count(decimal_mark) > 1 or not _GROUPED[grouping].match(whole):
            raise AmountError(
                f"amount {shown!r} mixes separators in a way that reads no single way; "
                "write it like 1000.00"
            )
        plain = whole.replace(grouping, "") + "." + fraction
    elif dots or commas:
        mark = "." if dots else ","
        whole, _, fraction = number.partition(mark)
        if number.count(mark) > 1:
            if not _GROUPED[mark].match(number):
                raise AmountError(f"amount {shown!r} is not a number this can read")
            plain = number.replace(mark, "")
        elif len(fraction) == 3 and re.fullmatch(r"[1-9][0-9]{0,2}", whole):
            # 1,000 / 1.000: a thousands separator, or a decimal mark before 3 decimals?
            name = "comma" if mark == "," else "point"
            thousands, decimal = f"{whole}{fraction}", f"{whole}.{fraction}"
            if mark == "." and separator != ";" and not fraction.endswith("0"):
                raise AmountError(
                    f"amount {shown!r} must be above zero with at most 2 decimals (if it "
                    f"means {thousands}, write {thousands})"
                )
            instead = f" or {whole}.{fraction[:2]}" if fraction.endswith("0") else ""
            raise AmountError(
                f"amount {shown!r} is ambiguous: it reads as {thousands} with the {name} as a "
                f"thousands separator, or as {decimal} with the {name} as the decimal "
                f"separator; write {thousands}{instead} instead"
            )
        else:
            plain = f"{whole or '0'}.{fraction}" if mark == "," else number
    else:
        plain = number
    if len(plain.partition(".")[0].lstrip("0")) > 9:  # never echoed: a card number, maybe
        raise AmountError(
            "amount has more digits than any amount has: is a card number in the wrong column?"
        )
    try:
        amount = Decimal(plain)
    except InvalidOperation:
        raise AmountError(f"amount {shown!r} is not a number this can read") from None
    if not is_money_amount(amount):
        raise AmountError(f"amount {shown!r} must be above zero with at most 2 decimals")
    return amount


_ZERO = re.compile(r"[^1-9]*0[^1-9]*")


def parse_signed_amount(text: str, separator: str = ",") -> Decimal:
    """A signed, non-zero amount (an ``adjust`` row's): ``12.50``, ``-45.00``, ``-$45.00``,
    ``(45.00)`` as accounting formats write a negative; otherwise read as
    :func:`parse_amount` reads amounts. :class:`AmountError` when it is not one, or zero."""
    raw = text.strip()
    if not raw:
        raise AmountError(
            "amount is empty: adjust needs the signed correction, e.g. 12.50 or -45.00"
        )
    body, negative = raw.replace("\u2212", "-"), False
    bracketed = re.fullmatch(r"\((.*)\)", body)
    if bracketed:
        body, negative = bracketed[1].strip(), True
    found = _MONEY_TEXT.match(body)
    if found is not None and "-" in found["sign"] + found["sign2"]:
        if negative:
            raise AmountError(f"amount {scrub(raw)!r} is negative twice: write it like -45.00")
        body, negative = body.replace("-", "", 1), True
    if _ZERO.fullmatch(body):
        raise AmountError(
            f"amount {scrub(raw)!r} is zero: an adjustment changes the balance, e.g. 12.50 "
            "to load or -45.00 to take off"
        )
    try:
        amount = parse_amount(body, separator)
    except AmountError as bad:
        said = str(bad).replace(repr(scrub(body)), repr(scrub(raw)))
        raise AmountError(
            said.replace("must be above zero with", "must be a non-zero amount with")
        ) from None
    return -amount if negative else amount


_SCIENTIFIC = re.compile(r"^[0-9]+(?:[.,][0-9]+)?[eE][+-]?[0-9]+$")


def _card_problem(value: str, column: str = "card_number") -> str | None:
    if _SCIENTIFIC.match(value):
        return (
            f"{column} is in scientific notation (like 6.00649E+15): Excel or Google Sheets "
            "read the card numbers as numbers, which keep 15 significant digits at most, so "
            f"the number is lost from this file; {_AS_TEXT}"
        )
    problem = card_number_problem(value)
    if problem is None:
        return None
    digits = re.sub(r"[\s-]+", "", value)
    if len(digits) == 16 and digits.isdigit() and digits.endswith("0") and not luhn_valid(digits):
        problem += (
            " (or, as it ends in 0, Excel stored it as a number and replaced its 16th digit "
            f"with 0; {_AS_TEXT})"
        )
    return f"{column} {problem}"


def _code_problem(code: str, column: str = "security_code") -> str | None:
    if code.isdigit() and len(code) < 4:
        return (
            f"{column} has {len(code)} digit(s), not 4: a code that starts with 0 "
            "loses its leading zero(s) when Excel or Google Sheets read the column as "
            f"numbers; {_AS_TEXT}"
        )
    problem = security_code_problem(code)
    return None if problem is None else f"{column} {problem}"


def _digits(value: str) -> str:
    return re.sub(r"[\s-]+", "", value)


def _host_ref_problem(ref: str, card_number: str) -> str | None:
    """Why a ``host_ref`` cell is no hostRef (never echoing what may be a card number)."""
    if _SCIENTIFIC.match(ref):
        return (
            "host_ref is in scientific notation (like 1.23457E+11): the spreadsheet read the "
            f"hostRefs as numbers and lost their digits; {_AS_TEXT}"
        )
    if _digits(ref) == _digits(card_number) or (
        CARD_LIKE.fullmatch(ref) and card_number_problem(ref) is None
    ):
        return (
            "host_ref holds a card number, not a hostRef (the reference of the transaction "
            "to undo, from cases.history or the batch): is a column shifted?"
        )
    if len(ref) > 64 or any(c.isspace() or unicodedata.category(c) == "Cc" for c in ref):
        return (
            f"host_ref {scrub(ref[:70])!r} is not a hostRef (at most 64 characters, without "
            "spaces): copy it from cases.history or the batch"
        )
    return None


_ONLY_FOR = {
    "new_card_number": "replace",
    "new_security_code": "replace",
    "host_ref": "reverse",
}


def _case_problems(
    operation: str, row: dict[str, str], needs_code: bool, separator: str, why: list[str]
) -> Decimal | None:
    """Adds a card-case row's problems to ``why``; answers an adjust row's signed amount."""
    if not GUID.fullmatch(row["store_id"].strip()):
        why.append(f"store_id must be the store's GUID, e.g. {GUID_EXAMPLE}")
    if not row["reason"].strip():
        why.append(f"reason is required to {operation}: say why, for the audit log")
    if row["pos_ref"].strip():
        why.append(
            f"pos_ref must be empty for {operation}: each step of a card case carries its "
            "case's own mark (case <id> <step>)"
        )
    amount = None
    if operation == "adjust":
        try:
            amount = parse_signed_amount(row["amount"], separator)
        except AmountError as bad:
            why.append(str(bad))
    elif row["amount"].strip():
        why.append(
            "amount must be empty for replace: it moves the card's whole balance"
            if operation == "replace"
            else "amount must be empty for reverse: it undoes the transaction's own amount"
        )
    for column, used_by in _ONLY_FOR.items():
        if used_by != operation and row[column].strip():
            why.append(f"{column} is read for {used_by} rows only: leave it empty for {operation}")
    if operation == "replace":
        number, code = row["new_card_number"].strip(), row["new_security_code"].strip()
        if not number:
            why.append(
                "new_card_number is empty: replace needs the card the balance moves onto "
                "(columns new_card_number and new_security_code)"
            )
        else:
            problem = _card_problem(number, "new_card_number")
            if problem:
                why.append(problem)
            elif _digits(number) == _digits(row["card_number"]):
                why.append(
                    "new_card_number is the card itself: replace moves the balance onto "
                    "another card"
                )
        if code:
            problem = _code_problem(code, "new_security_code")
            if problem:
                why.append(problem)
        elif needs_code:
            why.append(
                "new_security_code is empty (and no card key is configured to send the new "
                "card encrypted)"
            )
    if operation == "reverse":
        ref = row["host_ref"].strip()
        if not ref:
            why.append(
                "host_ref is empty: reverse needs the hostRef of the card's transaction to "
                "undo (cases.history(gc, card) lists them), in a host_ref column"
            )
        else:
            problem = _host_ref_problem(ref, row["card_number"])
            if problem:
                why.append(problem)
    return amount


def _row_problems(
    row: dict[str, str], extra: list[str], needs_code: bool, separator: str
) -> tuple[list[str], Decimal | None]:
    why: list[str] = []
    operation = row["operation"].strip().lower()
    if operation not in OPERATIONS:
        value = row["operation"].strip()
        # Digits are never echoed: a shifted row may put a card or its code here.
        shown = "(a value with digits)" if re.search(r"[0-9]", value) else repr(value)
        why.append(f"operation {shown} is not one of {', '.join(sorted(OPERATIONS))}")
    problem = _card_problem(row["card_number"].strip())
    if problem:
        why.append(problem)
    code = row["security_code"].strip()
    if code:
        problem = _code_problem(code)
        if problem:
            why.append(problem)
    elif needs_code:
        why.append("security_code is empty (and no card key is configured to send it encrypted)")
    amount = None
    if operation in MONEY_OPERATIONS:
        try:
            amount = parse_amount(row["amount"], separator)
        except AmountError as bad:
            why.append(str(bad))
        if not GUID.fullmatch(row["store_id"].strip()):
            why.append(f"store_id must be the store's GUID, e.g. {GUID_EXAMPLE}")
    if operation in STATUS_OPERATIONS and not row["reason"].strip():
        why.append("reason is required to block or unblock")
    if operation in CASE_OPERATIONS:
        amount = _case_problems(operation, row, needs_code, separator, why)
    elif operation in OPERATIONS:
        why.extend(
            f"{column} is read for {used_by} rows only: leave it empty for {operation}"
            for column, used_by in _ONLY_FOR.items()
            if row[column].strip()
        )
    if extra:
        name = _SEPARATORS[separator]
        why.append(
            f"the row has {len(extra)} more value(s) than the header has columns: a value "
            f"holding a {name} must be in quotes"
        )
    return why, amount


def _random_keys() -> Callable[[str], str]:
    secret = secrets.token_bytes(32)
    return lambda material: hmac.new(secret, material.encode(), hashlib.sha256).hexdigest()


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.stem}.{suffix}")


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _refuse(path: Path, problems: list[tuple[int, str]]) -> BulkFileError:
    """The error for a file's bad rows; more than 20 are also written beside the file."""
    if len(problems) <= LISTED_PROBLEMS:
        return BulkFileError(problems)
    out = _beside(path, "errors.csv")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["line", "problem"])
    writer.writerows(problems)
    try:
        _write_atomically(out, buffer.getvalue().encode("utf-8-sig"))
    except OSError as failed:
        return BulkFileError(problems, unwritten=f"{out}: {failed.strerror or failed}")
    return BulkFileError(problems, errors_file=out)


def validate(
    path: str | Path, needs_code: bool = True, derive_key: Callable[[str], str] | None = None
) -> list[Fix]:
    """Every row of the file, checked; raises :class:`BulkFileError` naming all bad rows
    by their physical line (the first 20 in its message; more are written to
    ``<file>.errors.csv``).

    ``derive_key`` turns a row's normalised content into its Idempotency-Key (``run``
    passes the client's, stable across runs); by default keys are good for this
    validation only.
    """
    path = Path(path)
    derive = derive_key or _random_keys()
    table = _read_table(path.read_bytes())
    fixes: list[Fix] = []
    problems: list[tuple[int, str]] = []
    seen: Counter[str] = Counter()
    seen_legacy: Counter[str] = Counter()

    def key_of(values: list[str | None], counter: Counter[str]) -> str:
        material = json.dumps(values, separators=(",", ":"))
        occurrence = counter[material]
        counter[material] += 1
        return "bulk-" + derive(f"{material}#{occurrence}")[:40]

    for line, row, extra in table.rows:
        why, amount = _row_problems(row, extra, needs_code, table.separator)
        if why:
            problems.append((line, "; ".join(why)))
            continue
        operation = row["operation"].strip().lower()
        card = Card(row["card_number"].strip(), row["security_code"].strip() or None)
        store_id = row["store_id"].strip().lower() or None
        reason = row["reason"].strip() or None
        pos_ref = row["pos_ref"].strip() or None
        # The row alone decides its key, from its normalised values (however the file was
        # encoded or separated, and "25" or "25.00" as Excel re-saves it): what it does,
        # and which of identical rows it is.
        cents = None if amount is None else amount.quantize(CENT)
        material: list[str | None] = [operation, card.number, str(cents), store_id, reason, pos_ref]
        if operation in CASE_OPERATIONS:
            new_card = (
                Card(row["new_card_number"].strip(), row["new_security_code"].strip() or None)
                if operation == "replace"
                else None
            )
            reversed_ref = row["host_ref"].strip() if operation == "reverse" else None
            material += [None if new_card is None else new_card.number, reversed_ref]
            key = key_of(material, seen)
            fix = Fix(line, operation, card, cents, store_id, reason, pos_ref, key)
            fixes.append(dataclasses.replace(fix, new_card=new_card, reversed_ref=reversed_ref))
            continue
        key = key_of(material, seen)
        legacy = key_of(
            [operation, card.number, str(amount), store_id, reason, pos_ref], seen_legacy
        )
        fixes.append(
            Fix(
                line,
                operation,
                card,
                cents,
                store_id,
                reason,
                pos_ref,
                key,
                None if legacy == key else legacy,
            )
        )
    if problems:
        raise _refuse(path, problems)
    if not fixes:
        raise BulkFileError([(table.header_line + 1, "the file has no rows")])
    return fixes


# ------------------------------------------------------------------ the journal


# An append's data and new size, without the times (POSIX); plain fsync elsewhere.
_sync = getattr(os, "fdatasync", os.fsync)


class _Journal:
    """Each row before it is sent (``sending``) and its outcome once definite (``done``),
    one fsynced JSON line each; cards masked, file mode 0600."""

    def __init__(self, path: Path | None, writable: bool = True) -> None:
        self.path = path if writable else None
        self.sent: dict[str, dict[str, Any]] = {}
        self.done: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._queue: list[bytes] = []
        self._queued = self._durable = 0  # lines queued, and on disk, so far
        self._flushing = False
        self._broken: BaseException | None = None
        self._fd: int | None = None
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
            elif entry.get("event") == "unsent":  # refused before anything was sent
                self.sent.pop(key, None)
            else:  # "done" (or a journal from before events were written)
                self.done[key] = entry

    def unknown(self) -> dict[str, dict[str, Any]]:
        """Rows sent whose outcome was never learnt: they may have been applied."""
        return {k: e for k, e in self.sent.items() if k not in self.done}

    def settled(self, fix: Fix) -> dict[str, Any] | None:
        """The journalled outcome that settles ``fix`` (a balance check is never settled:
        it is checked again on every run)."""
        return None if fix.operation == "balance" else self.done.get(fix.key)

    def add(self, entry: dict[str, Any], durable: bool = True) -> None:
        """Append ``entry``; with ``durable``, return once it is on disk (fsynced).
        Concurrent calls share one write and one fsync (group commit): whichever thread
        finds no flush running writes every line queued so far, the others wait for it.

        Without ``durable`` the line goes with the next flush (or :meth:`close`): an
        outcome, whose loss in a crash only makes the next run send the row again under
        its key, to be answered as a replay. A ``sending`` line is always durable first.
        """
        if self.path is None:
            return
        line = (json.dumps(entry) + "\n").encode()
        with self._cond:
            self._queue.append(line)
            self._queued += 1
            mine = self._queued
            while durable and self._durable < mine:
                if self._broken is not None:
                    raise OSError(f"journal {self.path} could not be written: {self._broken}")
                if self._flushing:
                    self._cond.wait()
                    continue
                batch, self._queue, upto = self._queue, [], self._queued
                self._flushing = True
                self._cond.release()
                try:
                    self._write(b"".join(batch))
                except BaseException as failed:
                    self._broken = failed
                    raise
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    if self._broken is None:
                        self._durable = upto
                    self._cond.notify_all()

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(str(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        _sync(self._fd)

    def close(self) -> None:
        """Write and fsync whatever is queued, then close the file."""
        with self._cond:
            while self._flushing:
                self._cond.wait()
            try:
                if self._queue and self._broken is None and self.path is not None:
                    batch, self._queue = self._queue, []
                    self._write(b"".join(batch))
                    self._durable = self._queued
            finally:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None


def _keep_journalled_keys(book: _Journal, fixes: list[Fix]) -> list[Fix]:
    """Rows a journal knows under the key they had before amounts were keyed in cents keep
    that key: the server knows them by it (a row is never sent under two keys)."""
    known = book.sent.keys() | book.done.keys()
    return [
        dataclasses.replace(f, key=f.legacy_key)
        if f.legacy_key in known and f.key not in known
        else f
        for f in fixes
    ]


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


def _from_journal(fix: Fix, entry: dict[str, Any]) -> dict[str, Any]:
    """A row an earlier run settled: ``already applied`` when it was applied (never
    ``approved``, which says it was applied now); a decline or refusal as it was."""
    row = {c: entry.get(c) for c in _RESULT_COLUMNS}
    row.update(line=fix.line, replayed=bool(entry.get("replayed")), idempotency_key=fix.key)
    if entry.get("status") in (APPROVED, PARTIAL, ALREADY_APPLIED):
        row["status"] = ALREADY_APPLIED
        row["description"] = "applied by an earlier run of this file (in its journal)" + (
            "; partially" if entry.get("statuscode") == "000001" else ""
        )
    else:
        row["description"] = f"in an earlier run: {entry.get('description') or ''}".strip()
    return row


# ------------------------------------------------------------------ results


def _result(fix: Fix, outcome: operations.Outcome) -> dict[str, Any]:
    status, description = outcome.status, outcome.description
    if outcome.replayed and status in (APPROVED, PARTIAL):
        status = ALREADY_APPLIED
        description = (
            "applied by an earlier attempt with the same key: the server answered it again "
            "and nothing moved now"
        )
    return {
        "line": fix.line,
        "operation": fix.operation,
        "card": fix.card.masked,
        "status": status,
        "statuscode": outcome.statuscode,
        "description": None if description is None else scrub(description),
        "host_ref": outcome.host_ref,
        "new_balance": None if outcome.balance is None else str(outcome.balance),
        "replayed": outcome.replayed,
        "idempotency_key": fix.key,
    }


def _not_sent(fix: Fix, why: str) -> dict[str, Any]:
    return {
        **{c: None for c in _RESULT_COLUMNS},
        "line": fix.line,
        "operation": fix.operation,
        "card": fix.card.masked,
        "status": NOT_SENT,
        "description": why,
        "replayed": False,
        "idempotency_key": fix.key,
    }


def _frame(rows: Iterable[dict[str, Any]]) -> pl.DataFrame:
    as_text = {**_RESULT_COLUMNS, "new_balance": pl.String}
    return pl.DataFrame(list(rows), schema=as_text).with_columns(pl.col("new_balance").cast(MONEY))


@dataclass(frozen=True)
class Summary:
    """Counts per outcome of a run's (or dry run's) results; ``str()`` is the line printed
    under the progress bar."""

    dry_run: bool
    rows: int
    applied: int  # applied now (a dry run: would be applied)
    already_applied: int  # by an earlier run or attempt; nothing moved now
    declined: int  # declined or refused (a dry run: would be declined)
    not_sent: int  # not sent by this run (a dry run: could not be checked)
    unknown: int  # outcome unknown: the file must be run again to learn it

    @property
    def clean(self) -> bool:
        """Nothing declined, unsent or unknown: every row is (or would be) applied."""
        return self.declined == self.not_sent == self.unknown == 0

    def __str__(self) -> str:
        if self.dry_run:
            return (
                f"dry run of {self.rows:,} row(s): {self.applied:,} would be applied, "
                f"{self.declined:,} would be declined, {self.already_applied:,} already applied "
                f"before, {self.not_sent:,} could not be checked"
            )
        text = (
            f"{self.rows:,} row(s): {self.applied:,} applied now, {self.already_applied:,} "
            f"already applied before, {self.declined:,} declined, {self.not_sent:,} not sent"
        )
        if self.unknown:
            text += f", {self.unknown:,} outcome unknown (run the file again to learn it)"
        return text


def summary(results: pl.DataFrame, dry_run: bool | None = None) -> Summary:
    """The counts per outcome of ``run``'s results (a dry run's, when its statuses say so)."""
    counts = Counter(results["status"].to_list())
    if dry_run is None:
        dry_run = bool({CHECKED, WOULD_BE_DECLINED, NOT_CHECKED} & counts.keys())
    return Summary(
        dry_run=dry_run,
        rows=results.height,
        applied=counts[APPROVED] + counts[PARTIAL] + counts[CHECKED],
        already_applied=counts[ALREADY_APPLIED],
        declined=counts[DECLINED] + counts[REJECTED] + counts[WOULD_BE_DECLINED],
        not_sent=counts[NOT_SENT] + counts[NOT_CHECKED],
        unknown=counts[ERROR],
    )


def results_path(path: str | Path, dry_run: bool = False) -> Path:
    """Where the CLI writes a file's results: ``<file>.results.csv`` (``.dry-run.csv``)."""
    return _beside(Path(path), "dry-run.csv" if dry_run else "results.csv")


def write_results(results: pl.DataFrame, out: str | Path) -> Path:
    """``results`` as a CSV that Excel opens as it is (UTF-8 with BOM), written whole or
    not at all. Cards are masked in the results already."""
    out = Path(out)
    text = results.with_columns(pl.col("new_balance").cast(pl.String)).write_csv()
    _write_atomically(out, codecs.BOM_UTF8 + text.encode())
    return out


# ------------------------------------------------------------------ running


def _open_log(audit_log: str | Path | AuditLog | None) -> AuditLog | None:
    return (
        audit_log if isinstance(audit_log, AuditLog) or audit_log is None else AuditLog(audit_log)
    )


def run(
    client: Any,
    path: str | Path,
    journal: str | Path | None = None,
    concurrency: int = 8,
    dry_run: bool = False,
    audit_log: str | Path | AuditLog | None = None,
    progress: bool = True,
    approver: Any = None,
) -> pl.DataFrame:
    """Apply every row of ``path`` through ``client`` (a ``GiftCardClient``); one result
    row per input row, in file order (statuses: see the module docstring;
    ``summary(results)`` counts them, and is printed under the progress bar).

    ``journal`` makes the run resumable (default: ``<file>.journal`` beside it): rows with
    a definite outcome are not sent again (``already applied``); rows whose answer was lost
    are sent again under the same key (``replayed`` is then true if the earlier attempt
    had been applied). At most ``concurrency`` requests are in flight; one card's rows go
    in file order. Every attempted operation is written to ``audit_log`` when one is given.

    ``dry_run=True`` changes nothing anywhere (the journal is read, never written): it
    checks every card and predicts every row, as the module docstring says.

    ``approver`` (a client signed in as another user) sends the rows above the signed-in
    user's own limit (``verify().max_amount``), and the steps of card cases above it; the
    audit log names it (``approved_by``). Without one, a file with such rows is refused
    before anything is sent (:class:`~giftcard_toolkit.errors.ApprovalRequired`). A row
    whose answer was lost is sent again under the same user as before (the journal says
    which), so that it is answered, never applied twice.
    """
    path = Path(path)
    needs_code = getattr(client, "_cipher", None) is None
    fixes = validate(path, needs_code=needs_code, derive_key=client.derived_key)
    book = _Journal(Path(journal or f"{path}.journal"), writable=not dry_run)
    fixes = _keep_journalled_keys(book, fixes)
    _check_unchanged(book, fixes)
    log = _open_log(audit_log)
    approval = Approval(client, approver)
    # Credentials first: a wrong password must not leave rows of "unknown" outcome.
    verification: models.Verification = client.verify()
    settled = {f.key: _from_journal(f, e) for f in fixes if (e := book.settled(f)) is not None}
    senders = {} if dry_run else _senders(approval, fixes, book, settled)
    with tqdm(
        total=len(fixes),
        initial=len(settled),
        unit="row",
        desc="dry run" if dry_run else "bulk",
        disable=not progress,
    ) as shown:
        try:
            if dry_run:
                theirs = None if approver is None else verification_of(approver)
                rows = _predict(
                    client, fixes, book, settled, verification, concurrency, log, shown, theirs
                )
            else:
                rows = _apply(
                    client, fixes, book, settled, concurrency, log, shown, senders, approver
                )
        finally:
            book.close()
    results = _frame(rows)
    if progress:
        print(summary(results, dry_run=dry_run), flush=True)
    return results


def _senders(
    approval: Approval, fixes: list[Fix], book: _Journal, settled: dict[str, dict[str, Any]]
) -> dict[str, tuple[Any, str | None]]:
    """(client, approver's name) of each sale, reload and redemption row to send: the
    approver above the user's own limit; a row sent before, whoever sent it then (its
    key is that user's on the server). Raises, before anything is sent, when a row needs
    an approver that is not there."""
    client, approver = approval.client, approval.approver
    by_name = {client.username: client}
    if approver is not None:
        by_name[approver.username] = approver
    senders: dict[str, tuple[Any, str | None]] = {}
    needing: list[Fix] = []
    sent_by: list[tuple[Fix, str]] = []
    unknown = book.unknown()
    for fix in fixes:
        if fix.key in settled or fix.operation not in MONEY_OPERATIONS:
            continue
        before = unknown.get(fix.key, {}).get("sent_as")
        if before is not None:
            if before not in by_name:
                sent_by.append((fix, before))
                continue
            sender = by_name[before]
            senders[fix.key] = (sender, None if sender is client else before)
        elif approval.needed(fix.operation, fix.amount):
            if approver is None:
                needing.append(fix)
                continue
            senders[fix.key] = (approver, approver.username)
        else:
            senders[fix.key] = (client, None)
    if sent_by:
        lines = ", ".join(f"{fix.line} (by {name!r})" for fix, name in sent_by[:LISTED_PROBLEMS])
        raise errors.ApprovalRequired(
            f"line(s) {lines} were sent by an earlier run under an approver's sign-in and "
            "their outcome is unknown: run the file again with approver= signed in as that "
            "user, so that they are answered, never applied twice; nothing was sent",
            amount=max(f.amount or Decimal(0) for f, _ in sent_by),
            limit=approval.limit or Decimal(0),
        )
    if needing:
        limit = approval.limit or Decimal(0)
        lines = ", ".join(
            f"{f.line} ({f.operation} {_money(f.amount or Decimal(0))})"
            for f in needing[:LISTED_PROBLEMS]
        )
        more = (
            f" and {len(needing) - LISTED_PROBLEMS:,} more"
            if len(needing) > LISTED_PROBLEMS
            else ""
        )
        raise errors.ApprovalRequired(
            f"line(s) {lines}{more} are over user {client.username!r}'s own limit of "
            f"{_money(limit)} per sale, reload or redemption, so they need approval: pass "
            "approver= a client signed in as a user allowed those amounts; nothing was sent",
            amount=max(f.amount or Decimal(0) for f in needing),
            limit=limit,
        )
    return senders


class _Bar:
    """The progress bar, advanced from worker threads."""

    def __init__(self, shown: Any) -> None:
        self.shown, self.lock = shown, threading.Lock()

    def advance(self, rows: int = 1) -> None:
        with self.lock:
            self.shown.update(rows)


def _cards_of(fix: Fix) -> tuple[str, ...]:
    """The card numbers a row touches: a replace row, both cards."""
    return (fix.card.number,) if fix.new_card is None else (fix.card.number, fix.new_card.number)


def _by_card(fixes: Iterable[Fix]) -> list[list[Fix]]:
    """The rows in chains that run one after another, each in file order: one card's rows,
    joined with every card a replace row links to it (both cards of a replace change)."""
    rows = list(fixes)
    parent: dict[str, str] = {}

    def root(number: str) -> str:
        parent.setdefault(number, number)
        while parent[number] != number:
            parent[number] = parent[parent[number]]
            number = parent[number]
        return number

    for fix in rows:
        if fix.new_card is not None:
            parent[root(fix.card.number)] = root(fix.new_card.number)
    chains: dict[str, list[Fix]] = {}
    for fix in rows:
        chains.setdefault(root(fix.card.number), []).append(fix)
    return list(chains.values())


def _gather(futures: list[Future[Any]], stop: threading.Event) -> list[Any]:
    done: list[Any] = []
    try:
        for future in as_completed(futures):
            done.append(future.result())
    except BaseException:
        stop.set()
        for future in futures:
            future.cancel()
        raise
    return done


def _apply(
    client: Any,
    fixes: list[Fix],
    book: _Journal,
    settled: dict[str, dict[str, Any]],
    concurrency: int,
    log: AuditLog | None,
    shown: Any,
    senders: dict[str, tuple[Any, str | None]],
    approver: Any = None,
) -> list[dict[str, Any]]:
    user = getattr(client, "username", "?")
    bar = _Bar(shown)
    stop = threading.Event()
    halted: list[str] = []  # why the run stopped sending, once it did

    def attempt(fix: Fix) -> tuple[dict[str, Any], bool, BaseException | None]:
        """(the result row, whether its outcome is definite, the failure if any)."""
        sender, approved_by = senders.get(fix.key, (client, None))
        if fix.operation != "balance":
            book.add(
                {
                    "event": "sending",
                    "line": fix.line,
                    "operation": fix.operation,
                    "card": fix.card.masked,
                    "amount": None if fix.amount is None else str(fix.amount),
                    "idempotency_key": fix.key,
                    "sent_as": sender.username,
                }
            )
        if fix.operation in CASE_OPERATIONS:  # the case records its own steps
            entry, failure = _run_case(client, fix, log, approver)
            if isinstance(failure, errors.ApprovalRequired):  # nothing was sent
                book.add({"event": "unsent", "idempotency_key": fix.key}, durable=False)
            elif entry["status"] != ERROR:
                book.add({"event": "done", **entry}, durable=False)
            return entry, entry["status"] not in (ERROR, NOT_SENT), failure
        outcome = operations.apply(sender, fix.as_operation())
        entry = _result(fix, outcome)
        if outcome.definite and fix.operation != "balance":
            book.add({"event": "done", **entry, "status": outcome.status}, durable=False)
        if log is not None:
            _record_row(log, user, fix, entry, outcome.status, approved_by)
        return entry, outcome.definite, outcome.error

    def chain(rows: list[Fix]) -> list[tuple[str, dict[str, Any]]]:
        """A chain's rows, in file order; after a row of unknown outcome, the later rows
        of its card(s) wait (a replace row's: both cards')."""
        out: list[tuple[str, dict[str, Any]]] = []
        # card -> (the line it waits for, that line's cards, why it waits)
        waiting: dict[str, tuple[int, tuple[str, ...], str]] = {}
        for fix in rows:
            cards = _cards_of(fix)
            held = next((waiting[c] for c in cards if c in waiting), None)
            if stop.is_set():
                entry = _not_sent(fix, halted[0] if halted else "the run was stopped")
            elif held is not None:
                line, of, why = held
                which = (
                    "the same card"
                    if fix.card.number in of
                    else "a card a replace row links to this one"
                )
                entry = _not_sent(
                    fix,
                    f"not sent: line {line} ({which}) {why}, and this row must follow it; "
                    "run the file again",
                )
                waiting.update(dict.fromkeys(cards, (line, (*of, *cards), why)))
            else:
                try:
                    entry, definite, failure = attempt(fix)
                except BaseException:  # Ctrl-C, a crash: no other row may start now
                    stop.set()
                    raise
                if not definite and fix.operation != "balance":
                    why = (
                        "was not sent: it needs approval"
                        if entry["status"] == NOT_SENT
                        else "has an unknown outcome"
                    )
                    waiting.update(dict.fromkeys(cards, (fix.line, cards, why)))
                if isinstance(failure, errors.ConnectError | errors.AuthenticationError):
                    halted.append(
                        f"not sent: the run stopped sending at line {fix.line} "
                        f"({entry['status']}: {type(failure).__name__}); run the file again"
                    )
                    stop.set()
            out.append((fix.key, entry))
            bar.advance()
        return out

    pending = [f for f in fixes if f.key not in settled]
    results = dict(settled)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(chain, c) for c in _by_card(pending)]
        for done in _gather(futures, stop):
            results.update(done)
    return [results[f.key] for f in fixes]


class _StepLog(AuditLog):
    """A case's audit log for one bulk row: each step goes to bulk's log (if any), and what
    the row needs is remembered (how many steps were recorded, the last decline's code)."""

    def __init__(self, inner: AuditLog | None) -> None:  # no super(): it opens no file
        self.path = inner.path if inner is not None else Path(os.devnull)
        self.inner = inner
        self.records = 0
        self.declined_code: str | None = None

    def record(self, **fields: Any) -> dict[str, Any]:
        self.records += 1
        if fields.get("outcome") == DECLINED and fields.get("statuscode"):
            self.declined_code = fields["statuscode"]
        return fields if self.inner is None else self.inner.record(**fields)


def _case_entry(
    fix: Fix,
    status: str,
    description: str,
    *,
    statuscode: str | None = None,
    host_ref: str | None = None,
    balance: Decimal | None = None,
    replayed: bool = False,
) -> dict[str, Any]:
    return {
        "line": fix.line,
        "operation": fix.operation,
        "card": fix.card.masked,
        "status": status,
        "statuscode": statuscode,
        "description": scrub("; ".join(" ".join(t.split()) for t in description.splitlines())),
        "host_ref": host_ref,
        "new_balance": None if balance is None else str(balance),
        "replayed": replayed,
        "idempotency_key": fix.key,
    }


def _case_done(
    fix: Fix, done: cases.Replacement | cases.Reversal | cases.Adjustment
) -> dict[str, Any]:
    """The result row of a case that completed (now, or by an earlier run: ``already
    applied`` when every step was found done)."""
    earlier = bool(done.steps) and all(s.earlier for s in done.steps)
    if isinstance(done, cases.Replacement):
        money = [s for s in done.steps if s.operation in MONEY_OPERATIONS]
        host_ref = money[-1].host_ref if money else None
        balance = done.old_balance
        what = (
            f"moved {done.moved:.2f} onto card {done.new_card} (which holds "
            f"{done.new_balance:.2f} now) and blocked this card"
        )
    elif isinstance(done, cases.Reversal):
        host_ref, balance = done.host_ref, done.balance
        what = f"reversed {done.reversed_type} {done.reversed_host_ref} ({done.amount:.2f})"
    else:
        host_ref, balance = done.host_ref, done.balance
        what = f"adjusted by {done.amount:+.2f}"
    if earlier:
        return _case_entry(
            fix,
            ALREADY_APPLIED,
            f"applied earlier (every step of case {done.case_id} was found done; nothing "
            f"moved now): {what}",
            statuscode="000000",
            host_ref=host_ref,
            balance=balance,
            replayed=True,
        )
    return _case_entry(
        fix,
        APPROVED,
        f"{what}; case {done.case_id}",
        statuscode="000000",
        host_ref=host_ref,
        balance=balance,
    )


def _run_case(
    client: Any, fix: Fix, log: AuditLog | None, approver: Any = None
) -> tuple[dict[str, Any], BaseException | None]:
    """A card-case row through :mod:`cases` (which records each step it sends in the audit
    log); its result row, and the failure if any. Never raises for what the server or the
    network did."""
    steps = _StepLog(log)
    store, reason = fix.store_id, fix.reason or ""
    failure: BaseException | None = None
    done: cases.Replacement | cases.Reversal | cases.Adjustment
    try:
        if fix.operation == "replace":
            assert fix.new_card is not None
            done = cases.replace(
                client,
                fix.card,
                fix.new_card,
                store,
                reason,
                audit_log=steps,
                approver=approver,
            )
        elif fix.operation == "reverse":
            ref = fix.reversed_ref or ""
            done = cases.reverse(
                client, fix.card, ref, store, reason, audit_log=steps, approver=approver
            )
        else:  # adjust: the row's own key (two identical rows are two corrections)
            amount = fix.amount or Decimal(0)
            done = cases.adjust(
                client, fix.card, amount, store, reason, fix.key, steps, approver=approver
            )
        entry = _case_done(fix, done)
    except errors.ApprovalRequired as refused:
        failure = refused
        entry = _case_entry(fix, NOT_SENT, str(refused))
    except cases.CaseIncomplete as stopped:
        failure = stopped
        entry = _case_entry(fix, ERROR, f"{stopped} (the next run of the file finishes it)")
    except cases.CaseError as refused:
        failure = refused
        entry = _case_entry(fix, DECLINED, str(refused), statuscode=steps.declined_code)
    except errors.Declined as declined:
        failure = declined
        entry = _case_entry(
            fix, DECLINED, declined.description or str(declined), statuscode=declined.statuscode
        )
    except (errors.RequestRejected, errors.InvalidInput) as rejected:
        failure = rejected
        entry = _case_entry(fix, REJECTED, str(rejected))
    except errors.GiftCardError as failed:
        failure = failed
        entry = _case_entry(fix, ERROR, str(failed))
    if log is not None and steps.records == 0:  # no step was sent: the row is its record
        outcome = APPROVED if entry["status"] == ALREADY_APPLIED else entry["status"]
        _record_row(log, getattr(client, "username", "?"), fix, entry, outcome)
    return entry, failure


def _record_row(
    log: AuditLog,
    user: str,
    fix: Fix,
    entry: dict[str, Any],
    outcome: str,
    approved_by: str | None = None,
) -> None:
    """A row's audit record: what it did and what came of it."""
    log.record(
        user=user,
        approved_by=approved_by,
        operation=f"bulk {fix.operation}",
        outcome=outcome,
        card=fix.card,
        amount=fix.amount,
        store_id=fix.store_id,
        host_ref=entry["host_ref"],
        statuscode=entry["statuscode"],
        description=entry["description"],
        idempotency_key=fix.key,
    )


@dataclass
class _CardState:
    state: str  # unsold | active | blocked | expired
    balance: Decimal
    expires: datetime | None


def _state_of(balance: models.Balance) -> _CardState:
    if balance.activated_at is None:
        state = "unsold"
    elif balance.expires_at is not None and balance.expires_at <= datetime.now(UTC):
        state = "expired"
    else:
        state = "active" if balance.active else "blocked"
    return _CardState(state, balance.balance, balance.expires_at)


def _money(amount: Decimal) -> str:
    return f"{amount:,.2f}"


# A prediction: (status, status code, why, what the row's card would hold after it).
_Prediction = tuple[str, str | None, str, Decimal | None]


class _Predictor:
    """What the server would answer to each row, from the user's ``verify`` answer and the
    cards' states, rows applied in file order (a card case: as :mod:`cases` would run it,
    from the cards' states and histories)."""

    def __init__(
        self,
        verification: models.Verification,
        user: str,
        approver: models.Verification | None = None,
    ) -> None:
        self.user = user
        self.stores = {s.id.lower() for s in verification.stores}
        self.limit = verification.max_amount
        self.read_only = verification.read_only
        self.approver = approver  # who approves amounts above the user's own limit
        self.done_cases: set[str] = set()  # replace cases an earlier row would complete
        self.reversed: set[str] = set()  # hostRefs an earlier row would reverse

    def decline(self, fix: Fix, card: _CardState) -> tuple[str, str] | None:
        """(status code, why) of the decline the row would meet, or None."""
        op, amount = fix.operation, fix.amount or Decimal(0)
        if op == "balance":
            return None
        if self.read_only:
            return self.reads_only()
        if op in STATUS_OPERATIONS:
            if card.state == "unsold":
                return "100002", f"the card was never sold: there is nothing to {op}"
            if card.state == "active" and op == "unblock":
                return "100015", "the card is active already"
            if card.state == "blocked" and op == "block":
                return "100015", "the card is blocked already"
            return None
        if op == "adjust":  # plus: a reload; minus: a redemption
            op = "reload" if amount > 0 else "redeem"
        return self.money_decline(op, abs(amount), fix.store_id, card)

    def reads_only(self) -> tuple[str, str]:
        return "100017", f"user {self.user!r} may only read (role analyst)"

    def money_decline(
        self, op: str, amount: Decimal, store_id: str | None, card: _CardState
    ) -> tuple[str, str] | None:
        """(status code, why) of the decline a sale, reload or redemption would meet."""
        if store_id not in self.stores:
            return "100010", (
                f"store {store_id} is not one of the {len(self.stores)} store(s) user "
                f"{self.user!r} may act for"
            )
        if op == "sell" and card.state != "unsold":
            return "100004", "the card was sold already: reload it instead"
        if op != "sell":
            if card.state == "unsold":
                return "100002", "the card was never sold: sell it first"
            if card.state == "blocked":
                return "100002", "the card is blocked: unblock it first"
            if card.state == "expired":
                when = card.expires.date().isoformat() if card.expires else "?"
                return "100003", f"the card expired on {when}"
        if op != "redeem":
            if amount > SERVER_MAX_LOAD:
                return "100012", (
                    f"{_money(amount)} is over the server's limit of {_money(SERVER_MAX_LOAD)} "
                    "per sale or reload"
                )
            if card.balance + amount > SERVER_MAX_BALANCE:
                return "100012", (
                    f"the card would hold {_money(card.balance + amount)}, over the server's "
                    f"limit of {_money(SERVER_MAX_BALANCE)} per card"
                )
        if self.limit is not None and amount > self.limit:
            over = (
                f"{_money(amount)} is over user {self.user!r}'s own limit of {_money(self.limit)}"
            )
            theirs = self.approver
            if theirs is None:
                return "100012", f"{over}: the run needs approver= a user allowed it"
            if theirs.read_only:
                return "100017", f"{over}, and the approver {theirs.username!r} may only read"
            if theirs.max_amount is not None and amount > theirs.max_amount:
                return "100012", (
                    f"{over}, and over the approver {theirs.username!r}'s own limit of "
                    f"{_money(theirs.max_amount)}"
                )
        if op == "redeem" and amount > card.balance:
            return "100005", (
                f"the card would hold {_money(card.balance)} by then, less than {_money(amount)}"
            )
        return None

    @staticmethod
    def apply(fix: Fix, card: _CardState) -> None:
        amount = fix.amount or Decimal(0)
        if fix.operation == "sell":
            card.state, card.balance = "active", amount
        elif fix.operation in ("reload", "adjust"):
            card.balance += amount  # an adjustment's amount is signed
        elif fix.operation == "redeem":
            card.balance -= amount
        elif fix.operation in STATUS_OPERATIONS:
            card.state = "active" if fix.operation == "unblock" else "blocked"

    def replace(
        self,
        fix: Fix,
        old: _CardState,
        new: _CardState,
        case: Any,
        old_history: pl.DataFrame,
        new_history: pl.DataFrame,
    ) -> _Prediction:
        """A replace row, as ``cases.replace`` would run it; applies it when it would be."""
        assert fix.new_card is not None
        onto = fix.new_card.masked
        took = case.found(old_history, case.marker("take"))
        gave = case.found(new_history, case.marker("give"))
        if case.id in self.done_cases or (took is not None and gave is not None):
            return (
                ALREADY_APPLIED,
                None,
                f"case {case.id} (this card onto {onto}) was done earlier: the run finds its "
                "steps done and moves nothing",
                old.balance,
            )
        if self.read_only:
            return (WOULD_BE_DECLINED, *self.reads_only(), old.balance)
        if case.found(old_history, case.marker("undo-take")) is not None:
            return (
                WOULD_BE_DECLINED,
                None,
                f"case {case.id} (this card onto {onto}) was undone earlier: fix what stopped "
                "it, then replace with cases.replace and another key",
                old.balance,
            )

        def refused(why: str, code: str | None = None) -> _Prediction:
            return WOULD_BE_DECLINED, code, f"{why}; nothing would be sent", old.balance

        if took is not None:
            amount = Decimal(took["amount"])  # taken by an earlier run: the run gives it
        else:
            amount = old.balance
            if amount <= 0:
                return refused("the card holds nothing to move")
            if old.state in ("unsold", "expired"):
                return refused(f"the card is {old.state}: its balance cannot be moved")
            if new.state not in ("unsold", "active"):
                return refused(f"cannot move money onto card {onto}: it is {new.state}")
            # The take: a redemption of the whole balance (a blocked card is unblocked
            # for it, and blocked again).
            taking = _CardState("active", old.balance, old.expires)
            declined = self.money_decline("redeem", amount, fix.store_id, taking)
            if declined is not None:
                code, why = declined
                return refused(f"taking {_money(amount)} off the card: {why}", code)
        give = "sell" if new.state == "unsold" else "reload"
        # The give: a sale or reload in parts of at most the per-load limit, as the case does.
        loading = _CardState(new.state, new.balance, new.expires)
        for index, part in enumerate(cases._parts(amount)):
            declined = self.money_decline(
                give if index == 0 else "reload", part, fix.store_id, loading
            )
            if declined is not None:
                code, why = declined
                return (
                    WOULD_BE_DECLINED,
                    code,
                    f"card {onto} would refuse {_money(part)} ({why}): the case would put "
                    "the money back on this card, and nothing would move",
                    old.balance,
                )
            loading.state, loading.balance = "active", loading.balance + part
        old.balance -= amount
        old.state = "blocked"
        new.state, new.balance = "active", new.balance + amount
        self.done_cases.add(case.id)
        return (
            CHECKED,
            "000000",
            f"would move {_money(amount)} onto card {onto} (a {'sale' if give == 'sell' else give}"
            f", which would then hold {_money(new.balance)}) and block this card",
            old.balance,
        )

    def reverse(self, fix: Fix, card: _CardState, case: Any, history: pl.DataFrame) -> _Prediction:
        """A reverse row, as ``cases.reverse`` would run it; applies it when it would be."""
        ref = fix.reversed_ref or ""

        def refused(why: str, code: str | None = None) -> _Prediction:
            return WOULD_BE_DECLINED, code, f"{why}; nothing would be sent", card.balance

        target = history.filter(pl.col("host_ref") == ref)
        if target.is_empty():
            return refused(
                f"hostRef {ref} is not a transaction of this card (unknown, or another "
                "card's): pick one from cases.history()"
            )
        tx = target.row(0, named=True)
        if str(tx["pos_ref"] or "").startswith(f"case {case.id} "):
            return refused(f"hostRef {ref} is this case's own step")
        earlier = cases._reversals(history, ref)
        mark = case.marker(f"reversal {ref}")
        mine = [r for r in earlier if r["pos_ref"] == mark]
        if mine or ref in self.reversed:
            by = f" (hostRef {mine[0]['host_ref']})" if mine else " (by an earlier row)"
            return (
                ALREADY_APPLIED,
                None,
                f"hostRef {ref} was reversed earlier by this case{by}: the run finds it done "
                "and moves nothing",
                card.balance,
            )
        if earlier:
            return refused(
                f"hostRef {ref} was reversed already (by hostRef {earlier[0]['host_ref']})"
            )
        if self.read_only:
            return (WOULD_BE_DECLINED, *self.reads_only(), card.balance)
        amount, op = Decimal(tx["amount"]), cases._OPPOSITE[tx["type"]]
        if op == "redeem" and card.balance < amount:
            return refused(
                f"reversing {tx['type']} {ref} takes {_money(amount)} off the card, which would "
                f"hold {_money(card.balance)} by then"
            )
        declined = self.money_decline(op, amount, fix.store_id, card)
        if declined is not None:
            code, why = declined
            return WOULD_BE_DECLINED, code, f"reversing {ref} by a {op}: {why}", card.balance
        card.balance += amount if op == "reload" else -amount
        self.reversed.add(ref)
        return (
            CHECKED,
            "000000",
            f"would reverse {tx['type']} {ref} ({_money(amount)}) by a {op}",
            card.balance,
        )


def _predicted(
    fix: Fix,
    status: str,
    statuscode: str | None,
    description: str,
    balance: Decimal | None,
) -> dict[str, Any]:
    return {
        "line": fix.line,
        "operation": fix.operation,
        "card": fix.card.masked,
        "status": status,
        "statuscode": statuscode,
        "description": description,  # built from checked values (the server's: scrubbed)
        "host_ref": None,
        "new_balance": None if balance is None else str(balance),
        "replayed": False,
        "idempotency_key": fix.key,
    }


def _predict(
    client: Any,
    fixes: list[Fix],
    book: _Journal,
    settled: dict[str, dict[str, Any]],
    verification: models.Verification,
    concurrency: int,
    log: AuditLog | None,
    shown: Any,
    approver: models.Verification | None = None,
) -> list[dict[str, Any]]:
    user = getattr(client, "username", "?")
    todo = [f for f in fixes if f.key not in settled]
    cards: dict[tuple[str, str | None], Card] = {}
    rows_of: Counter[tuple[str, str | None]] = Counter()
    for fix in todo:
        ident = (fix.card.number, fix.card.security_code)
        cards.setdefault(ident, fix.card)
        rows_of[ident] += 1
        if fix.new_card is not None:  # a replace row's new card is checked too
            cards.setdefault((fix.new_card.number, fix.new_card.security_code), fix.new_card)
    bar = _Bar(shown)
    stop = threading.Event()

    def check(ident: tuple[str, str | None]) -> tuple[Any, models.Balance | errors.GiftCardError]:
        card = cards[ident]
        found: models.Balance | errors.GiftCardError
        try:
            found = client.balance(card)
        except errors.GiftCardError as failed:
            found = failed
        if log is not None:
            declined = isinstance(found, errors.Declined)
            log.record(
                user=user,
                operation="bulk dry run: balance",
                outcome="approved"
                if isinstance(found, models.Balance)
                else "declined"
                if declined
                else "error",
                card=card,
                statuscode=found.statuscode if isinstance(found, errors.Declined) else None,
                description=None if isinstance(found, models.Balance) else str(found),
            )
        bar.advance(rows_of[ident])
        return ident, found

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        checked = dict(_gather([pool.submit(check, i) for i in cards], stop))

    predictor = _Predictor(verification, user, approver)
    states: dict[str, _CardState] = {}
    balances: dict[str, models.Balance] = {}
    for (number, _), found in checked.items():
        if isinstance(found, models.Balance) and number not in states:
            states[number] = _state_of(found)
            balances[number] = found
    histories, unread = _case_histories(client, todo, balances)
    unknown = book.unknown()
    results = dict(settled)
    for fix in todo:
        found = checked[(fix.card.number, fix.card.security_code)]
        state = states.get(fix.card.number)
        new_found = (
            None
            if fix.new_card is None
            else checked[(fix.new_card.number, fix.new_card.security_code)]
        )
        if fix.key in unknown:
            results[fix.key] = _predicted(
                fix,
                CHECKED,
                None,
                "sent by an earlier run whose answer was lost: the run sends it again under "
                "the same key, and the server applies it at most once"
                if fix.operation not in CASE_OPERATIONS
                else "started by an earlier run whose answer was lost: the run finishes the "
                "case, applying each of its steps once",
                None,
            )
        elif isinstance(found, errors.Declined):
            results[fix.key] = _predicted(
                fix, WOULD_BE_DECLINED, found.statuscode, scrub(found.description), None
            )
        elif isinstance(new_found, errors.Declined):
            assert fix.new_card is not None
            why = f"the new card {fix.new_card.masked}: {scrub(new_found.description)}"
            results[fix.key] = _predicted(fix, WOULD_BE_DECLINED, new_found.statuscode, why, None)
        elif isinstance(found, errors.GiftCardError) or state is None:
            why = scrub(str(found)) if isinstance(found, errors.GiftCardError) else "no check"
            results[fix.key] = _predicted(fix, NOT_CHECKED, None, f"not checked: {why}", None)
        elif fix.new_card is not None and fix.new_card.number not in states:
            why = scrub(str(new_found)) if new_found is not None else "no check"
            results[fix.key] = _predicted(
                fix, NOT_CHECKED, None, f"not checked: the new card: {why}", None
            )
        elif fix.operation in ("replace", "reverse") and unread is not None:
            results[fix.key] = _predicted(
                fix, NOT_CHECKED, None, f"not checked: the card's history: {unread}", None
            )
        elif fix.operation == "replace":
            assert fix.new_card is not None
            old_ref, new_ref = (balances[c.number].card_ref for c in (fix.card, fix.new_card))
            identity = f"{old_ref or client.derived_key(fix.card.number)}>" + (
                new_ref or client.derived_key(fix.new_card.number)
            )
            # The case's id and step marks, as cases.replace derives them (its default key).
            case = cases._Case(client, "replace", identity, None, None)
            status, code, why, after = predictor.replace(
                fix,
                state,
                states[fix.new_card.number],
                case,
                histories[fix.card.number],
                histories[fix.new_card.number],
            )
            results[fix.key] = _predicted(fix, status, code, why, after)
        elif fix.operation == "reverse":
            case = cases._Case(client, "reverse", fix.reversed_ref or "", None, None)
            status, code, why, after = predictor.reverse(
                fix, state, case, histories[fix.card.number]
            )
            results[fix.key] = _predicted(fix, status, code, why, after)
        else:
            declined = predictor.decline(fix, state)
            if declined is not None:
                code, why = declined
                results[fix.key] = _predicted(fix, WOULD_BE_DECLINED, code, why, state.balance)
            else:
                predictor.apply(fix, state)
                results[fix.key] = _predicted(
                    fix, CHECKED, "000000", "would be approved", state.balance
                )
    return [results[f.key] for f in fixes]


def _case_histories(
    client: Any, fixes: list[Fix], balances: dict[str, models.Balance]
) -> tuple[dict[str, pl.DataFrame], str | None]:
    """The histories of the cards that replace and reverse rows are about (one fetch of the
    batches, as ``cases.history`` reads them), and why they could not be read, if so."""
    wanted = {
        number
        for f in fixes
        if f.operation in ("replace", "reverse")
        for number in _cards_of(f)
        if number in balances
    }
    if not wanted:
        return {}, None
    numbers = sorted(wanted)
    try:
        found = cases._histories(client, [balances[n] for n in numbers], None, None)
    except errors.GiftCardError as failed:
        return {}, scrub(str(failed))
    return dict(zip(numbers, found, strict=True)), None
