"""The local dataset: sync equals fetch, incremental, crash-safe, readable by other engines."""

from __future__ import annotations

import errno
import json
from decimal import Decimal
from pathlib import Path

import httpx
import polars as pl
import pytest

from giftcard_toolkit import AsyncGiftCardClient, GiftCardClient, analytics, errors, frames
from giftcard_toolkit.analysis import dataset


class Recording(httpx.HTTPTransport):
    """A transport that records every request; after ``lose_after`` requests it lets them
    through but loses their answers (a proxy dropping the connection)."""

    def __init__(self, lose_after: int | None = None) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []
        self.lose_after = lose_after

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = super().handle_request(request)
        if self.lose_after is not None and len(self.requests) > self.lose_after:
            response.read()
            response.close()
            raise httpx.ReadError("connection lost before the answer", request=request)
        return response

    def batch_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.startswith("/Batch/")]


def _client(server, **options) -> GiftCardClient:
    return GiftCardClient(server.url, server.username, server.password, **options)


def _sorted(batches: pl.DataFrame, txs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return batches.sort("store_id", "batch_id"), txs.sort("store_id", "host_ref")


def _same(path: Path, expected: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    got = _sorted(*frames.load(path))
    want = _sorted(*expected)
    assert got[0].schema == frames.BATCH_SCHEMA and got[1].schema == frames.TRANSACTION_SCHEMA
    assert got[0].equals(want[0])
    assert got[1].equals(want[1])
    assert got[1]["host_ref"].n_unique() == got[1].height, "no duplicate rows"


def _files(path: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(path).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in path.rglob("*")
        if p.is_file()
    }


def _on_disk_equals_manifest(path: Path) -> None:
    manifest = json.loads((path / dataset.MANIFEST).read_text())
    parts = {f for f in _files(path) if f.endswith(".parquet") or ".tmp-" in f}
    assert parts == dataset._manifest_files(manifest), "only the manifest's files are left"


def test_sync_then_scan_equals_fetch(server, tmp_path):
    with _client(server) as gc:
        report = frames.sync(gc, tmp_path / "ds", progress=False)
        fetched = frames.fetch(gc, progress=False)
    assert isinstance(report, frames.SyncReport)
    assert report.new == fetched[0].height and report.refreshed == 0
    assert report.requests == len(server.stores), "a store holding nothing: one fetch, no listing"
    batches, txs = frames.scan(tmp_path / "ds")
    assert isinstance(txs, pl.LazyFrame)
    assert batches.collect_schema() == frames.BATCH_SCHEMA
    assert txs.collect_schema() == frames.TRANSACTION_SCHEMA
    _same(tmp_path / "ds", fetched)
    _on_disk_equals_manifest(tmp_path / "ds")
    # Hive layout, and no card number in any file.
    month_dirs = {p.parent.name for p in (tmp_path / "ds" / "transactions").rglob("*.parquet")}
    months = fetched[1]["at"].dt.strftime("month=%Y-%m").unique().to_list()
    assert month_dirs == set(months), "one folder per month of trade"
    blob = b"".join(p.read_bytes() for p in (tmp_path / "ds").rglob("*.parquet"))
    assert not any(c.number.encode() in blob for c in server.card_stock)


def test_scan_prunes_by_store_and_month(server, tmp_path):
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
    store = server.stores[0].id
    _, one = frames.scan(tmp_path, stores=[store])
    assert set(one.select("store_id").unique().collect()["store_id"]) == {store}
    from datetime import date

    _, september = frames.scan(tmp_path, since=date(2026, 9, 1))
    months = september.select(pl.col("at").dt.strftime("%Y-%m").unique()).collect()
    assert months.to_series().to_list() == ["2026-09"]
    _, everything = frames.scan(tmp_path)
    plan = everything.filter(pl.col("store_id") == store).explain()
    assert plan.count(".parquet") <= 3 + 1, "only that store's month files are scanned"


def test_resync_with_nothing_new_makes_one_listing_request_per_store_and_writes_no_file(
    server, tmp_path
):
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
    before = _files(tmp_path)
    transport = Recording()
    with _client(server, transport=transport) as gc:
        report = frames.sync(gc, tmp_path, progress=False)
    asked = transport.batch_requests()
    assert len(asked) == len(server.stores) == report.requests
    assert {r.url.path for r in asked} == {f"/Batch/{s.id}" for s in server.stores}
    assert all(r.url.params["includetransactions"] == "false" for r in asked)
    assert report.new == report.refreshed == report.files_written == 0
    assert _files(tmp_path) == before, "no file written, none touched"


def test_a_batch_grown_or_closed_after_a_sync_is_refreshed_not_duplicated(server, tmp_path):
    store = server.stores[0]
    card = next(c for c in server.card_stock if not c.sold and c.store_id == store.id)
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
        gc.sell(card, "25.00", store)  # the open batch grows
        grown = frames.sync(gc, tmp_path, progress=False)
        _same(tmp_path, frames.fetch(gc, progress=False))
        gc.close_batch(store)  # and is closed
        closed = frames.sync(gc, tmp_path, progress=False)
        _same(tmp_path, frames.fetch(gc, progress=False))
        gc.reload(card, "5.00", store)  # a new open batch
        reopened = frames.sync(gc, tmp_path, progress=False)
        _same(tmp_path, frames.fetch(gc, progress=False))
        again = frames.sync(gc, tmp_path, progress=False)
    assert (grown.new, grown.refreshed) == (0, 1)
    assert (closed.new, closed.refreshed) == (0, 1)
    assert (reopened.new, reopened.refreshed) == (1, 0)
    assert again.files_written == 0
    _on_disk_equals_manifest(tmp_path)
    batches, _ = frames.load(tmp_path)
    assert batches.filter(pl.col("store_id") == store.id, pl.col("status") == "open").height == 1


class Failing(GiftCardClient):
    """A client whose ``batches`` raises after ``allowed`` calls."""

    def __init__(self, *args, allowed: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.allowed = allowed

    def batches(self, *args, **kwargs):
        if self.allowed <= 0:
            raise RuntimeError("injected failure")
        self.allowed -= 1
        return super().batches(*args, **kwargs)


# Where the failing sync stops: after ``allowed`` requests of a first sync (one fetch per
# store), or of a top-up of a dataset synced from September on (a listing and a fetch each).
STOPS = [("first", 0), ("first", 1), ("first", 2)] + [("top-up", n) for n in (0, 1, 2, 3, 5)]


@pytest.mark.parametrize(("start", "allowed"), STOPS)
@pytest.mark.parametrize("concurrency", [1, 3])
def test_an_interrupted_sync_run_again_equals_a_clean_sync(
    server, tmp_path, start, allowed, concurrency
):
    from datetime import date

    with _client(server) as gc:
        clean = frames.fetch(gc, progress=False)
        if start == "top-up":
            frames.sync(gc, tmp_path, since=date(2026, 9, 1), progress=False)
    failing = Failing(server.url, server.username, server.password, allowed=allowed)
    with failing, pytest.raises(dataset.SyncError, match="injected failure") as stopped:
        frames.sync(failing, tmp_path, concurrency=concurrency, progress=False)
    # What was complete stays readable: whole stores, consistent with their batches.
    partial = stopped.value.report
    batches, txs = frames.load(tmp_path)
    if start == "first":
        assert set(batches["store_id"]) <= {s.store_id for s in partial.stores}
    assert txs.height == batches["transaction_count"].sum()
    with _client(server) as gc:
        frames.sync(gc, tmp_path, concurrency=concurrency, progress=False)
    _same(tmp_path, clean)
    _on_disk_equals_manifest(tmp_path)


def test_answers_read_raw_or_through_the_models_make_the_same_dataset(server, tmp_path):
    """The toolkit's own client has its answers read by ``frames.from_json``; a client
    whose ``batches`` is its own (here: the models' reading) gives the same files."""
    from datetime import date

    modelled = Failing(server.url, server.username, server.password, allowed=10**6)
    with _client(server) as gc, modelled:
        assert dataset._reads_raw(gc) and not dataset._reads_raw(modelled)
        for client, path in ((gc, tmp_path / "raw"), (modelled, tmp_path / "models")):
            first = frames.sync(client, path, since=date(2026, 9, 1), progress=False)
            rest = frames.sync(client, path, progress=False)
            assert first.requests == len(server.stores) and rest.requests >= len(server.stores)
        clean = frames.fetch(gc, progress=False)
    raw, modelled_frames = frames.load(tmp_path / "raw"), frames.load(tmp_path / "models")
    assert all(a.equals(b) for a, b in zip(_sorted(*raw), _sorted(*modelled_frames), strict=True))
    _same(tmp_path / "raw", clean)
    for path in (tmp_path / "raw", tmp_path / "models"):
        _on_disk_equals_manifest(path)


def test_a_proxy_losing_answers_then_a_rerun_equals_a_clean_sync(server, tmp_path):
    with _client(server) as gc:
        clean = frames.fetch(gc, progress=False)
    lossy = Recording(lose_after=2)  # verify and a store's fetch, then answers are lost
    with (
        _client(server, transport=lossy, attempts=2) as gc,
        pytest.raises(dataset.SyncError, match="answers were lost") as stopped,
    ):
        frames.sync(gc, tmp_path, concurrency=1, progress=False)
    assert any(isinstance(e, errors.TransportError) for e in stopped.value.failures.values())
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
    _same(tmp_path, clean)


def test_a_stop_between_the_files_and_the_manifest_leaves_the_last_state(
    server, tmp_path, monkeypatch
):
    store = server.stores[1]
    card = next(c for c in server.card_stock if not c.sold and c.store_id == store.id)
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
        before = frames.load(tmp_path)
        gc.sell(card, "40.00", store)
        real = dataset._write_manifest

        def interrupted(root, manifest):
            raise KeyboardInterrupt  # Ctrl-C once the new files are renamed into place

        monkeypatch.setattr(dataset, "_write_manifest", interrupted)
        with pytest.raises(KeyboardInterrupt):
            frames.sync(gc, tmp_path, progress=False)
        _same(tmp_path, before)  # the new files are there but not believed
        monkeypatch.setattr(dataset, "_write_manifest", real)
        frames.sync(gc, tmp_path, progress=False)
        _same(tmp_path, frames.fetch(gc, progress=False))
    _on_disk_equals_manifest(tmp_path)


def test_many_pages_a_store_first_and_topped_up(server, tmp_path, monkeypatch):
    """Stores of more batches than a page: the pages (which repeat a day) make each batch
    once, in a first sync and in a top-up (its listing and its fetches paged too)."""
    from datetime import date

    monkeypatch.setattr(frames, "PAGE", 50)
    with _client(server) as gc:
        clean = frames.fetch(gc, progress=False)
        first = frames.sync(gc, tmp_path, since=date(2026, 6, 1), progress=False)
        rest = frames.sync(gc, tmp_path, progress=False)
    assert first.requests > len(server.stores) and rest.requests > 2 * len(server.stores)
    assert first.new + rest.new == clean[0].height
    _same(tmp_path, clean)
    _on_disk_equals_manifest(tmp_path)


def test_every_file_and_its_folders_are_flushed_before_a_manifest_names_them(
    server, tmp_path, monkeypatch
):
    """The parts of a store are flushed together, not one by one, but all of them (and the
    folders holding their names, new folders' parents too) before the manifest names them."""
    flushed: list[Path] = []
    named: list[set[str]] = []
    real_file, real_dir, real_manifest = (
        dataset._fsync_file,
        dataset._fsync_dir,
        dataset._write_manifest,
    )

    def fsync_file(path):
        real_file(path)
        flushed.append(Path(path))

    def fsync_dir(path):
        real_dir(path)
        flushed.append(Path(path))

    def write_manifest(root, manifest):
        done = {p.relative_to(root).as_posix() for p in flushed if p.is_relative_to(root)}
        for relative in dataset._manifest_files(manifest):
            assert relative in done, f"{relative} named before it was flushed"
            # Its folder, and each folder above it (new ones' names are in those); the
            # dataset's own folder is flushed by the manifest's own replacement.
            for folder in Path(relative).parents[:-1]:
                assert folder.as_posix() in done, f"{folder} named before it was flushed"
        named.append(dataset._manifest_files(manifest))
        real_manifest(root, manifest)

    monkeypatch.setattr(dataset, "_fsync_file", fsync_file)
    monkeypatch.setattr(dataset, "_fsync_dir", fsync_dir)
    monkeypatch.setattr(dataset, "_write_manifest", write_manifest)
    with _client(server) as gc:
        report = frames.sync(gc, tmp_path, progress=False)
        stores_files = {f for f in named[-1] if not f.startswith("cards/")}
        assert named and len(stores_files) == report.files_written
        assert len(named[-1]) > len(stores_files), "and the cards' states"
        store = server.stores[0]  # a card no other test sells (they take the first)
        card = [c for c in server.card_stock if not c.sold and c.store_id == store.id][-1]
        gc.sell(card, "30.00", store)
        topped = frames.sync(gc, tmp_path, progress=False)
        assert topped.refreshed == 1 and topped.files_written >= 2
        _same(tmp_path, frames.fetch(gc, progress=False))
    _on_disk_equals_manifest(tmp_path)


def test_a_full_disk_is_a_clear_error_and_the_last_state_stays(server, tmp_path, monkeypatch):
    store = server.stores[2]
    card = next(c for c in server.card_stock if not c.sold and c.store_id == store.id)
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
        before = frames.load(tmp_path)
        gc.sell(card, "15.00", store)

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(dataset.os, "replace", full)
        with pytest.raises(dataset.SyncError, match="the disk is full"):
            frames.sync(gc, tmp_path, progress=False)
        monkeypatch.undo()
        _same(tmp_path, before)
        frames.sync(gc, tmp_path, progress=False)
        _same(tmp_path, frames.fetch(gc, progress=False))
    _on_disk_equals_manifest(tmp_path)


def test_paths_that_are_not_a_dataset_are_refused(server, tmp_path):
    (tmp_path / "a-file").write_text("hello")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "manifest.json").write_text(
        json.dumps({"format": dataset.FORMAT, "schema_version": 99, "stores": {}})
    )
    with _client(server) as gc:
        with pytest.raises(dataset.DatasetError, match="is a file, not a dataset"):
            frames.sync(gc, tmp_path / "a-file", progress=False)
        with pytest.raises(dataset.DatasetError, match="holds other files"):
            frames.sync(gc, tmp_path / "other", progress=False)
        with pytest.raises(dataset.DatasetError, match="schema version 99"):
            frames.sync(gc, newer, progress=False)
        with pytest.raises(dataset.DatasetError, match="a part of the path is a file"):
            frames.sync(gc, tmp_path / "a-file" / "ds", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    with pytest.raises(dataset.DatasetError, match="schema version 99"):
        frames.scan(newer)
    with pytest.raises(dataset.DatasetError, match="no giftcard dataset"):
        frames.scan(tmp_path / "nowhere")


def test_a_version_1_dataset_is_refused_saying_what_to_do(server, tmp_path):
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        manifest["schema_version"] = 1  # written before transactions had their position
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet"))
        for attempt in (lambda: frames.scan(tmp_path), lambda: frames.sync(gc, tmp_path)):
            with pytest.raises(dataset.DatasetError) as refused:
                attempt()
            message = str(refused.value)
            assert "schema version 1" in message and "no position" in message
            assert "Sync into a new folder" in message
    # Refused, not touched: the old files are still there for the user to delete.
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet")) == before


def test_a_store_no_longer_granted(server, tmp_path):
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
        before = frames.load(tmp_path)
    with GiftCardClient(server.url, "clerk", server.users["clerk"]) as clerk:
        mine = clerk.verify().stores[0].id
        other = next(s.id for s in server.stores if s.id != mine)
        with pytest.raises(dataset.SyncError, match="not granted to this user") as refused:
            frames.sync(clerk, tmp_path, stores=[mine, other], progress=False)
        assert isinstance(refused.value.failures[other], errors.StoreNotGranted)
        with pytest.warns(UserWarning, match="no longer granted"):
            report = frames.sync(clerk, tmp_path, progress=False)
    assert len(report.not_granted) == len(server.stores) - 1
    _same(tmp_path, before)  # every store's data is kept


def test_duckdb_and_pyarrow_read_the_same_rows_and_money(server, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    ds = pytest.importorskip("pyarrow.dataset")
    pc = pytest.importorskip("pyarrow.compute")
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
    batches, txs = frames.load(tmp_path)
    want_rows, want_money = txs.height, txs["amount"].sum()
    per_store = dict(txs.group_by("store_id").len().iter_rows())
    assert isinstance(want_money, Decimal)

    glob = (tmp_path / "transactions" / "**" / "*.parquet").as_posix()
    with duckdb.connect() as con:
        rows, money = con.execute(
            f"SELECT count(*), sum(amount) FROM read_parquet('{glob}', hive_partitioning = true)"
        ).fetchone()
        stores = dict(
            con.execute(
                f"SELECT store_id, count(*) FROM read_parquet('{glob}', hive_partitioning = true) "
                "GROUP BY store_id"
            ).fetchall()
        )
        net = con.execute(
            "SELECT sum(net) FROM read_parquet("
            f"'{(tmp_path / 'batches' / '**' / '*.parquet').as_posix()}', hive_partitioning = true)"
        ).fetchone()[0]
    assert (rows, money) == (want_rows, want_money)
    assert stores == per_store
    assert net == batches["net"].sum()

    table = ds.dataset(tmp_path / "transactions", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == want_rows
    assert pc.sum(table["amount"]).as_py() == want_money
    assert str(table.schema.field("amount").type) == "decimal128(18, 2)"


def _analyses(batches, txs) -> list[pl.DataFrame]:
    from datetime import date

    return [
        analytics.daily_summary(txs),
        analytics.daily_summary(txs, tz="America/New_York"),
        analytics.liability(txs),
        analytics.liability(txs, every="1w"),
        analytics.redemption_curve(txs),
        analytics.breakage(txs, as_of=date(2026, 9, 30)),
        analytics.anomalies(txs),
        analytics.reconcile(batches, txs),
    ]


def test_every_analysis_gives_the_same_answer_on_eager_and_lazy_input(server, tmp_path):
    with _client(server) as gc:
        frames.sync(gc, tmp_path, progress=False)
    lazy = frames.scan(tmp_path)
    eager = frames.load(tmp_path)
    for got, want in zip(_analyses(*lazy), _analyses(*eager), strict=True):
        assert isinstance(got, pl.DataFrame)
        assert got.equals(want)


def test_every_analysis_runs_on_the_worked_examples_lazily():
    from test_analytics import STORY

    batches = pl.DataFrame(schema=frames.BATCH_SCHEMA)
    for got, want in zip(
        _analyses(batches.lazy(), STORY.lazy()), _analyses(batches, STORY), strict=True
    ):
        assert got.equals(want)


@pytest.mark.anyio
async def test_sync_with_the_async_client(server, tmp_path):
    async with AsyncGiftCardClient(server.url, server.username, server.password) as agc:
        report = await frames.sync(agc, tmp_path, concurrency=2, progress=False)
        again = await frames.sync(agc, tmp_path, progress=False)
        clean = await frames.fetch(agc, progress=False)
    assert report.new == clean[0].height
    assert again.requests == len(server.stores) and again.files_written == 0
    _same(tmp_path, clean)


def test_the_manifest_is_json_a_store_a_line_and_reads_back_as_written():
    """The manifest is rewritten after every store: it is written compactly, a store a line
    (readable, and quick), and reads back exactly, whatever the names hold."""
    manifest = {
        "format": "giftcard_toolkit.dataset",
        "generation": 7,
        "schema_version": 2,
        "stores": {
            "b": {"batches": "batches/b.parquet", "store_name": 'Åbo "North"\n', "x": None},
            "a": {"batches": None, "transactions": {"2025-01": "t.parquet"}},
        },
    }
    text = dataset._manifest_text(manifest)
    assert json.loads(text) == manifest
    lines = text.splitlines()
    assert [line.strip()[:4] for line in lines if line.startswith('  "')] == ['"a":', '"b":']
    empty = {**manifest, "stores": {}}
    assert json.loads(dataset._manifest_text(empty)) == empty
