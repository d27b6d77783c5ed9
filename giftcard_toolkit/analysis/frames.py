"""Batches and transactions as polars DataFrames, with their schemas written down.

Two frames, one schema each (``BATCH_SCHEMA``, ``TRANSACTION_SCHEMA``), enforced by every
builder and reader here: money is ``Decimal(18, 2)``, times are UTC datetimes, ``type`` and
``status`` are enums. Cards appear as ``card_last4`` and ``card_ref`` (the server's stable
pseudonym, null when a server does not send one): no frame can hold a full card number.
A transaction's ``position`` is its place in its batch as the server listed it (0 first,
oldest first): the server's own order, which breaks ties in time (a server that rounds time,
several server processes) so that a card's first and last transactions never depend on the
order of the frame's rows.

Ways in:

* ``fetch(client)``: every batch of every granted store, through a client (sync, or async
  and awaited), with a progress bar across stores and pages;
* ``batches_frame(batches)`` / ``transactions_frame(batches)``: from ``models.Batch``;
* ``from_json(envelopes)``: straight from ``GET /Batch`` answers as the server sends them,
  parsed by polars itself (about half a million transactions a second here; the server's
  own layout is cut into one line an object first) when they are in the contract's field
  names throughout, else by the tolerant ``models``;
* ``read(path)``: a Parquet or CSV file written by ``write``;
* ``sync(client, path)`` / ``scan(path)`` / ``load(path)``: a local, incremental Parquet
  dataset of the whole history (``giftcard_toolkit.analysis.dataset``, re-exported here).
"""

from __future__ import annotations

import inspect
import io
import json
import re
from collections.abc import Awaitable, Generator, Iterable, Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from giftcard_toolkit import models

if TYPE_CHECKING:
    from giftcard_toolkit.analysis.dataset import SyncReport, load, scan, sync

__all__ = [
    "BATCH_SCHEMA",
    "MONEY",
    "TIME",
    "TRANSACTION_SCHEMA",
    "SyncReport",
    "batches_frame",
    "conform",
    "fetch",
    "from_json",
    "load",
    "read",
    "scan",
    "sync",
    "transactions_frame",
    "write",
]
# The local dataset (which builds on this module) is re-exported when first asked for.
_DATASET = ("SyncReport", "load", "scan", "sync", "DatasetError", "SyncError", "StoreSync")


def __getattr__(name: str) -> Any:
    if name in _DATASET:
        from giftcard_toolkit.analysis import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MONEY = pl.Decimal(18, 2)
TIME = pl.Datetime("us", "UTC")
TRANSACTION_TYPE = pl.Enum(["sale", "reload", "redeem"])
BATCH_STATUS = pl.Enum(["open", "closed"])

_BATCH_COLUMNS: dict[str, Any] = {
    "store_id": pl.String,
    "store_name": pl.String,
    "batch_id": pl.String,
    "status": BATCH_STATUS,
    "opened_at": TIME,
    "closed_at": TIME,
    "transaction_count": pl.Int64,
    "sold": MONEY,
    "reloaded": MONEY,
    "redeemed": MONEY,
    "net": MONEY,
}
_TRANSACTION_COLUMNS: dict[str, Any] = {
    "store_id": pl.String,
    "store_name": pl.String,
    "batch_id": pl.String,
    "host_ref": pl.String,
    "position": pl.Int32,
    "type": TRANSACTION_TYPE,
    "card_last4": pl.String,
    "card_ref": pl.String,
    "amount": MONEY,
    "previous_balance": MONEY,
    "new_balance": MONEY,
    "pos_ref": pl.String,
    "at": TIME,
    "username": pl.String,
}
BATCH_SCHEMA = pl.Schema(_BATCH_COLUMNS)
TRANSACTION_SCHEMA = pl.Schema(_TRANSACTION_COLUMNS)
PAGE = 1000  # the most batches GET /Batch answers at once


