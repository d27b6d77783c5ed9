"""A chain's history kept locally: a Hive-partitioned Parquet dataset, topped up incrementally.

``sync(client, path)`` keeps, at ``path``::

    manifest.json                                    what each store holds (schema version 2)
    batches/store_id=<id>/part-<gen>.parquet         the store's batches (frames.BATCH_SCHEMA)
    transactions/store_id=<id>/month=YYYY-MM/part-<gen>.parquet   its transactions, by month
    cards/part-<gen>-<n>-<token>.parquet             each card's state (cardstate.STATE_SCHEMA)

* **Incremental.** Each store's batches are listed first without their transactions
  (``includetransactions=false``, from the last stored batch's day on): a closed batch stored
  already is never fetched again; new batches, and stored open ones whose listing changed
  (more transactions, or closed since), are fetched with their transactions and replace what
  was stored of them. Nothing new: one listing request per store, and no file written.
  A store the dataset holds nothing of is not listed first: its batches are fetched with
  their transactions at once (the requests of ``frames.fetch``). The toolkit's own clients'
  answers are read straight into frames by ``frames.from_json``.
* **Concurrent.** Stores are synced ``concurrency`` at a time (threads for
  ``GiftCardClient``; tasks for ``AsyncGiftCardClient``, then ``await frames.sync(...)``).
* **Crash-safe.** A store's new files are written under a temporary name and renamed to a
  name of this sync's generation, then flushed together with their folders (concurrently);
  only then does the manifest (itself replaced atomically) point at them, store by store,
  and the files they replace are removed. Readers
  (``scan``) read only the manifest's files, so a sync stopped anywhere (an exception, Ctrl-C,
  lost answers, a full disk) leaves the last complete state readable, and the next sync
  removes what the stopped one left and completes it, with no duplicate rows.
* **Each card's state.** ``cards/`` holds one row a card: its first and last transactions,
  its home, its sums (``cardstate``), made from the transactions by the first sync and
  topped up by each later one with the states of what it added (a merge: the history is not
  read again). The manifest says which transaction files they describe; ``scan(path)`` of
  the whole dataset hands them to the measures that follow cards, which then read 10M card
  rows rather than group 100M transactions. States that describe other files (a sync
  stopped before them, a dataset synced by an older toolkit) are not read, and the next
  sync makes them again from the files.
* **Other engines.** Outside a sync, the folders hold exactly the manifest's files: DuckDB
  (``read_parquet('transactions/**/*.parquet', hive_partitioning = true)``), pyarrow and Spark
  read them as they are. ``store_id`` (and ``month``) live in the folder names, not in the
  files, as Hive partitioning has it.

Column types: the files hold the frame schemas' own types (one definition:
``frames.TRANSACTION_SCHEMA``), money as Parquet ``DECIMAL(18, 2)`` (exact in every engine),
and no categorical types: Parquet's dictionary encoding (with zstd) already stores a
repeated string (store, card reference, user) once per column chunk, so categoricals would
save no disk, and would tie the files to polars' own types (analytics group by the card
reference string as it is: making codes of it first costs more than it saves).

Schema versions: 2 added the transactions' ``position`` (their place in their batch, the
server's order, which breaks ties in time). A version 1 dataset cannot be read or topped up
(its files have no positions, and a closed batch is never fetched again): it is refused,
saying so; sync into a new folder (then delete the old one).

``scan(path)`` gives lazy frames (schemas enforced; a filter on ``store_id`` skips the other
stores' files, one on ``at`` uses the files' statistics; ``stores=``/``since=``/``until=``
choose the files to read up front); ``load(path)`` eager ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import io
import json
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Awaitable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from giftcard_toolkit import _protocol, errors, models
from giftcard_toolkit.analysis import cardstate, frames

FORMAT = "giftcard_toolkit.dataset"
SCHEMA_VERSION = 2
# What each older version lacks, for the error that refuses it.
_OLDER = {1: "its transactions have no position in their batch (added in version 2)"}
MANIFEST = "manifest.json"
_LOCK = ".sync.lock"
_MONTH = "%Y-%m"
_RUN_GAP = timedelta(days=7)  # needed batches further apart than this are fetched apart


class DatasetError(Exception):
    """The dataset at a path cannot be used as asked; the message names the problem."""


class SyncError(DatasetError):
    """Some stores could not be synced. ``report`` says what the others did (their data is
    in the dataset); ``failures`` maps each failed store's id to its exception."""

    def __init__(self, message: str, report: SyncReport, failures: dict[str, BaseException]):
        super().__init__(message)
        self.report = report
        self.failures = failures


@dataclass(frozen=True)
class StoreSync:
    """One store's part of a sync: batches ``new`` (not stored before), ``refreshed`` (open
    ones stored before, replaced), ``skipped`` (stored already and unchanged, not fetched),
    the ``requests`` made for it and the transaction rows written."""

    store_id: str
    store_name: str
    new: int = 0
    refreshed: int = 0
    skipped: int = 0
    requests: int = 0
    rows_written: int = 0
    files_written: int = 0


