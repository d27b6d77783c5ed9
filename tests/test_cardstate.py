"""Each card's state, kept with a dataset by ``sync``: it is exactly what the card's whole
history says, it is topped up (not made again) as the history grows, and a measure that
reads it answers exactly what the same measure grouping the transactions answers."""

from __future__ import annotations

import gc
import json
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from giftcard_toolkit import GiftCardClient, analytics, frames
from giftcard_toolkit.analysis import cardstate, dataset

sys.path.insert(0, str(Path(__file__).parent / "benchmark"))
import bench_dataset  # noqa: E402
from bench_frames import synthetic_transactions  # noqa: E402
from test_analytics_partitioned import BY_CARD, _answers, _colliding_hash, a_history  # noqa: E402


def _client(server) -> GiftCardClient:
    return GiftCardClient(server.url, server.username, server.password)


def _manifest(path: Path) -> dict:
    return json.loads((path / dataset.MANIFEST).read_text())


_BY_CARD = ["card_ref", "card_last4"]


def _kept_states(path: Path) -> pl.DataFrame:
    files = [path / relative for relative in _manifest(path)["cards"]["files"]]
    return cardstate.scan_states(files).collect().sort(_BY_CARD, nulls_last=True)


def _made_again(path: Path) -> pl.DataFrame:
    """The states made from the dataset's transactions in one pass, in memory."""
    _, txs = frames.load(path)
    return cardstate.of_transactions(txs.lazy()).collect().sort(_BY_CARD, nulls_last=True)


def _follows_by_states(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each measure from now on, whether it read the cards' states."""
    seen: list[bool] = []
    real = analytics._follow

    def follow(*args, **kwargs):
        found = real(*args, **kwargs)
        seen.append(found.states is not None)
        return found

    monkeypatch.setattr(analytics, "_follow", follow)
    import giftcard_toolkit.analysis.accounting as accounting

    monkeypatch.setattr(accounting, "_follow", follow)
    return seen


def _counting_makings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each making of the states from the dataset's files (not a top-up)."""
    made: list[int] = []
    real_parts = dataset._parts_of_cards

    def card_parts(root, txs):
        made.append(1)
        return real_parts(root, txs)

    monkeypatch.setattr(dataset, "_parts_of_cards", card_parts)
    return made


# ------------------------------------------------------------------ the states themselves


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """``a_history()`` (30,000 transactions, some cards known by their last four digits only)
    as a dataset in sync's layout, its card states made as a first sync makes them."""
    path = tmp_path_factory.mktemp("cards") / "dataset"
    manifest = dataset._new_manifest()
    manifest["generation"] = 1
    txs = frames.conform(a_history(), frames.TRANSACTION_SCHEMA)
    with ThreadPoolExecutor(max_workers=4) as flusher:
        for (store,), store_txs in txs.partition_by("store_id", as_dict=True).items():
            manifest["stores"][str(store)] = bench_dataset._write_store(path, store_txs, flusher)
    dataset._write_manifest(path, manifest)
    dataset._keep_states(path)
    return path


def test_the_states_are_each_cards_whole_history(written):
    """Every card once, with its first and last transactions, its home (its sale), and
    the sums of its history, read from the transactions themselves."""
    states = _kept_states(written)
    _, txs = frames.load(written)
    assert states.equals(_made_again(written))
    cards = txs.select(cardstate.CARD.n_unique()).item()
    assert states.select(cardstate.CARD.n_unique()).item() == states.height == cards
    assert states["card_ref"].null_count() > 0, "some cards are known by their last digits"
    one = states.filter(pl.col("card_ref").is_not_null(), pl.col("transactions") > 3).row(
        0, named=True
    )
    history = txs.filter(pl.col("card_ref") == one["card_ref"]).sort("at", "position")
    first, last = history.row(0, named=True), history.row(-1, named=True)
    sale = history.filter(pl.col("type") == "sale").row(0, named=True)
    assert (one["first_at"], one["opening_balance"]) == (first["at"], first["previous_balance"])
    assert (one["last_at"], one["balance"]) == (last["at"], last["new_balance"])
    assert one["home_sale"] and (one["home_at"], one["home_store_id"]) == (
        sale["at"],
        sale["store_id"],
    )
    assert one["home_amount"] == sale["amount"]
    assert one["transactions"] == history.height
    redeemed = history.filter(pl.col("type") == "redeem")["amount"].sum()
    assert one["redeemed"] == redeemed
    assert one["loaded"] == history["amount"].sum() - redeemed
    assert one["balance"] == one["opening_balance"] + one["loaded"] - one["redeemed"]


# Moments a minute apart at most over two days: two transactions of a card often share one.
_MOMENT = st.integers(0, 2 * 24 * 60).map(
    lambda m: datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=m)
)