def _empty(schema: pl.Schema) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """``df`` with exactly ``schema``'s columns, in order, cast to its types.

    Raises ``ValueError`` naming missing columns; a column that would carry a full card
    number (more than 4 digits in ``card_last4``) is refused. A transaction frame built
    by hand without ``position`` gets each row's place in its batch in the frame's order.
    """
    if "position" in schema and "position" not in df.columns and "batch_id" in df.columns:
        df = df.with_columns(pl.int_range(pl.len()).over("store_id", "batch_id").alias("position"))
    missing = [name for name in schema if name not in df.columns]
    if missing:
        raise ValueError(f"missing columns {missing}; expected {list(schema)}")
    out = df.select([pl.col(name).cast(dtype, strict=True) for name, dtype in schema.items()])
    if "card_last4" in out.columns and out["card_last4"].str.len_chars().max() not in (None, 4):
        raise ValueError("card_last4 must hold the last four digits only")
    return out


# ------------------------------------------------------------------ from models


def batches_frame(batches: Iterable[models.Batch]) -> pl.DataFrame:
    """One row a batch, with its reported totals."""
    rows = [
        {
            "store_id": b.store_id,
            "store_name": b.store_name,
            "batch_id": b.id,
            "status": b.status,
            "opened_at": b.opened_at,
            "closed_at": b.closed_at,
            "transaction_count": b.transaction_count,
            "sold": b.sold,
            "reloaded": b.reloaded,
            "redeemed": b.redeemed,
            "net": b.net,
        }
        for b in batches
    ]
    if not rows:
        return _empty(BATCH_SCHEMA)
    return conform(pl.DataFrame(rows, schema_overrides=_loose(BATCH_SCHEMA)), BATCH_SCHEMA)


def transactions_frame(batches: Iterable[models.Batch]) -> pl.DataFrame:
    """One row a transaction, in batch order (oldest first within a batch)."""
    rows = [
        {
            "store_id": b.store_id,
            "store_name": b.store_name,
            "batch_id": b.id,
            "host_ref": t.host_ref,
            "position": position,
            "type": t.type,
            "card_last4": t.card_last4,
            "card_ref": t.card_ref,
            "amount": t.amount,
            "previous_balance": t.previous_balance,
            "new_balance": t.new_balance,
            "pos_ref": t.pos_ref,
            "at": t.at,
            "username": t.username,
        }
        for b in batches
        for position, t in enumerate(b.transactions)
    ]
    if not rows:
        return _empty(TRANSACTION_SCHEMA)
    frame = pl.DataFrame(rows, schema_overrides=_loose(TRANSACTION_SCHEMA))
    return conform(frame, TRANSACTION_SCHEMA)


def _loose(schema: pl.Schema) -> dict[str, Any]:
    """Build-time types: enums are cast afterwards (with a clear error on a bad value)."""
    return {k: (pl.String if isinstance(v, pl.Enum) else v) for k, v in schema.items()}


# -------------------------------------------------------------------- from JSON

# polars reads JSON numbers as binary floats; each is then rounded to cents, which is exact
# for any amount of at most 2 decimals below 10^13 (15+ significant digits), and checked.
_JSON_NUMBER = pl.Float64
_EXACT_LIMIT = 1e13
_JSON_TRANSACTION = pl.Struct(
    {
        "hostRef": pl.String,
        "type": pl.String,
        "cardno": pl.String,
        "cardref": pl.String,
        "amount": _JSON_NUMBER,
        "previousbalance": _JSON_NUMBER,
        "newbalance": _JSON_NUMBER,
        "posref": pl.String,
        "datetime": pl.String,
        "username": pl.String,
    }
)
_JSON_BATCH = pl.Struct(
    {
        "batchid": pl.String,
        "status": pl.String,
        "opened": pl.String,
        "closed": pl.String,
        "transactioncount": pl.Int64,
        "soldamount": _JSON_NUMBER,
        "reloadedamount": _JSON_NUMBER,
        "redeemedamount": _JSON_NUMBER,
        "netamount": _JSON_NUMBER,
        "transactions": pl.List(_JSON_TRANSACTION),
    }
)
_JSON_ENVELOPE: dict[str, Any] = {
    "statuscode": pl.String,
    "franchiseeid": pl.String,
    "storename": pl.String,
    "batches": pl.List(_JSON_BATCH),
}
_CONTRACT_KEYS = (
    set(_JSON_ENVELOPE)
    | {"description", "status"}
    | {f.name for f in _JSON_BATCH.fields}
    | {f.name for f in _JSON_TRANSACTION.fields}
)
_KEY = re.compile(r'"([A-Za-z]+)"\s*:')