@dataclass(frozen=True)
class SyncReport:
    """What a sync did, per store (``frame()`` as a table)."""

    path: Path
    stores: tuple[StoreSync, ...]
    not_granted: tuple[str, ...] = ()

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.stores)

    @property
    def new(self) -> int:
        return sum(s.new for s in self.stores)

    @property
    def refreshed(self) -> int:
        return sum(s.refreshed for s in self.stores)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.stores)

    @property
    def rows_written(self) -> int:
        return sum(s.rows_written for s in self.stores)

    @property
    def files_written(self) -> int:
        return sum(s.files_written for s in self.stores)

    def frame(self) -> pl.DataFrame:
        """One row a store: store_id, store_name, new, refreshed, skipped, requests,
        rows_written, files_written."""
        schema = {
            "store_id": pl.String,
            "store_name": pl.String,
            **dict.fromkeys(
                ("new", "refreshed", "skipped", "requests", "rows_written", "files_written"),
                pl.Int64,
            ),
        }
        rows = [s.__dict__ for s in self.stores]
        return pl.DataFrame(rows, schema=schema)

    def __str__(self) -> str:
        text = (
            f"{len(self.stores)} stores synced: {self.new:,} new batches, {self.refreshed:,} "
            f"refreshed, {self.skipped:,} unchanged (not fetched); {self.requests:,} requests; "
            f"{self.rows_written:,} transactions in {self.files_written:,} files written"
        )
        if self.not_granted:
            text += (
                f"; {len(self.not_granted)} stores in the dataset are no longer granted "
                f"(kept as last synced): {', '.join(self.not_granted)}"
            )
        return text


# ------------------------------------------------------------------ the manifest


def _manifest_path(root: Path) -> Path:
    return root / MANIFEST


def _read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the dataset at ``root``; a clear error for anything else there."""
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} is a file, not a dataset folder")
    path = _manifest_path(root)
    if not path.exists():
        raise DatasetError(
            f"{root} holds no giftcard dataset (no {MANIFEST}): sync into it first"
            if not root.exists() or not any(root.iterdir())
            else f"{root} holds other files and no {MANIFEST}: it is not a giftcard dataset; "
            "sync into a new or empty folder"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as bad:
        raise DatasetError(f"{path} is not a giftcard dataset manifest ({bad})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a giftcard dataset manifest (format is not {FORMAT})")
    version = manifest.get("schema_version")
    if version in _OLDER:
        raise DatasetError(
            f"{root} was written with dataset schema version {version}, which this toolkit "
            f"(version {SCHEMA_VERSION}) no longer reads: {_OLDER[version]}. Sync into a new "
            "folder (frames.sync(client, new_path)), then delete the old one"
        )
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{root} was written with dataset schema version {version}; this toolkit reads "
            f"and writes version {SCHEMA_VERSION}: use a toolkit of that version, or sync "
            "into a new folder"
        )
    return manifest


def _new_manifest() -> dict[str, Any]:
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "generation": 0, "stores": {}}


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform opens folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_atomically(final: Path, write: Any) -> None:
    """Write ``final`` through a temporary name in its folder: flushed, then renamed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        write(temporary)
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_dir(final.parent)


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    text = _manifest_text(manifest)
    _replace_atomically(_manifest_path(root), lambda p: p.write_text(text, encoding="utf-8"))


def _manifest_text(manifest: dict[str, Any]) -> str:
    """The manifest as JSON, a store a line: still readable, and encoded by ``json``'s C
    encoder (an indented dump is encoded in pure Python, and a sync rewrites the manifest
    after every store: that was a fifth of a first sync's CPU)."""
    stores = manifest["stores"]
    items = [
        f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}"
        for key, value in sorted(manifest.items())
        if key != "stores"
    ]
    listed = ",\n".join(
        f"  {json.dumps(store)}: {json.dumps(stores[store], sort_keys=True)}"
        for store in sorted(stores)
    )
    items.append(f'"stores": {{\n{listed}\n }}')
    return "{\n " + ",\n ".join(items) + "\n}\n"


def _manifest_files(manifest: dict[str, Any]) -> set[str]:
    held: set[str] = set()
    for entry in manifest["stores"].values():
        if entry.get("batches"):
            held.add(entry["batches"])
        held.update(entry.get("transactions", {}).values())
    held.update(_state_files(manifest))
    return held


def _state_files(manifest: dict[str, Any]) -> list[str]:
    return list(manifest.get("cards", {}).get("files", ()))


def _transaction_files(manifest: dict[str, Any]) -> list[str]:
    return [
        relative
        for entry in manifest["stores"].values()
        for relative in entry.get("transactions", {}).values()
    ]


def _states_current(manifest: dict[str, Any]) -> bool:
    """Whether the manifest's card states describe exactly its transactions (a dataset
    with none needs none)."""
    files = _transaction_files(manifest)
    if not files:
        return True
    kept = manifest.get("cards") or {}
    return bool(kept.get("covers") == cardstate.covers(files))