@st.composite
def _histories(draw) -> pl.DataFrame:
    """A few cards' transactions (some cards known by their last four digits only), at
    moments that often tie, in no order."""
    rows = []
    for position in range(draw(st.integers(1, 40))):
        card = draw(st.sampled_from(["c1", "c2", "c3", None]))
        kind = draw(st.sampled_from(["sale", "reload", "redeem"]))
        before = Decimal(draw(st.integers(0, 5000))) / 100
        amount = Decimal(draw(st.integers(1, 5000))) / 100
        after = before - amount if kind == "redeem" else before + amount
        store = draw(st.sampled_from(["s1", "s2"]))
        rows.append(
            {
                "store_id": store,
                "store_name": f"Store {store}",
                "position": position,
                "type": kind,
                "card_last4": draw(st.sampled_from(["1111", "2222"])),
                "card_ref": card,
                "amount": amount,
                "previous_balance": before,
                "new_balance": after,
                "at": draw(_MOMENT),
            }
        )
    schema = {name: frames.TRANSACTION_SCHEMA[name] for name in cardstate.READS}
    return pl.DataFrame(rows, schema=schema)


@settings(max_examples=150, deadline=None)
@given(history=_histories(), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_the_states_of_parts_merged_are_the_state_of_the_whole(history, cuts):
    """However a card's history is split (the syncs of a dataset), the merged states of
    the parts are the state of the whole, and merging in a part that is already merged
    changes no card it does not name."""
    whole = cardstate.of_transactions(history.lazy()).collect().sort(_BY_CARD, nulls_last=True)
    bounds = sorted({0, history.height, *(min(c, history.height) for c in cuts)})
    parts = [history.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    states = [cardstate.of_transactions(part.lazy()).collect() for part in parts]
    merged = cardstate.merge(pl.concat(states).lazy()).collect().sort(_BY_CARD, nulls_last=True)
    assert merged.equals(whole)
    held = states[0].lazy()
    for added in states[1:]:
        held = cardstate.merged_into(held, added)
    assert held.collect().sort(_BY_CARD, nulls_last=True).equals(whole)


# ------------------------------------------------------- measures read from the states


# The measures that must group the transactions: those whose history is cut short (by
# ``as_of`` or ``until``: a card's state is that of its whole history), and ``cards``,
# whose ``stores_used`` no state holds (a count of distinct stores does not add up).
READ_FROM_TRANSACTIONS = {
    "liability monthly, a window",
    "liability of some stores, as of",
    "redemption curve of a store, a window",
    "breakage as of, by store",
    "cards",
    "cards of some stores",
}


@pytest.mark.parametrize("name", list(BY_CARD))
def test_a_measure_reads_the_states_and_answers_as_from_the_transactions(
    monkeypatch, written, name
):
    """Over ``frames.scan`` of the whole dataset a measure reads its cards' states (unless
    it needs what they do not hold, or the history is cut short): the same frame, the
    same warnings as over the loaded transactions."""
    _, loaded = frames.load(written)
    want, want_warnings = _answers(lambda: BY_CARD[name](loaded))
    seen = _follows_by_states(monkeypatch)
    _, scanned = frames.scan(written)
    got, got_warnings = _answers(lambda: BY_CARD[name](scanned))
    assert got.equals(want)
    assert got_warnings == want_warnings
    assert want.height > 0
    reads_states = name not in READ_FROM_TRANSACTIONS
    assert seen and all(s == reads_states for s in seen), seen


@pytest.mark.parametrize("name", ["liability by store", "redemption curve", "breakage"])
def test_over_the_states_cards_that_share_a_hash_are_never_taken_for_one(
    monkeypatch, written, name
):
    _, scanned = frames.scan(written)
    want = BY_CARD[name](scanned)
    _colliding_hash(monkeypatch)
    seen = _follows_by_states(monkeypatch)
    assert BY_CARD[name](scanned).equals(want)
    assert seen == [True, True], "tried by hash, then by text, from the states both times"


def test_only_the_scan_of_the_whole_dataset_reads_the_states(written):
    _, scanned = frames.scan(written)
    assert cardstate.attached(scanned) is not None
    assert cardstate.attached(scanned.filter(pl.col("amount") > 0)) is None
    assert cardstate.attached(scanned.select(pl.all())) is None
    assert cardstate.attached(scanned.collect()) is None
    store = scanned.select(pl.col("store_id").first()).collect().item()
    for partial in (
        frames.scan(written, stores=[store])[1],
        frames.scan(written, since=date(2026, 1, 1))[1],
    ):
        assert cardstate.attached(partial) is None
    before = len(cardstate._ATTACHED)
    held = cardstate._ATTACHED[id(scanned)][1]
    moved = [path.rename(path.with_name(path.name + ".away")) for path in held]
    assert cardstate.attached(scanned) is None, "its states replaced by a later sync"
    for path in moved:
        path.rename(path.with_name(path.name.removesuffix(".away")))
    assert cardstate.attached(scanned) is not None
    del scanned
    gc.collect()
    assert len(cardstate._ATTACHED) == before - 1, "forgotten with its frame"


def test_stale_states_are_not_read(monkeypatch, written, tmp_path):
    """States that do not cover exactly the manifest's transaction files (a sync stopped
    between a store's files and the states) are not read; the measure groups the
    transactions, and the answer is the same."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(written, copy)
    manifest = _manifest(copy)
    manifest["cards"]["covers"] = "0" * 64
    (copy / dataset.MANIFEST).write_text(json.dumps(manifest))
    _, scanned = frames.scan(copy)
    assert cardstate.attached(scanned) is None
    want = analytics.breakage(frames.load(written)[1])
    seen = _follows_by_states(monkeypatch)
    assert analytics.breakage(scanned).equals(want)
    assert seen == [False]


# ------------------------------------------------------------------- kept by sync


def test_sync_keeps_the_states_and_tops_them_up(monkeypatch, server, tmp_path):
    """A first sync makes the states of what it fetched; syncs that add transactions (a
    sale, a redemption at another store, a batch grown then closed) merge the new ones in
    without reading the history again; a sync with nothing new writes nothing."""
    made_from_files = _counting_makings(monkeypatch)
    home, away = server.stores[0], server.stores[1]
    card = [c for c in server.card_stock if not c.sold and c.store_id == home.id][-2]
    with _client(server) as client:
        frames.sync(client, tmp_path, progress=False)
        assert _kept_states(tmp_path).equals(_made_again(tmp_path))
        first = _manifest(tmp_path)["cards"]
        client.sell(card, "40.00", home)
        client.redeem(card, "15.00", away)
        frames.sync(client, tmp_path, progress=False)
        client.close_batch(home)
        frames.sync(client, tmp_path, progress=False)
        again = frames.sync(client, tmp_path, progress=False)
    assert again.files_written == 0
    states = _kept_states(tmp_path)
    assert states.equals(_made_again(tmp_path))
    assert _manifest(tmp_path)["cards"] != first
    ours = states.filter(pl.col("card_last4") == card.number[-4:], pl.col("home_amount") == 40)
    assert ours.select("home_store_id", "balance", "transactions").row(0) == (
        home.id,
        Decimal("25.00"),
        2,
    )
    assert made_from_files == [], "made from what each sync fetched: no file read again"
    on_disk = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "cards").iterdir()}
    assert on_disk == set(_manifest(tmp_path)["cards"]["files"]), "the replaced are removed"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, scanned = frames.scan(tmp_path)
        _, loaded = frames.load(tmp_path)
        for call in (analytics.liability, analytics.breakage, analytics.redemption_curve):
            assert call(scanned).equals(call(loaded))


def test_a_dataset_without_states_gets_them_at_its_next_sync(server, tmp_path):
    """A dataset synced before states were kept (or whose states went stale) is read as
    before, and its next sync makes them, even with nothing new to fetch."""
    with _client(server) as client:
        frames.sync(client, tmp_path, progress=False)
        manifest = _manifest(tmp_path)
        del manifest["cards"]
        (tmp_path / dataset.MANIFEST).write_text(json.dumps(manifest))
        assert cardstate.attached(frames.scan(tmp_path)[1]) is None
        frames.sync(client, tmp_path, progress=False)
    assert cardstate.attached(frames.scan(tmp_path)[1]) is not None
    assert _kept_states(tmp_path).equals(_made_again(tmp_path))


def test_made_again_in_parts_of_cards_the_same_states(monkeypatch, written, tmp_path):
    """States made from the files in parts of cards (a history past ``_STATE_PART_ROWS``)
    are those made in one pass, and the parts' folder is gone after."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(written, copy)
    manifest = _manifest(copy)
    del manifest["cards"]
    monkeypatch.setattr(dataset, "_STATE_PART_ROWS", 7_000)
    found = dataset._Dataset(copy, manifest)
    with found.flusher:
        found.keep_states()
    assert len(_manifest(copy)["cards"]["files"]) == 5  # 30,000 transactions, 7,000 a part
    assert _kept_states(copy).equals(_kept_states(written))
    assert not list((copy / "cards").glob(".building-*"))


def test_a_stored_row_the_server_changed_makes_the_states_again():
    """What a store's write adds is the fetched rows not stored already; if a stored row
    comes back changed, the states cannot be topped up (None: made again)."""
    txs = synthetic_transactions(20, stores=1, days=3, seed=3)
    txs = frames.conform(txs, frames.TRANSACTION_SCHEMA)
    stored, fetched = txs.head(12), txs
    assert dataset._added(fetched, stored.head(0)).equals(fetched)
    assert dataset._added(fetched, stored).equals(txs.tail(8))
    changed = fetched.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.col("at") + timedelta(seconds=1))
        .otherwise(pl.col("at"))
        .alias("at")
    )
    assert dataset._added(changed, stored) is None