# What the fast path must have read for its frames to be believed. A field that is always
# there, or an object, spelled otherwise than the contract (a production server's
# ``HostRef``) is read by polars as a null, or as a row that is then dropped: the first is
# looked for below, the second counted.
_BATCH_REQUIRED = (
    "store_id",
    "status",
    "opened_at",
    "transaction_count",
    "sold",
    "reloaded",
    "redeemed",
    "net",
)
_TRANSACTION_REQUIRED = (
    "type",
    "card_last4",
    "amount",
    "previous_balance",
    "new_balance",
    "at",
    "username",
)
# A field the contract lets be null or absent is believed null only when no text holds its
# key in another letter case (looked for only then: a scan of the text).
_BATCH_OPTIONAL = {
    "store_name": "storename",
    "closed_at": "closed",
    "_transactions": "transactions",
}
_TRANSACTION_OPTIONAL = {"card_ref": "cardref", "pos_ref": "posref"}
_OTHER_SPELLING = {
    key: re.compile(rb'"(?i:' + key.encode() + rb')(?<!"' + key.encode() + rb')"\s*:')
    for key in ("storename", "batches", "closed", "transactions", "cardref", "posref")
}


_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%:z"  # what servers send; parsed far faster when named


def _time(column: str, named_format: bool = True) -> pl.Expr:
    fmt = _ISO_FORMAT if named_format else None
    return pl.col(column).str.to_datetime(fmt, time_zone="UTC", time_unit="us")