def _remove_leftovers(root: Path, manifest: dict[str, Any]) -> None:
    """Remove what a stopped sync left: temporary files, and part files no manifest names."""
    held = _manifest_files(manifest)
    for building in (root / "cards").glob(f"{_BUILDING}*"):
        shutil.rmtree(building, ignore_errors=True)
    for top in ("batches", "transactions", "cards"):
        folder = root / top
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            name = path.name
            ours = (name.startswith("part-") and name.endswith(".parquet")) or (
                name.startswith(".part-") and ".tmp-" in name
            )
            if ours and path.is_file() and path.relative_to(root).as_posix() not in held:
                path.unlink()


def _open_for_sync(root: Path) -> dict[str, Any]:
    """The manifest to sync into ``root``: a new dataset in a new or empty folder."""
    try:
        if root.exists() and root.is_dir() and not any(root.iterdir()):
            manifest = _new_manifest()
            _write_manifest(root, manifest)
            return manifest
        if not root.exists():
            root.mkdir(parents=True)
            manifest = _new_manifest()
            _write_manifest(root, manifest)
            return manifest
    except OSError as failed:
        raise _unwritable(root, failed) from failed
    return _read_manifest(root)


def _unwritable(root: Path, failed: OSError) -> DatasetError:
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }.get(failed.errno or 0, failed.strerror or str(failed))
    return DatasetError(
        f"cannot write the dataset at {root}: {reason}; what was synced before stays readable"
    )


@contextlib.contextmanager
def _sync_lock(root: Path) -> Iterator[None]:
    """One sync of a dataset at a time (released by the system if the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    try:
        handle = (root / _LOCK).open("a")
    except OSError as failed:
        raise _unwritable(root, failed) from failed
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DatasetError(f"{root} is being synced by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------ one store's plan


_LISTED = ("status", "closed_at", "transaction_count", "sold", "reloaded", "redeemed", "net")


@dataclass
class _Page:
    """One ``GET /Batch`` answer as frames: its batches (``frames.BATCH_SCHEMA``) and, when
    asked with their transactions, those (``frames.TRANSACTION_SCHEMA``)."""

    batches: pl.DataFrame
    transactions: pl.DataFrame

    @classmethod
    def of(cls, batches: list[models.Batch], transactions: bool) -> _Page:
        return cls(
            frames.batches_frame(batches),
            frames.transactions_frame(batches) if transactions else _NO_TRANSACTIONS,
        )


_NO_TRANSACTIONS = pl.DataFrame(schema=frames.TRANSACTION_SCHEMA)


@dataclass
class _Plan:
    """One store's sync as decided and fetched; written by ``_write_store``."""

    store_id: str
    store_name: str = ""
    new: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    skipped: int = 0
    requests: int = 0
    fetched: _Page | None = None
    list_since: str | None = None


Ask = dict[str, Any]


def _pages(
    store: str, since: date | None, until: date | None, transactions: bool, plan: _Plan
) -> Generator[Ask, _Page, _Page]:
    """Every batch opened from ``since`` to ``until``, paging by date as ``frames.fetch``."""
    found: set[str] = set()
    got: list[_Page] = []
    until_page = until
    while True:
        plan.requests += 1
        page = yield {
            "store": store,
            "status": "all",
            "since": since,
            "until": until_page,
            "limit": frames.PAGE,
            "transactions": transactions,
        }
        ids = page.batches["batch_id"]
        oldest = page.batches["opened_at"].min()  # the next page ends on that day
        fresh = ids.filter(~ids.is_in(list(found))) if found else ids
        if fresh.len() < ids.len():  # the day this page shares with the last one
            keep = fresh.to_list()
            page = _Page(
                page.batches.filter(pl.col("batch_id").is_in(keep)),
                page.transactions.filter(pl.col("batch_id").is_in(keep)),
            )
        found.update(fresh.to_list())
        got.append(page)
        if ids.len() < frames.PAGE or fresh.is_empty() or not isinstance(oldest, datetime):
            return _Page(
                pl.concat([g.batches for g in got]),
                pl.concat([g.transactions for g in got]) if transactions else _NO_TRANSACTIONS,
            )
        until_page = oldest.date()