def test_a_sync_stopped_before_the_states_leaves_them_unread_then_makes_them(
    monkeypatch, server, tmp_path
):
    home = server.stores[2]
    card = [c for c in server.card_stock if not c.sold and c.store_id == home.id][-3]
    with _client(server) as client:
        frames.sync(client, tmp_path, progress=False)
        client.sell(card, "12.00", home)

        def stopped(self):
            raise KeyboardInterrupt

        monkeypatch.setattr(dataset._Dataset, "keep_states", stopped)
        with pytest.raises(KeyboardInterrupt):
            frames.sync(client, tmp_path, progress=False)
        monkeypatch.undo()
        _, scanned = frames.scan(tmp_path)
        assert cardstate.attached(scanned) is None, "stale: the new sale is not in them"
        _, loaded = frames.load(tmp_path)
        assert analytics.breakage(scanned).equals(analytics.breakage(loaded))
        frames.sync(client, tmp_path, progress=False)
    assert cardstate.attached(frames.scan(tmp_path)[1]) is not None
    assert _kept_states(tmp_path).equals(_made_again(tmp_path))


def test_a_sync_adding_more_than_it_holds_makes_the_states_from_the_files(
    monkeypatch, server, tmp_path
):
    """A first sync of a large chain adds more transactions than it keeps in memory
    (``_ADDED_ROWS_HELD``): the states are made from the files once the stores are
    written, the same as topped up."""
    made_from_files = _counting_makings(monkeypatch)
    monkeypatch.setattr(dataset, "_ADDED_ROWS_HELD", 1_000)
    with _client(server) as client:
        frames.sync(client, tmp_path, progress=False)
    assert made_from_files == [1]
    assert _kept_states(tmp_path).equals(_made_again(tmp_path))