def from_json(envelopes: bytes | str | Iterable[bytes | str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(batches, transactions) from ``GET /Batch`` answers, as the server sent them.

    Answers in the contract's field names are read by polars in one pass; any other
    spelling (a production server's ``HostRef``) anywhere in them, or an amount that is not
    a whole number of cents, sends all of them through the tolerant, exact models instead.
    """
    texts = [envelopes] if isinstance(envelopes, bytes | str) else list(envelopes)
    raw = [t.encode() if isinstance(t, str) else t for t in texts]
    if not raw:
        return _empty(BATCH_SCHEMA), _empty(TRANSACTION_SCHEMA)
    if all(_speaks_contract(r) for r in raw):  # a quick first look: only the first keys
        read = _read_contract(raw)
        if read is not None:
            return read
    return _read_tolerant(raw)


def _read_tolerant(raw: Sequence[bytes]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The frames of ``raw`` read by ``models``: any letter case, money exact."""
    parsed = [b for r in raw for b in models.parse_batches(json.loads(r, parse_float=Decimal))]
    return batches_frame(parsed), transactions_frame(parsed)


def _read_contract(raw: Sequence[bytes]) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """The frames of ``raw`` read by polars in the contract's field names, or None when
    anything in them was not read whole (another spelling, an inexact amount)."""
    flat = _read_flat(raw)  # the server's own layout: one flat read a level
    if flat is None:
        flat = _read_nested(raw)  # any other layout: the envelopes read whole
    envelope, batches, txs = flat
    try:
        collected = pl.collect_all(_json_frames(batches, txs, named_format=True))
    except pl.exceptions.PolarsError:  # a time in another ISO 8601 layout: infer it
        collected = pl.collect_all(_json_frames(batches, txs, named_format=False))
    batch_frame, tx_frame = collected
    if not _read_whole(raw, envelope, batch_frame, tx_frame):
        return None
    money = [("sold", "reloaded", "redeemed", "net"), ("amount", "previous_balance", "new_balance")]
    if not all(
        _cents_exact(frame, columns) for frame, columns in zip(collected, money, strict=True)
    ):
        return None
    return conform(batch_frame, BATCH_SCHEMA), conform(tx_frame, TRANSACTION_SCHEMA)


def _read_whole(
    raw: Sequence[bytes], envelope: pl.DataFrame, batch_frame: pl.DataFrame, tx_frame: pl.DataFrame
) -> bool:
    """Whether polars read every object and field of ``raw`` that the tolerant reader would.

    Polars reads a key spelled otherwise than the contract as absent: every object must
    have come through (counted before any row was dropped), every field the contract
    always sends must be there, and a null in a field it may leave out is believed only
    when no answer holding that row spells the key in another letter case.
    """
    ok = pl.col("statuscode") == "000000"
    no_status, no_store, batches_sent = envelope.select(
        pl.col("statuscode").null_count(),
        pl.col("franchiseeid").filter(ok).null_count(),
        pl.col("_batches").filter(ok).sum(),
    ).row(0)
    if no_status or no_store or batches_sent != batch_frame.height:
        return False
    if (batch_frame["_transactions"].sum() or 0) != tx_frame.height:
        return False
    batch_nulls = batch_frame.null_count().row(0, named=True)
    tx_nulls = tx_frame.null_count().row(0, named=True)
    if any(batch_nulls[c] for c in _BATCH_REQUIRED) or any(
        tx_nulls[c] for c in _TRANSACTION_REQUIRED
    ):
        return False
    # Optional fields that came out null: the answers holding such a row, by their index.
    suspects: list[tuple[str, set[int]]] = []
    for column, key in ("storename", "storename"), ("_batches", "batches"):
        rows = envelope.select(pl.arg_where(ok & pl.col(column).is_null()))
        if rows.height:
            suspects.append((key, set(rows.to_series().to_list())))
    stores = envelope["franchiseeid"].str.to_lowercase().to_list()
    for frame, nulls, optional in (
        (batch_frame, batch_nulls, _BATCH_OPTIONAL),
        (tx_frame, tx_nulls, _TRANSACTION_OPTIONAL),
    ):
        for column, key in optional.items():
            missing = pl.col(column).is_null()
            if column == "closed_at":  # an open batch has no closing time in any spelling
                missing &= pl.col("status") == "closed"
            held = set(frame.filter(missing)["store_id"].to_list()) if nulls[column] else set()
            if held:
                suspects.append((key, {i for i, s in enumerate(stores) if s in held}))
    return not any(_OTHER_SPELLING[key].search(raw[i]) for key, rows in suspects for i in rows)


# ``_read_nested`` and ``_read_flat`` give the same three frames, in the answers' order:
# the envelopes (their own fields and ``_batches``, how many batches each listed: null for
# none listed), and (lazy) the batches of the successful ones with ``store_id``,
# ``store_name`` and ``_transactions`` (how many transactions each listed), and their
# transactions with ``store_id``, ``store_name``, ``batch_id`` and ``_position`` (the place
# in its batch's list, counted before anything is dropped). A batch read without its
# ``batchid``, a transaction without its ``hostRef``, is dropped (and then missed by the
# counts in ``_read_whole``).
_Flat = tuple[pl.DataFrame, pl.LazyFrame, pl.LazyFrame]


def _read_nested(raw: Sequence[bytes]) -> _Flat:
    """The envelopes read whole with ``_JSON_ENVELOPE``, their lists exploded."""
    lines = b"\n".join(r.replace(b"\n", b" ") for r in raw)
    envelope = pl.read_ndjson(io.BytesIO(lines), schema=_JSON_ENVELOPE)
    batches = (
        envelope.lazy()
        .filter(pl.col("statuscode") == "000000")
        .select(
            pl.col("franchiseeid").str.to_lowercase().alias("store_id"),
            pl.col("storename").alias("store_name"),
            "batches",
        )
        .explode("batches")
        .unnest("batches")
        .filter(pl.col("batchid").is_not_null())
    )
    txs = (
        batches.select(
            "store_id", "store_name", pl.col("batchid").alias("batch_id"), "transactions"
        )
        .with_columns(pl.col("transactions").list.eval(pl.int_range(pl.len())).alias("_position"))
        .explode("transactions", "_position")
        .unnest("transactions")
        .filter(pl.col("hostRef").is_not_null())
    )
    batches = batches.with_columns(pl.col("transactions").list.len().alias("_transactions"))
    envelope = envelope.with_columns(pl.col("batches").list.len().alias("_batches"))
    return envelope.drop("batches"), batches.drop("transactions"), txs


# The server's own layout, which ``_read_flat`` cuts into one line an object: every batch
# starts ``{"batchid":`` and lists its transactions last, every transaction starts
# ``{"hostRef":``, an envelope lists its batches last; no white space between.
_ENVELOPE_FIELDS = {k: v for k, v in _JSON_ENVELOPE.items() if k != "batches"}
_BATCH_FIELDS = {f.name: f.dtype for f in _JSON_BATCH.fields if f.name != "transactions"}
_TRANSACTION_FIELDS = {f.name: f.dtype for f in _JSON_TRANSACTION.fields}
_BATCHES_KEY, _TRANSACTIONS_KEY = b'"batches"', b'"transactions"'
_BATCHES_OPEN, _BATCHES_NONE = b',"batches":[', b',"batches":[]}'
_TRANSACTIONS_OPEN, _TRANSACTIONS_NONE = b',"transactions":[', b',"transactions":[]}'
_WORD = np.dtype("<u8")  # the 8 bytes after an object's ``{``, as one number
_TRANSACTION_WORD = np.frombuffer(b'"hostRef', _WORD)[0]
_BATCH_WORD = np.frombuffer(b'"batchid', _WORD)[0]
_SCAN = 1 << 22  # bytes looked at a time for ``{``: the mask stays in cache


def _object_starts(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``{"hostRef":`` and ``{"batchid":`` begin in ``text`` (the candidates: each
    is believed only once the lines it cuts are read whole)."""
    if len(text) < 16:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    mask = np.empty(min(_SCAN, len(text)), bool)
    parts = []
    for at in range(0, len(text), _SCAN):
        window = text[at : at + _SCAN]
        found = mask[: len(window)]
        np.equal(window, ord("{"), out=found)
        parts.append(np.flatnonzero(found) + at)
    opens = np.concatenate(parts)
    opens = opens[opens + 11 <= len(text)]  # room for the key after it
    words = np.lib.stride_tricks.as_strided(text, shape=(len(text) - 7, 8), strides=(1, 1))
    word = words[opens + 1].view(_WORD)[:, 0]
    colon = (text[opens + 9] == ord('"')) & (text[opens + 10] == ord(":"))
    return opens[colon & (word == _TRANSACTION_WORD)], opens[colon & (word == _BATCH_WORD)]


def _read_flat(raw: Sequence[bytes]) -> _Flat | None:
    """The three frames of answers in the server's own layout, each object read by polars
    on a line of its own (no nested lists to build: several times faster); None for any
    other layout, or anything polars cannot read so (then read whole, as it always was).

    The cuts are made where the layout says an object starts, and then proved: the glue
    between the pieces is exactly the layout's (``,"transactions":[``, ``},``, ``]},``,
    ``]}``), and every piece (an envelope without its batches, a batch without its
    transactions, a transaction) is read by polars as one whole JSON object on its line.
    Pieces that are whole objects joined by that glue are a JSON text of that one shape,
    so each value is read just as in the envelope read whole.
    """
    if any(r.find(b"\n") != -1 for r in raw):
        return None
    # The transactions, one a line, are cut in a copy of the answers: the comma between
    # two becomes a line break, everything around them (the envelopes' and batches' own
    # fields and brackets) white space.
    buffer = io.BytesIO()
    offsets = []
    for r in raw:
        offsets.append(buffer.tell())
        buffer.write(r)
        buffer.write(b"\n")
    view = buffer.getbuffer()
    try:
        cut = _cut(raw, offsets, np.frombuffer(view, np.uint8))
    finally:
        view.release()
    if cut is None:
        return None
    envelope_lines, batch_lines, batches_listed, transactions_listed = cut
    buffer.seek(0)
    try:
        envelope = pl.read_ndjson(b"\n".join(envelope_lines), schema=_ENVELOPE_FIELDS)
        batches = pl.read_ndjson(b"\n".join(batch_lines), schema=_BATCH_FIELDS)
        txs = pl.read_ndjson(buffer, schema=_TRANSACTION_FIELDS)
    except pl.exceptions.PolarsError:
        return None
    if (envelope.height, batches.height, txs.height) != (
        len(raw),
        len(batch_lines),
        int(transactions_listed.sum()),
    ):
        return None
    # Each batch's envelope, each transaction's batch and place in it: by the counts.
    in_envelope = np.repeat(np.arange(len(raw), dtype=np.uint32), batches_listed)
    in_batch = np.repeat(np.arange(len(batch_lines), dtype=np.uint32), transactions_listed)
    first = np.cumsum(transactions_listed) - transactions_listed
    position = np.arange(len(in_batch), dtype=np.int64) - np.repeat(first, transactions_listed)
    ok = (envelope["statuscode"] == "000000").fill_null(False).to_numpy()
    kept = ok[in_envelope] & batches["batchid"].is_not_null().to_numpy()
    stores = envelope.select(
        pl.col("franchiseeid").str.to_lowercase().alias("store_id"),
        pl.col("storename").alias("store_name"),
    )[in_envelope]
    batches = pl.concat([stores, batches], how="horizontal").with_columns(
        pl.Series("_transactions", transactions_listed, dtype=pl.UInt32)
    )
    keys = batches.select("store_id", "store_name", pl.col("batchid").alias("batch_id"))
    txs = pl.concat([keys[in_batch], pl.DataFrame({"_position": position}), txs], how="horizontal")
    envelope = envelope.with_columns(pl.Series("_batches", batches_listed, dtype=pl.UInt32))
    tx_kept = kept[in_batch] & txs["hostRef"].is_not_null().to_numpy()
    # Usually nothing is dropped: then no filter copies the rows.
    return (
        envelope,
        batches.lazy() if kept.all() else batches.lazy().filter(pl.Series(kept)),
        txs.lazy() if tx_kept.all() else txs.lazy().filter(pl.Series(tx_kept)),
    )


def _cut(
    raw: Sequence[bytes], offsets: Sequence[int], text: np.ndarray
) -> tuple[list[bytes], list[bytes], np.ndarray, np.ndarray] | None:
    """``_read_flat``'s cuts, made in ``text`` (the answers, each followed by a line break,
    starting at ``offsets``): the envelope and batch lines, how many batches each envelope
    lists and how many transactions each batch; None where the glue is not the layout's."""
    tx_starts, batch_starts = _object_starts(text)
    # A batch ends before the comma that precedes the next one, the last of an envelope
    # before the envelope's closing ``]}``.
    batch_ends = np.empty(len(batch_starts), np.int64)
    batches_listed = np.empty(len(raw), np.int64)
    envelope_lines = []
    for e, (r, at) in enumerate(zip(raw, offsets, strict=True)):
        lo, hi = np.searchsorted(batch_starts, [at, at + len(r)])
        batches_listed[e] = hi - lo
        if lo == hi:
            if not r.endswith(_BATCHES_NONE):
                return None
            envelope_lines.append(r[: -len(_BATCHES_NONE)] + b"}")
        else:
            head = r[: batch_starts[lo] - at]
            if not (head.endswith(_BATCHES_OPEN) and r.endswith(b"]}")):
                return None
            envelope_lines.append(head[: -len(_BATCHES_OPEN)] + b"}")
            batch_ends[lo : hi - 1] = batch_starts[lo + 1 : hi] - 1
            batch_ends[hi - 1] = at + len(r) - 2
        # A second "batches" (read whole instead), or none but them (not JSON: ``{,``).
        if _BATCHES_KEY in envelope_lines[-1] or envelope_lines[-1].strip() == b"{}":
            return None
    is_last = np.zeros(len(batch_starts), bool)
    is_last[np.cumsum(batches_listed)[batches_listed > 0] - 1] = True
    if not (
        np.all(text[batch_ends[~is_last]] == ord(","))
        and np.all(text[batch_ends - 1] == ord("}"))
        and np.all(text[batch_ends - 2] == ord("]"))
    ):
        return None
    # Each batch's transactions: the candidates between its start and its end.
    first_tx = np.searchsorted(tx_starts, batch_starts)
    transactions_listed = np.searchsorted(tx_starts, batch_ends) - first_tx
    if transactions_listed.sum() != len(tx_starts):  # one outside every batch
        return None
    listing = transactions_listed > 0
    run_starts = tx_starts[first_tx[listing]]  # a batch's first transaction ends its head
    head_ends = batch_ends.copy()
    head_ends[listing] = run_starts
    batch_lines = []
    for start, end, lists in zip(
        batch_starts.tolist(), head_ends.tolist(), listing.tolist(), strict=True
    ):
        head = text[start:end].tobytes()
        glue = _TRANSACTIONS_OPEN if lists else _TRANSACTIONS_NONE
        if not head.endswith(glue) or _TRANSACTIONS_KEY in head[: -len(glue)]:
            return None
        batch_lines.append(head[: -len(glue)] + b"}")
    # Within a batch, each transaction after the first follows ``},``: the comma becomes
    # the line break.
    later = np.ones(len(tx_starts), bool)
    later[first_tx[listing]] = False
    commas = tx_starts[later] - 1
    if not (np.all(text[commas] == ord(",")) and np.all(text[commas - 1] == ord("}"))):
        return None
    text[commas] = ord("\n")
    # Everything outside the batches' runs of transactions becomes white space (a line
    # break first, to end the transaction before it).
    run_ends = batch_ends[listing] - 2
    for start, end in zip([0, *run_ends.tolist()], [*run_starts.tolist(), len(text)], strict=True):
        text[start:end] = ord(" ")
        text[start] = ord("\n")
    return envelope_lines, batch_lines, batches_listed, transactions_listed


def _json_frames(
    batches: pl.LazyFrame, txs: pl.LazyFrame, named_format: bool
) -> list[pl.LazyFrame]:
    """The batch and transaction frames (lazy) of the flat frames of ``_read_nested`` or
    ``_read_flat``, in the schemas' names and types (money still floats)."""
    batch_frame = batches.select(
        "store_id",
        "store_name",
        pl.col("batchid").alias("batch_id"),
        pl.col("status").str.to_lowercase().cast(BATCH_STATUS),
        _time("opened", named_format).alias("opened_at"),
        _time("closed", named_format).alias("closed_at"),
        pl.col("transactioncount").alias("transaction_count"),
        pl.col("soldamount").alias("sold"),
        pl.col("reloadedamount").alias("reloaded"),
        pl.col("redeemedamount").alias("redeemed"),
        pl.col("netamount").alias("net"),
        "_transactions",  # read, before any filter
    )
    tx_frame = txs.select(
        "store_id",
        "store_name",
        "batch_id",
        pl.col("hostRef").alias("host_ref"),
        pl.col("_position").alias("position"),
        pl.col("type").str.to_lowercase().cast(TRANSACTION_TYPE),
        pl.col("cardno").str.slice(-4).alias("card_last4"),
        pl.col("cardref").alias("card_ref"),
        "amount",
        pl.col("previousbalance").alias("previous_balance"),
        pl.col("newbalance").alias("new_balance"),
        pl.col("posref").alias("pos_ref"),
        _time("datetime", named_format).alias("at"),
        "username",
    )
    return [batch_frame, tx_frame]


def _cents_exact(frame: pl.DataFrame, columns: Sequence[str]) -> bool:
    """Whether every amount read as a float is a whole number of cents (else the exact,
    slower reader takes over: nothing is ever rounded away silently)."""
    if frame.is_empty():
        return True
    cents = [pl.col(c) * 100 for c in columns]
    worst = frame.select(
        pl.max_horizontal([(c - c.round(0)).abs().max() for c in cents]).alias("off"),
        pl.max_horizontal([pl.col(c).abs().max() for c in columns]).alias("size"),
    ).row(0)
    return (worst[0] or 0) < 1e-6 and (worst[1] or 0) < _EXACT_LIMIT


def _speaks_contract(raw: bytes) -> bool:
    """Whether an envelope's first keys are the contract's own field names.

    Only a quick first look, to send an answer in another spelling straight to the
    tolerant reader; ``_read_whole`` checks what polars read of the rest.
    """
    head = raw[:400].decode("utf-8", "ignore")
    keys = set(_KEY.findall(head))
    return bool(keys) and keys <= _CONTRACT_KEYS


# ------------------------------------------------------------------ fetching


def fetch(
    client: Any,
    stores: Sequence[Any] | None = None,
    since: date | None = None,
    until: date | None = None,
    progress: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame] | Awaitable[tuple[pl.DataFrame, pl.DataFrame]]:
    """(batches, transactions) of ``stores`` (default: every store the user is granted).

    Pages through ``GET /Batch`` (1,000 batches a page, newest first) with a progress bar
    (``progress=False`` hides it, e.g. in notebooks whose outputs are compared).
    With an ``AsyncGiftCardClient`` this returns an awaitable: ``await frames.fetch(ac)``.
    """
    if inspect.iscoroutinefunction(client.batches):
        return _fetch_async(client, stores, since, until, progress)
    store_list = list(stores) if stores is not None else list(client.verify().stores)
    found: list[models.Batch] = []
    with tqdm(
        total=len(store_list), desc="fetching batches", unit="store", disable=not progress
    ) as bar:
        for store in store_list:
            pages = _pages(found, store, since, until)
            try:
                ask = next(pages)
                while True:
                    ask = pages.send(client.batches(**ask))
            except StopIteration:
                pass
            bar.set_postfix(batches=len(found))
            bar.update(1)
    return batches_frame(found), transactions_frame(found)


async def _fetch_async(
    client: Any,
    stores: Sequence[Any] | None,
    since: date | None,
    until: date | None,
    progress: bool,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    store_list = list(stores) if stores is not None else list((await client.verify()).stores)
    found: list[models.Batch] = []
    with tqdm(
        total=len(store_list), desc="fetching batches", unit="store", disable=not progress
    ) as bar:
        for store in store_list:
            pages = _pages(found, store, since, until)
            try:
                ask = next(pages)
                while True:
                    ask = pages.send(await client.batches(**ask))
            except StopIteration:
                pass
            bar.set_postfix(batches=len(found))
            bar.update(1)
    return batches_frame(found), transactions_frame(found)


def _pages(
    found: list[models.Batch], store: Any, since: date | None, until: date | None
) -> Generator[dict[str, Any], list[models.Batch], None]:
    """One store's paging, written once for both clients: yields the arguments of each
    ``batches()`` call, receives its page, adds new batches to ``found``."""
    until_page = until
    while True:
        page = yield {"store": store, "since": since, "until": until_page, "limit": PAGE}
        until_page = _next_page(found, page)
        if until_page is None:
            return


def _next_page(found: list[models.Batch], page: list[models.Batch]) -> date | None:
    """Add a page's new batches to ``found``; the ``until`` date of the next page, if any.

    The API pages by date only: the next page repeats the oldest day of this one, and
    batches seen already are dropped by id.
    """
    seen = {(b.store_id, b.id) for b in found}
    fresh = [b for b in page if (b.store_id, b.id) not in seen]
    found.extend(fresh)
    if len(page) < PAGE or not fresh:
        return None
    oldest = min(b.opened_at for b in page if b.opened_at is not None)
    return oldest.date()


# ------------------------------------------------------------------- files


def write(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a frame as Parquet (``.parquet``) or CSV (``.csv``), by the file's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.write_parquet(path)
    elif path.suffix == ".csv":
        df.write_csv(path)
    else:
        raise ValueError(f"{path.name}: write .parquet or .csv")
    return path


def read(path: str | Path) -> pl.DataFrame:
    """Read a frame written by :func:`write`, checked against the schema its columns match."""
    path = Path(path)
    if path.suffix == ".parquet":
        df = pl.read_parquet(path)
        schema = TRANSACTION_SCHEMA if "host_ref" in df.columns else BATCH_SCHEMA
        return conform(df, schema)
    if path.suffix == ".csv":
        with path.open() as handle:
            header = handle.readline().strip().split(",")
        schema = TRANSACTION_SCHEMA if "host_ref" in header else BATCH_SCHEMA
        types = {k: v for k, v in _loose(schema).items() if k in header}
        return conform(pl.read_csv(path, schema_overrides=types), schema)
    raise ValueError(f"{path.name}: read .parquet or .csv")
