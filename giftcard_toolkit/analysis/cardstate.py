"""Each card's state, kept beside a dataset's transactions: one row a card, so that the
measures that follow cards read 10M card rows, not 100M transactions.

A card's state is what its whole history says of it, in aggregates that add up: its first
transaction (and the balance before it), its last (and the balance after), its home (the
first sale, else the first transaction: its store and amount), and the sums of what was
loaded, redeemed and moved. The state of two disjoint sets of a card's transactions merged
(:func:`merge`) is the state of their union, so a sync keeps it by merging the state of the
transactions it adds into the one it holds, rather than reading the history again.

"First" and "last" are by the server's order, as in ``analytics``: the time, then the
place in the batch (``position``); a card's home is its smallest home order, a sale's
being its order and any other's its order pushed past every sale's.

:func:`attach` ties a lazy frame (``dataset.scan`` of a whole dataset) to the state files
that describe exactly its transactions; :func:`attached` gives them back to a measure, only
for that very frame (a frame derived from it, filtered or not, is not described by them).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from giftcard_toolkit.analysis.frames import MONEY, TIME

CARD = pl.coalesce("card_ref", "card_last4").alias("card")

_STATE_COLUMNS: dict[str, Any] = {
    "card_ref": pl.String,
    "card_last4": pl.String,
    "first_at": TIME,
    "first_position": pl.Int32,
    "opening_balance": MONEY,
    "last_at": TIME,
    "last_position": pl.Int32,
    "balance": MONEY,
    "home_sale": pl.Boolean,
    "home_at": TIME,
    "home_position": pl.Int32,
    "home_store_id": pl.String,
    "home_store_name": pl.String,
    "home_amount": MONEY,
    "loaded": MONEY,
    "redeemed": MONEY,
    "moved": MONEY,
    "transactions": pl.Int64,
}
STATE_SCHEMA = pl.Schema(_STATE_COLUMNS)

# What of each transaction its card's state is made from.
READS = (
    "store_id",
    "store_name",
    "position",
    "type",
    "card_last4",
    "card_ref",
    "amount",
    "previous_balance",
    "new_balance",
    "at",
)


def order(at: pl.Expr, position: pl.Expr) -> pl.Expr:
    """The server's order in 128 bits: the time in microseconds, then the place in the
    batch (``analytics`` narrows it to 64 bits for a frame in memory that fits)."""
    return at.dt.epoch("us").cast(pl.Int128) * (1 << 32) + position


def home_key(order: pl.Expr, sale: pl.Expr) -> pl.Expr:
    """A transaction's key for the card's home, the smallest: a sale's is its ``order``,
    any other's its order pushed past every sale's."""
    return order + pl.when(sale).then(0).otherwise(1 << 100).cast(pl.Int128)


_FIRST = ("first_at", "first_position", "opening_balance")
_LAST = ("last_at", "last_position", "balance")
_HOME = ("home_sale", "home_at", "home_position", "home_store_id", "home_store_name", "home_amount")

# Each state column as read from one transaction (its own state), and as read from a state:
# the sums already summed, since one pass sums them.
_redeem = pl.col("type") == "redeem"
_OF_TRANSACTION: dict[str, pl.Expr] = {
    "card_ref": pl.col("card_ref"),
    "card_last4": pl.col("card_last4"),
    "first_at": pl.col("at"),
    "first_position": pl.col("position"),
    "opening_balance": pl.col("previous_balance"),
    "last_at": pl.col("at"),
    "last_position": pl.col("position"),
    "balance": pl.col("new_balance"),
    "home_sale": pl.col("type") == "sale",
    "home_at": pl.col("at"),
    "home_position": pl.col("position"),
    "home_store_id": pl.col("store_id"),
    "home_store_name": pl.col("store_name"),
    "home_amount": pl.col("amount"),
    "loaded": pl.when(_redeem).then(0).otherwise(pl.col("amount")).sum(),
    "redeemed": pl.when(_redeem).then(pl.col("amount")).otherwise(0).sum(),
    "moved": (pl.col("new_balance") - pl.col("previous_balance")).sum(),
    "transactions": pl.len(),
}
_OF_STATE: dict[str, pl.Expr] = {
    **{name: pl.col(name) for name in STATE_SCHEMA},
    **{name: pl.col(name).sum() for name in ("loaded", "redeemed", "moved", "transactions")},
}


def _grouped(lf: pl.LazyFrame, source: dict[str, pl.Expr]) -> pl.LazyFrame:
    """One state a card (``CARD``) of ``lf``, its columns read by ``source``: a first,
    last and home picked by ``min_by``/``max_by`` of their order (polars' fast grouping
    path: no sort), the sums summed."""
    first = order(source["first_at"], source["first_position"])
    last = order(source["last_at"], source["last_position"])
    home = home_key(order(source["home_at"], source["home_position"]), source["home_sale"])
    return (
        lf.group_by(CARD)
        .agg(
            *(source[name].first().alias(name) for name in ("card_ref", "card_last4")),
            *(source[name].min_by(first).alias(name) for name in _FIRST),
            *(source[name].max_by(last).alias(name) for name in _LAST),
            *(source[name].min_by(home).alias(name) for name in _HOME),
            *(source[name].alias(name) for name in ("loaded", "redeemed", "moved", "transactions")),
        )
        .select(pl.col(name).cast(dtype) for name, dtype in STATE_SCHEMA.items())
    )


def merge(states: pl.LazyFrame) -> pl.LazyFrame:
    """One state a card from ``states`` (several rows a card, each the state of a disjoint
    part of its transactions)."""
    return _grouped(states, _OF_STATE)


def of_transactions(txs: pl.LazyFrame) -> pl.LazyFrame:
    """The state of each card of ``txs`` (transactions of ``frames.TRANSACTION_SCHEMA``):
    what :func:`merge` makes of the transactions' own states, in one pass."""
    return _grouped(txs, _OF_TRANSACTION)