def _runs(days: Sequence[date]) -> list[tuple[date, date]]:
    """Sorted days as (first, last) runs, split where they are more than a week apart."""
    runs: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if runs and day - runs[-1][1] <= _RUN_GAP:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def _store_flow(
    store: str, held: pl.DataFrame, entry: dict[str, Any] | None, since: date | None
) -> Generator[Ask, _Page, _Plan]:
    """Decide and fetch one store's sync, for either client: yields ``batches()`` arguments,
    receives their answers (as frames). ``held`` is what the dataset holds of the store."""
    plan = _Plan(store_id=store, store_name=(entry or {}).get("store_name", ""))
    # What the stored listing covers: every batch (None), or those opened from a day on.
    prior = entry.get("listed_since") if entry else None
    wanted = None if since is None else since.isoformat()
    covered = entry is not None and (prior is None or (wanted is not None and wanted >= prior))
    list_from = since
    if entry is None:
        plan.list_since = wanted
    else:
        plan.list_since = None if prior is None or wanted is None else min(wanted, prior)
    latest = held["opened_at"].max()
    if covered and isinstance(latest, datetime):
        # Only batches opened on or after the latest stored one can be new or changed
        # (from a day earlier: the server counts days in its own time zone).
        floor = latest.date() - timedelta(days=1)
        list_from = floor if since is None else max(since, floor)
    if held.is_empty():
        # Nothing stored: every batch is new, so no listing first, just one fetch of them
        # all with their transactions (the requests of ``frames.fetch``).
        got = yield from _pages(store, list_from, None, True, plan)
        plan.new = sorted(got.batches["batch_id"].to_list())
        plan.store_name = _store_name(got.batches, plan.store_name)
        _check_opened(store, got.batches)
        if not got.batches.is_empty():
            plan.fetched = got
        return plan
    listing = yield from _pages(store, list_from, None, False, plan)
    plan.store_name = _store_name(listing.batches, plan.store_name)
    stored = {row["batch_id"]: row for row in held.iter_rows(named=True)}
    needed: dict[str, datetime | None] = {}
    for row in listing.batches.iter_rows(named=True):
        old = stored.get(row["batch_id"])
        if old is None:
            plan.new.append(row["batch_id"])
        elif old["status"] == "closed" or all(old[name] == row[name] for name in _LISTED):
            continue
        else:
            plan.refreshed.append(row["batch_id"])
        needed[row["batch_id"]] = row["opened_at"]
    plan.skipped = len(stored) - len(plan.refreshed)
    _check_opened(store, listing.batches.filter(pl.col("batch_id").is_in(list(needed))))
    fetched: list[_Page] = []
    days = [moment.date() for moment in needed.values() if moment is not None]
    for first, last in _runs(days):
        got = yield from _pages(
            store, first - timedelta(days=1), last + timedelta(days=1), True, plan
        )
        keep = pl.col("batch_id").is_in(list(needed))
        fetched.append(_Page(got.batches.filter(keep), got.transactions.filter(keep)))
    if fetched:
        plan.fetched = _Page(
            pl.concat([f.batches for f in fetched]), pl.concat([f.transactions for f in fetched])
        )
    missing = set(needed) - set(plan.fetched.batches["batch_id"] if plan.fetched else ())
    if missing:
        raise DatasetError(
            f"store {store}: {len(missing)} batches listed were not found when fetched "
            "with their transactions; sync again"
        )
    plan.new.sort()
    plan.refreshed.sort()
    return plan


def _store_name(batches: pl.DataFrame, default: str) -> str:
    """The last name the server gave the store in ``batches`` (as the batches were listed)."""
    names = batches["store_name"].filter(batches["store_name"].fill_null("") != "")
    return str(names[-1]) if names.len() else default


def _check_opened(store: str, batches: pl.DataFrame) -> None:
    if batches["opened_at"].null_count():
        raise DatasetError(f"store {store}: a batch without an opening time cannot be synced")


# ------------------------------------------------------------------ reading answers


def _reads_raw(client: Any) -> bool:
    """Whether ``client`` is the toolkit's own client, its ``batches`` not replaced: then
    its answers with transactions are asked for as sent (``batches_json``) and read by
    ``frames.from_json`` (polars, not the models; listings, small, are read by the models,
    faster at that size)."""
    from giftcard_toolkit.client import AsyncGiftCardClient, GiftCardClient

    for kind in (GiftCardClient, AsyncGiftCardClient):
        if isinstance(client, kind):
            return getattr(type(client), "batches", None) is kind.batches
    return False


def _json_page(answer: bytes) -> _Page:
    return _Page(*frames.from_json(answer))


def _ask(client: Any, raw: bool, ask: Ask) -> _Page:
    if raw and ask["transactions"]:
        return _json_page(client.batches_json(**ask))
    return _Page.of(client.batches(**ask), bool(ask["transactions"]))


async def _ask_async(client: Any, raw: bool, ask: Ask) -> _Page:
    if raw and ask["transactions"]:
        return _json_page(await client.batches_json(**ask))
    return _Page.of(await client.batches(**ask), bool(ask["transactions"]))


# ------------------------------------------------------------------ writing


def _store_folder(kind: str, store: str) -> str:
    return f"{kind}/store_id={store}"


def _read_part(root: Path, relative: str, schema: pl.Schema, store: str) -> pl.DataFrame:
    return frames.conform(
        pl.read_parquet(root / relative).with_columns(pl.lit(store).alias("store_id")), schema
    )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parts(root: Path, parts: dict[str, pl.DataFrame], flusher: ThreadPoolExecutor) -> None:
    """Write a store's part files (``relative path: frame``) together: each under a
    temporary name, renamed into place, then all of them and their folders flushed at once
    (concurrently: a flush waits on the disk, not on the interpreter), before the manifest
    may name them. A stop before then leaves only files the manifest does not name, which
    the next sync removes."""
    finals = [root / relative for relative in parts]
    folders: set[Path] = set()
    for final in finals:
        folder = final.parent
        while not folder.exists():  # a new folder: its entry in its parent is flushed too
            folders.add(folder.parent)
            folder = folder.parent
        final.parent.mkdir(parents=True, exist_ok=True)
        folders.add(final.parent)
    written: list[tuple[Path, Path]] = []
    try:
        for final, df in zip(finals, parts.values(), strict=True):
            temporary = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")
            written.append((temporary, final))
            # Made in memory, then written: polars' own file writing costs more than the
            # encoding for a part this small (about 0.8 ms a file).
            encoded = io.BytesIO()
            df.drop("store_id").write_parquet(encoded, compression="zstd", statistics=True)
            temporary.write_bytes(encoded.getbuffer())
        for temporary, final in written:
            os.replace(temporary, final)
    except BaseException:
        for temporary, _ in written:
            with contextlib.suppress(OSError):
                temporary.unlink()
        raise
    flushes = [flusher.submit(_fsync_file, final) for final in finals]
    flushes += [flusher.submit(_fsync_dir, folder) for folder in sorted(folders)]
    wait(flushes)
    for flushed in flushes:
        flushed.result()  # the first failure, once all have ended


_FLUSHERS = 16  # flushes in flight at once: the disk takes them together


def _write_store(
    root: Path,
    plan: _Plan,
    held: pl.DataFrame,
    entry: dict[str, Any] | None,
    generation: int,
    flusher: ThreadPoolExecutor,
) -> tuple[dict[str, Any], StoreSync, pl.DataFrame | None]:
    """Write one store's new files (temporary names, renamed, flushed); its new manifest
    entry, and the transactions it adds to the dataset (None if it changed some it held:
    see ``_added``)."""
    entry = dict(entry or {"batches": None, "transactions": {}})
    entry["store_name"] = plan.store_name
    entry["listed_since"] = plan.list_since
    report = StoreSync(
        plan.store_id,
        plan.store_name,
        new=len(plan.new),
        refreshed=len(plan.refreshed),
        skipped=plan.skipped,
        requests=plan.requests,
    )
    if plan.fetched is None:
        return entry, report, _NO_TRANSACTIONS
    part = f"part-{generation:06d}.parquet"
    replaced = set(plan.new) | set(plan.refreshed)
    batches = pl.concat(
        [held.filter(~pl.col("batch_id").is_in(replaced)), plan.fetched.batches]
    ).sort("opened_at", "batch_id")
    txs = plan.fetched.transactions.with_columns(pl.col("at").dt.strftime(_MONTH).alias("_month"))
    months = set(txs["_month"].unique().to_list())
    for row in held.filter(pl.col("batch_id").is_in(replaced)).iter_rows(named=True):
        for moment in (row["opened_at"], row["closed_at"]):
            if moment is not None:
                months.add(moment.strftime(_MONTH))
    old_months: dict[str, str] = dict(entry["transactions"])
    new_months = dict(old_months)
    by_month = {
        str(month): frame.drop("_month")
        for (month,), frame in txs.partition_by("_month", as_dict=True).items()
    }
    parts: dict[str, pl.DataFrame] = {}
    rows = 0
    dropped = [_NO_TRANSACTIONS]
    for month in sorted(months):
        fresh = by_month.get(month, _NO_TRANSACTIONS)
        if month in old_months:
            kept = _read_part(root, old_months[month], frames.TRANSACTION_SCHEMA, plan.store_id)
            dropped.append(kept.filter(pl.col("batch_id").is_in(replaced)))
            kept = kept.filter(~pl.col("batch_id").is_in(replaced))
            fresh = pl.concat([kept, fresh])
        if fresh.is_empty():
            new_months.pop(month, None)
            continue
        relative = f"{_store_folder('transactions', plan.store_id)}/month={month}/{part}"
        parts[relative] = fresh.sort("at", "host_ref")
        new_months[month] = relative
        rows += fresh.height
    relative = f"{_store_folder('batches', plan.store_id)}/{part}"
    parts[relative] = batches
    _write_parts(root, parts, flusher)
    entry["batches"] = relative
    entry["transactions"] = dict(sorted(new_months.items()))
    report = StoreSync(
        plan.store_id,
        plan.store_name,
        new=len(plan.new),
        refreshed=len(plan.refreshed),
        skipped=plan.skipped,
        requests=plan.requests,
        rows_written=rows,
        files_written=len(parts),
    )
    return entry, report, _added(plan.fetched.transactions, pl.concat(dropped))


def _added(fetched: pl.DataFrame, dropped: pl.DataFrame) -> pl.DataFrame | None:
    """What a store's write adds to the dataset's transactions: those ``fetched`` that
    were not among the ``dropped`` (the stored rows of the batches fetched again). None
    when some dropped row is not fetched again as it was (the server changed or withdrew
    it): the card states cannot then be topped up, only made again."""
    if dropped.is_empty():
        return fetched
    columns = list(frames.TRANSACTION_SCHEMA)
    if not dropped.join(fetched, on=columns, how="anti", nulls_equal=True).is_empty():
        return None
    return fetched.join(dropped, on=columns, how="anti", nulls_equal=True)


def _held(root: Path, entry: dict[str, Any] | None, store: str) -> pl.DataFrame:
    if not entry or not entry.get("batches"):
        return pl.DataFrame(schema=frames.BATCH_SCHEMA)
    return _read_part(root, entry["batches"], frames.BATCH_SCHEMA, store)