def merged_into(held: pl.LazyFrame, added: pl.DataFrame) -> pl.LazyFrame:
    """``held`` (states) with the states ``added`` merged in: the cards ``added`` does not
    name are passed through as they are (streamed), only the others are grouped."""
    named = added.lazy().select(CARD)
    held = held.with_columns(CARD)
    untouched = held.join(named, on="card", how="anti", nulls_equal=True).drop("card")
    touched = held.join(named, on="card", how="semi", nulls_equal=True).drop("card")
    return pl.concat([untouched, merge(pl.concat([touched, added.lazy()]))])


def in_parts(lf: pl.LazyFrame, part_of: pl.Expr, parts: int, folder: Path) -> list[pl.LazyFrame]:
    """``lf`` as ``parts`` frames of whole cards (``part_of``: a hash of the card modulo
    ``parts``), written once to their own Parquet files in ``folder`` (lz4: read back soon,
    then deleted), so that each part is read alone rather than filtered from all of
    ``lf`` again."""
    schema = lf.collect_schema()
    lf.with_columns(part_of.alias("_part")).sink_parquet(
        pl.PartitionBy(folder, key="_part", include_key=False),
        compression="lz4",
        mkdir=True,
        engine="streaming",
    )
    found = []
    for part in range(parts):
        files = sorted(Path(folder, f"_part={part}").glob("*.parquet"))
        found.append(
            pl.scan_parquet(files, hive_partitioning=False).select(*schema)
            if files
            else pl.LazyFrame(schema=schema)
        )
    return found


def covers(transaction_files: Iterable[str]) -> str:
    """A fingerprint of a dataset's transaction files (their names change with every
    write): the state made from exactly those files says so with it."""
    digest = hashlib.sha256()
    for name in sorted(transaction_files):
        digest.update(name.encode())
        digest.update(b"\0")
    return digest.hexdigest()


# ------------------------------------------------------------ scans and their states

_ATTACHED: dict[int, tuple[weakref.ref[pl.LazyFrame], tuple[Path, ...]]] = {}
_ATTACHED_LOCK = threading.RLock()  # a frame may be collected (its callback run) while held


def attach(txs: pl.LazyFrame, files: Iterable[Path]) -> None:
    """Say that the state files ``files`` describe exactly the transactions of ``txs``."""
    key = id(txs)

    def forget(_: object) -> None:
        with _ATTACHED_LOCK:
            if key in _ATTACHED and _ATTACHED[key][0]() is None:
                del _ATTACHED[key]

    with _ATTACHED_LOCK:
        _ATTACHED[key] = (weakref.ref(txs, forget), tuple(files))


def attached(txs: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame | None:
    """The card states of ``txs`` (a frame given to :func:`attach`), lazily; else None
    (also when a later sync has replaced them since: the frame still reads the files it
    was given, which the states that replaced them do not describe)."""
    with _ATTACHED_LOCK:
        found = _ATTACHED.get(id(txs))
    if found is None or found[0]() is not txs:
        return None
    if not all(path.exists() for path in found[1]):
        return None
    return scan_states(found[1])


def scan_states(files: Iterable[Path]) -> pl.LazyFrame:
    """The card states kept in the Parquet ``files``, lazily."""
    files = list(files)
    if not files:
        return pl.LazyFrame(schema=STATE_SCHEMA)
    return pl.scan_parquet(files).select(
        pl.col(name).cast(dtype) for name, dtype in STATE_SCHEMA.items()
    )