class _Dataset:
    """A sync in progress: the manifest, committed store by store under a lock."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.generation = int(manifest.get("generation", 0)) + 1
        self.lock = threading.Lock()
        # Shared by the stores' commits, for the flushes of their files.
        self.flusher = ThreadPoolExecutor(max_workers=_FLUSHERS, thread_name_prefix="flush")
        # The card states as the sync found them, and what the stores' commits add to the
        # transactions (None once the states cannot be topped up: made again at the end).
        self.states_found = _state_files(manifest) if _states_current(manifest) else None
        self.added: list[pl.DataFrame] | None = [] if self.states_found is not None else None
        self.added_rows = 0

    def entry(self, store: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.manifest["stores"].get(store)
            return dict(found) if found else None

    def commit(self, plan: _Plan, held: pl.DataFrame) -> StoreSync:
        """Write one store's files, then point the manifest at them; remove the replaced.
        ``held``: what the dataset held of the store when its sync began (only this store's
        own commit changes its entry)."""
        entry = self.entry(plan.store_id)
        try:
            new_entry, report, added = _write_store(
                self.root, plan, held, entry, self.generation, self.flusher
            )
            if plan.fetched is None and entry is not None and entry == new_entry:
                return report  # nothing new: nothing written
            with self.lock:
                before = set(_manifest_files(self.manifest))
                self.manifest["stores"][plan.store_id] = new_entry
                self.manifest["generation"] = self.generation
                _write_manifest(self.root, self.manifest)
                gone = before - _manifest_files(self.manifest)
                self._add(added)
            for relative in gone:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / relative).unlink()
        except OSError as failed:
            raise _unwritable(self.root, failed) from failed
        return report

    def _add(self, added: pl.DataFrame | None) -> None:
        """Keep what a store's commit added to the transactions (what the card states are
        made of), for ``keep_states``; past ``_ADDED_ROWS_HELD`` rows, or with None (a
        store's stored rows changed), none are kept and the states are made again from the
        files at the end."""
        if self.added is None:
            return
        if added is None or self.added_rows + added.height > _ADDED_ROWS_HELD:
            self.added = None
            return
        self.added.append(added.select(cardstate.READS))
        self.added_rows += added.height

    def keep_states(self) -> None:
        """Bring the card states (``cardstate``) to the transactions the manifest now names:
        the states the sync found, with the states of what its stores added merged in, or, when
        those cannot be trusted or were too many, made again from every transaction file
        (in parts of cards, so that memory stays that of one part). Written like the
        stores' files, then named by the manifest, then the files they replace removed."""
        files = _transaction_files(self.manifest)
        if _states_current(self.manifest):
            return
        token = uuid.uuid4().hex[:8]
        written: list[str] = []

        def write(states: pl.DataFrame | pl.LazyFrame) -> None:
            relative = f"cards/part-{self.generation:06d}-{len(written):03d}-{token}.parquet"
            _write_states(self.root, relative, states)
            written.append(relative)

        try:
            if self.states_found is not None and self.added is not None:
                held = cardstate.scan_states(self.root / relative for relative in self.states_found)
                added = pl.concat([pl.DataFrame(schema=_STATE_READS), *self.added]).lazy()
                write(cardstate.merged_into(held, cardstate.of_transactions(added).collect()))
            else:
                txs = _scan_files([self.root / relative for relative in files], _STATE_READS)
                with _parts_of_cards(self.root, txs) as parts:
                    for part in parts:
                        # The in-memory engine: polars' streaming grouping holds several
                        # times more for the firsts and lasts of this many columns.
                        write(cardstate.of_transactions(part).collect(engine="in-memory"))
            with self.lock:
                before = set(_manifest_files(self.manifest))
                self.manifest["cards"] = {"covers": cardstate.covers(files), "files": written}
                _write_manifest(self.root, self.manifest)
                gone = before - _manifest_files(self.manifest)
        except OSError as failed:
            raise _unwritable(self.root, failed) from failed
        for relative in gone:
            with contextlib.suppress(FileNotFoundError):
                (self.root / relative).unlink()


@contextlib.contextmanager
def _parts_of_cards(root: Path, txs: pl.LazyFrame) -> Iterator[list[pl.LazyFrame]]:
    """``txs`` as parts of whole cards of about ``_STATE_PART_ROWS`` transactions each,
    written once to their own files in a folder of the dataset's ``cards/`` (on the
    dataset's disk; removed after, or by the next sync)."""
    rows = txs.select(pl.len()).collect(engine="streaming").item()
    count = -(-rows // _STATE_PART_ROWS)
    if count <= 1:
        yield [txs]
        return
    (root / "cards").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=_BUILDING, dir=root / "cards"))
    try:
        yield cardstate.in_parts(txs, cardstate.CARD.hash().fill_null(0) % count, count, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_states(root: Path, relative: str, states: pl.DataFrame | pl.LazyFrame) -> None:
    """Write card states to ``relative`` as a store's parts are written: under a temporary
    name, renamed, then the file and its folder flushed (and the dataset's folder, for a
    new folder's name) before the manifest may name it."""
    final = root / relative
    new_folder = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        if isinstance(states, pl.DataFrame):
            states.write_parquet(temporary, compression="lz4")
        else:
            states.sink_parquet(temporary, compression="lz4", engine="streaming")
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_file(final)
    _fsync_dir(final.parent)
    if new_folder:
        _fsync_dir(root)


def _keep_states(root: Path) -> None:
    """Bring the card states of the dataset at ``root`` up to its transactions, outside a
    sync (a dataset written by other means: the benchmarks' generator)."""
    with _sync_lock(root):
        found = _Dataset(root, _read_manifest(root))
        with found.flusher:
            found.keep_states()


# The most transactions a sync adds that it holds in memory (what the card states need of
# them: about 0.2 GB a million), to merge their states in at its end; more (a first sync of
# a large chain), and the states are made again from the files.
_ADDED_ROWS_HELD = 2_000_000
# Card states are made from the files in parts of cards of this many transactions each
# (about 2 GB at once).
_STATE_PART_ROWS = 5_000_000
_BUILDING = ".building-"  # the folder of a making of card states, in cards/
_STATE_READS = pl.Schema({name: frames.TRANSACTION_SCHEMA[name] for name in cardstate.READS})


# ------------------------------------------------------------------ sync


def sync(
    client: Any,
    path: str | Path,
    stores: Sequence[Any] | None = None,
    since: date | None = None,
    concurrency: int = 8,
    progress: bool = True,
) -> SyncReport | Awaitable[SyncReport]:
    """Bring the dataset at ``path`` up to date with the server; what it did, per store.

    ``stores``: default every store the user is granted (stores the dataset holds but the
    user no longer is granted are kept as they were, with a warning); an explicit store
    that is not granted fails with ``SyncError`` (its ``failures`` hold the decline).
    ``since``: only batches opened from that day on (later syncs may reach further back).
    With an ``AsyncGiftCardClient`` this returns an awaitable: ``await frames.sync(ac, ...)``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    root = Path(path).expanduser()
    if inspect.iscoroutinefunction(client.batches):
        return _sync_async(client, root, stores, since, concurrency, progress)
    store_ids = _store_ids(stores, lambda: client.verify().stores)
    raw = _reads_raw(client)
    _open_for_sync(root)
    with _sync_lock(root):
        manifest = _read_manifest(root)
        _remove_leftovers(root, manifest)
        dataset = _Dataset(root, manifest)
        done: dict[str, StoreSync] = {}
        failures: dict[str, BaseException] = {}

        def one(store: str) -> StoreSync:
            entry = dataset.entry(store)
            held = _held(root, entry, store)
            flow = _store_flow(store, held, entry, since)
            try:
                ask = next(flow)
                while True:
                    ask = flow.send(_ask(client, raw, ask))
            except StopIteration as finished:
                plan: _Plan = finished.value
            return dataset.commit(plan, held)

        bar = tqdm(total=len(store_ids), desc="syncing", unit="store", disable=not progress)
        with bar, dataset.flusher, ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures: dict[Future[StoreSync], str] = {pool.submit(one, s): s for s in store_ids}
            pending = set(futures)
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        _collect(future, futures[future], done, failures)
                        bar.update(1)
                    if failures:
                        for future in pending:
                            future.cancel()
            except BaseException:  # Ctrl-C: stores not started are not started
                for future in pending:
                    future.cancel()
                raise
            for future in pending:
                if not future.cancelled():
                    _collect(future, futures[future], done, failures)
        dataset.keep_states()
    return _finish(root, store_ids, done, failures, explicit=stores is not None)


def _collect(
    future: Future[StoreSync],
    store: str,
    done: dict[str, StoreSync],
    failures: dict[str, BaseException],
) -> None:
    if future.cancelled():
        return
    failed = future.exception()
    if failed is None:
        done[store] = future.result()
    else:
        failures[store] = failed


def _store_ids(stores: Sequence[Any] | None, granted: Any) -> list[str]:
    if stores is not None:
        return list(dict.fromkeys(_protocol.store_id(s) for s in stores))
    return sorted(_protocol.store_id(s) for s in granted())


def _not_granted(root: Path, store_ids: list[str], explicit: bool) -> tuple[str, ...]:
    if explicit:
        return ()
    try:
        held = _read_manifest(root)["stores"]
    except DatasetError:
        return ()
    return tuple(sorted(set(held) - set(store_ids)))


def _finish(
    root: Path,
    store_ids: list[str],
    done: dict[str, StoreSync],
    failures: dict[str, BaseException],
    explicit: bool,
) -> SyncReport:
    lost = _not_granted(root, store_ids, explicit)
    report = SyncReport(
        path=root,
        stores=tuple(done[s] for s in sorted(done, key=lambda s: (done[s].store_name, s))),
        not_granted=lost,
    )
    for failed in failures.values():
        if not isinstance(failed, Exception):  # Ctrl-C, SystemExit: stop as asked
            raise failed
    if failures:
        raise SyncError(_failure_message(root, store_ids, failures), report, failures) from next(
            iter(failures.values())
        )
    if lost:
        warnings.warn(
            f"{len(lost)} stores in {root} are no longer granted to this user and were not "
            f"synced (their data stays as last synced): {', '.join(lost)}",
            stacklevel=3,
        )
    return report


def _failure_message(root: Path, store_ids: list[str], failures: dict[str, BaseException]) -> str:
    lines = []
    for store, failed in sorted(failures.items()):
        if isinstance(failed, errors.StoreNotGranted):
            why = "is not granted to this user (declined 100010): leave it out of stores="
        elif isinstance(failed, DatasetError):
            why = str(failed)
        elif isinstance(failed, errors.TransportError):
            why = f"the server's answers were lost ({failed}): sync again"
        else:
            why = f"{type(failed).__name__}: {failed}"
        lines.append(f"store {store} {why}")
    return (
        f"sync of {root} failed for {len(failures)} of {len(store_ids)} stores; what was "
        "synced stays readable and the next sync completes it:\n  " + "\n  ".join(lines)
    )


async def _sync_async(
    client: Any,
    root: Path,
    stores: Sequence[Any] | None,
    since: date | None,
    concurrency: int,
    progress: bool,
) -> SyncReport:
    granted = (await client.verify()).stores if stores is None else ()
    store_ids = _store_ids(stores, lambda: granted)
    raw = _reads_raw(client)
    _open_for_sync(root)
    with _sync_lock(root):
        manifest = _read_manifest(root)
        _remove_leftovers(root, manifest)
        dataset = _Dataset(root, manifest)
        done: dict[str, StoreSync] = {}
        failures: dict[str, BaseException] = {}
        gate = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(store_ids), desc="syncing", unit="store", disable=not progress)

        async def one(store: str) -> None:
            async with gate:
                if failures:
                    return
                try:
                    entry = dataset.entry(store)
                    held = _held(root, entry, store)
                    flow = _store_flow(store, held, entry, since)
                    try:
                        ask = next(flow)
                        while True:
                            ask = flow.send(await _ask_async(client, raw, ask))
                    except StopIteration as finished:
                        plan: _Plan = finished.value
                    done[store] = await asyncio.to_thread(dataset.commit, plan, held)
                except Exception as failed:
                    failures[store] = failed
                bar.update(1)

        with bar, dataset.flusher:
            await asyncio.gather(*(one(s) for s in store_ids))
        await asyncio.to_thread(dataset.keep_states)
    return _finish(root, store_ids, done, failures, explicit=stores is not None)


# ------------------------------------------------------------------ reading


def _files(
    root: Path,
    manifest: dict[str, Any],
    stores: Sequence[Any] | None,
    since: date | None,
    until: date | None,
) -> tuple[list[Path], list[Path]]:
    wanted = None if stores is None else {_protocol.store_id(s) for s in stores}
    first = None if since is None else since.strftime(_MONTH)
    last = None if until is None else until.strftime(_MONTH)
    batch_files, tx_files = [], []
    for store, entry in sorted(manifest["stores"].items()):
        if wanted is not None and store not in wanted:
            continue
        if entry.get("batches"):
            batch_files.append(root / entry["batches"])
        for month, relative in sorted(entry.get("transactions", {}).items()):
            if (first is None or month >= first) and (last is None or month <= last):
                tx_files.append(root / relative)
    return batch_files, tx_files


def _scan_files(files: list[Path], schema: pl.Schema) -> pl.LazyFrame:
    if not files:
        return pl.LazyFrame(schema=schema)
    scanned = pl.scan_parquet(files, hive_partitioning=True)
    return scanned.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])


def scan(
    path: str | Path,
    *,
    stores: Sequence[Any] | None = None,
    since: date | None = None,
    until: date | None = None,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(batches, transactions) of the dataset at ``path``, lazily, in the frame schemas.

    Only the files of its last complete sync are read. ``stores``, ``since`` and ``until``
    leave out, before anything is read, the files of other stores and of months outside the
    dates (then filter on ``at`` / ``opened_at`` for the exact days); a filter on
    ``store_id`` skips other stores' files too. The transactions of the whole dataset come
    with its cards' states (``cardstate``), which the measures that follow cards read.
    """
    root = Path(path).expanduser()
    manifest = _read_manifest(root)
    batch_files, tx_files = _files(root, manifest, stores, since, until)
    txs = _scan_files(tx_files, frames.TRANSACTION_SCHEMA)
    if stores is None and since is None and until is None and _states_current(manifest):
        # The whole history: measures that follow cards read its cards' states instead.
        cardstate.attach(txs, [root / relative for relative in _state_files(manifest)])
    return _scan_files(batch_files, frames.BATCH_SCHEMA), txs


def load(
    path: str | Path,
    *,
    stores: Sequence[Any] | None = None,
    since: date | None = None,
    until: date | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(batches, transactions) of the dataset at ``path``, in memory (see ``scan``)."""
    batches, txs = scan(path, stores=stores, since=since, until=until)
    collected = pl.collect_all([batches, txs], engine="streaming")
    return collected[0], collected[1]
