"""Frames: schemas enforced, three ways in that agree, files that round-trip, no card numbers."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import httpx
import polars as pl
import pytest

from giftcard_toolkit import AsyncGiftCardClient, GiftCardClient, frames
from giftcard_toolkit.server import running
from giftcard_toolkit.server.seed import HISTORY_DAYS


@pytest.fixture(scope="module")
def demo():
    with running() as srv, GiftCardClient(srv.url, srv.username, srv.password) as gc:
        batches, txs = frames.fetch(gc)
        raw = [
            httpx.get(
                f"{srv.url}/Batch/{s.id}", params={"limit": 1000}, auth=(srv.username, srv.password)
            ).content
            for s in srv.stores
        ]
        yield srv, batches, txs, raw


def test_fetch_returns_every_batch_and_transaction_with_the_schemas(demo):
    srv, batches, txs, _ = demo
    assert batches.schema == frames.BATCH_SCHEMA
    assert txs.schema == frames.TRANSACTION_SCHEMA
    assert set(batches["store_id"]) == {s.id for s in srv.stores}
    per_day = batches.group_by("store_id", pl.col("opened_at").dt.date()).len()
    assert per_day["len"].max() == 1, "one batch per store and day"
    assert 0.95 * 3 * HISTORY_DAYS <= batches.height <= 3 * HISTORY_DAYS
    assert batches.filter(pl.col("status") == "open").height == 3
    assert txs.height == batches["transaction_count"].sum()
    assert txs["card_ref"].null_count() == 0


def test_no_frame_holds_a_card_number(demo):
    srv, batches, txs, _ = demo
    text = txs.write_csv() + batches.write_csv()
    numbers = {c.number for c in srv.card_stock}
    assert not any(n in text for n in numbers)
    assert txs["card_last4"].str.len_chars().unique().to_list() == [4]


def test_raw_json_gives_the_same_frames(demo):
    _, batches, txs, raw = demo
    from_json_batches, from_json_txs = frames.from_json(raw)
    key = ["store_id", "batch_id"]
    assert from_json_batches.sort(key).equals(batches.sort(key))
    assert from_json_txs.sort("host_ref").equals(txs.sort("host_ref"))


def test_position_is_the_place_in_the_batch_as_the_server_listed_it(demo):
    _, _, txs, raw = demo
    envelope = json.loads(raw[0])
    busy = max(envelope["batches"], key=lambda b: len(b["transactions"]))
    listed = [t["hostRef"] for t in busy["transactions"]]
    assert len(listed) > 1
    for frame in (txs, frames.from_json(raw)[1]):
        mine = frame.filter(pl.col("batch_id") == busy["batchid"]).sort("position")
        assert mine["position"].to_list() == list(range(len(listed)))
        assert mine["host_ref"].to_list() == listed


def test_a_production_spelling_goes_through_the_tolerant_reader(demo):
    _, batches, txs, raw = demo
    envelope = json.loads(raw[0], parse_float=Decimal)

    def pascal(value):
        if isinstance(value, dict):
            return {k[:1].upper() + k[1:]: pascal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [pascal(v) for v in value]
        return value

    import simplejson

    shouted = simplejson.dumps(pascal(envelope), use_decimal=True)
    got_batches, got_txs = frames.from_json(shouted)
    store = envelope["franchiseeid"]
    assert got_txs.sort("host_ref").equals(txs.filter(pl.col("store_id") == store).sort("host_ref"))
    assert got_batches.height == batches.filter(pl.col("store_id") == store).height


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_files_round_trip_exactly(demo, tmp_path, suffix):
    _, batches, txs, _ = demo
    for frame in (batches, txs):
        path = frames.write(frame, tmp_path / f"frame{suffix}")
        back = frames.read(path)
        assert back.schema == frame.schema
        assert back.equals(frame)


def test_reading_refuses_a_file_missing_columns(tmp_path):
    pl.DataFrame({"host_ref": ["1"], "amount": ["1.00"]}).write_csv(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="missing columns"):
        frames.read(tmp_path / "bad.csv")


def test_conform_refuses_more_than_four_card_digits():
    row = {name: None for name in frames.TRANSACTION_SCHEMA}
    row.update(host_ref="1", type="sale", card_last4="6006491234567897", amount=Decimal("1"))
    with pytest.raises(ValueError, match="last four"):
        frames.conform(
            pl.DataFrame([row], schema_overrides={"amount": frames.MONEY}),
            frames.TRANSACTION_SCHEMA,
        )


def test_empty_inputs_give_empty_frames_with_the_schemas():
    assert frames.batches_frame([]).schema == frames.BATCH_SCHEMA
    assert frames.transactions_frame([]).schema == frames.TRANSACTION_SCHEMA
    empty_batches, empty_txs = frames.from_json([])
    assert empty_txs.schema == frames.TRANSACTION_SCHEMA and empty_txs.is_empty()


@pytest.mark.anyio
async def test_fetch_with_the_async_client_and_a_date_window():
    with running() as srv:
        async with AsyncGiftCardClient(srv.url, srv.username, srv.password) as agc:
            batches, _ = await frames.fetch(agc, stores=[srv.stores[0].id])
            window, _ = await frames.fetch(
                agc, stores=[srv.stores[0]], since=date(2026, 9, 10), until=date(2026, 9, 12)
            )
    assert batches.height == HISTORY_DAYS and set(batches["store_id"]) == {srv.stores[0].id}
    assert sorted(window["opened_at"].dt.date().to_list()) == [
        date(2026, 9, 10),
        date(2026, 9, 11),
        date(2026, 9, 12),
    ]


def test_fetch_pages_past_a_thousand_batches(monkeypatch):
    with running() as srv, GiftCardClient(srv.url, srv.username, srv.password) as gc:
        whole, whole_txs = frames.fetch(gc, stores=[srv.stores[1].id])
        monkeypatch.setattr(frames, "PAGE", 40)
        batches, txs = frames.fetch(gc, stores=[srv.stores[1].id])
    assert batches.height > 10 * 40, "many pages"
    assert batches["batch_id"].n_unique() == batches.height
    assert txs["host_ref"].n_unique() == txs.height
    assert batches.sort("batch_id").equals(whole.sort("batch_id"))
    assert txs.sort("host_ref").equals(whole_txs.sort("host_ref"))


def test_times_in_other_iso_layouts_are_read_too(demo):
    _, _, txs, raw = demo
    zulu = raw[0].replace(b"+00:00", b"Z")
    _, from_zulu = frames.from_json(zulu)
    store = json.loads(raw[0])["franchiseeid"]
    assert from_zulu.sort("host_ref").equals(
        txs.filter(pl.col("store_id") == store).sort("host_ref")
    )


# ------------------------------------------------- other spellings past the first keys


# The contract's keys as a production server spells them.
_PRODUCTION_NAMES = (
    "StatusCode Description FranchiseeId StoreName Batches BatchId Status Opened Closed "
    "TransactionCount SoldAmount ReloadedAmount RedeemedAmount NetAmount Transactions "
    "HostRef Type CardNo CardRef Amount PreviousBalance NewBalance PosRef DateTime UserName"
)
_PASCAL = {name.lower(): name for name in _PRODUCTION_NAMES.split()}


def _pascal(value):
    """``value`` with every key as a production server spells it (``HostRef``), recursively."""
    if isinstance(value, dict):
        return {_PASCAL[k.lower()]: _pascal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_pascal(v) for v in value]
    return value


def _dumps(envelope) -> bytes:
    import simplejson

    return simplejson.dumps(envelope, use_decimal=True, separators=(",", ":")).encode()


def _store_frames(demo, raw: bytes):
    _, batches, txs, _ = demo
    store = json.loads(raw)["franchiseeid"]
    return (
        batches.filter(pl.col("store_id") == store).sort("batch_id"),
        txs.filter(pl.col("store_id") == store).sort("host_ref"),
    )


def test_a_late_pascalcase_transaction_is_read_not_dropped(demo):
    _, _, txs, raw = demo
    envelope = json.loads(raw[0], parse_float=Decimal)
    first = max(envelope["batches"], key=lambda batch: len(batch["transactions"]))
    count = len(first["transactions"])
    assert count >= 8
    first["transactions"][-1] = _pascal(first["transactions"][-1])
    envelope["batches"] = [first]
    text = _dumps(envelope)
    assert text.index(b'"HostRef"') > 400

    _, got = frames.from_json(text)

    expected = txs.filter(
        (pl.col("store_id") == envelope["franchiseeid"]) & (pl.col("batch_id") == first["batchid"])
    )
    assert got.height == count
    assert got.sort("host_ref").equals(expected.sort("host_ref"))
    late = got.filter(pl.col("host_ref") == first["transactions"][-1]["HostRef"])
    assert late["amount"].to_list() == [first["transactions"][-1]["Amount"]]
    assert late["new_balance"].to_list() == [first["transactions"][-1]["NewBalance"]]


def test_a_late_pascalcase_batch_is_read_not_dropped(demo):
    _, _, _, raw = demo
    envelope = json.loads(raw[0], parse_float=Decimal)
    envelope["batches"][5] = _pascal(envelope["batches"][5])
    text = _dumps(envelope)
    assert text.index(b'"BatchId"') > 400

    got_batches, got_txs = frames.from_json(text)

    batches, txs = _store_frames(demo, raw[0])
    assert got_batches.sort("batch_id").equals(batches)
    assert got_txs.sort("host_ref").equals(txs)


def test_a_late_envelope_with_other_spellings_is_read_not_dropped(demo):
    _, batches, txs, raw = demo
    envelope = json.loads(raw[2], parse_float=Decimal)
    # The batches first, the envelope's own fields last and in PascalCase.
    late = {"batches": envelope.pop("batches"), **_pascal(envelope)}
    text = _dumps(late)
    assert text.index(b'"StatusCode"') > 400 and text.index(b'"FranchiseeId"') > 400

    got_batches, got_txs = frames.from_json([raw[0], raw[1], text])

    key = ["store_id", "batch_id"]
    assert got_batches.sort(key).equals(batches.sort(key))
    assert got_txs.sort("host_ref").equals(txs.sort("host_ref"))


@pytest.mark.parametrize(
    ("level", "key", "spelled", "column"),
    [
        ("transaction", "posref", "PosRef", "pos_ref"),
        ("transaction", "cardref", "CardRef", "card_ref"),
        ("batch", "closed", "Closed", "closed_at"),
    ],
)
def test_an_optional_field_spelled_otherwise_in_a_late_row_keeps_its_value(
    demo, level, key, spelled, column
):
    _, _, _, raw = demo
    envelope = json.loads(raw[0], parse_float=Decimal)
    batch = envelope["batches"][40]
    target = batch["transactions"][-1] if level == "transaction" else batch
    if key == "posref":
        target[key] = "till-7"  # a value of its own, unlike any other row's
    target[spelled] = target.pop(key)
    text = _dumps(envelope)
    assert text.index(spelled.encode()) > 400

    got_batches, got_txs = frames.from_json(text)

    batches, txs = _store_frames(demo, raw[0])
    if level == "transaction":
        host_ref = target["hostRef"]
        row = got_txs.filter(pl.col("host_ref") == host_ref)
        assert row[column].to_list() == [target[spelled]]
        others = got_txs.filter(pl.col("host_ref") != host_ref).sort("host_ref")
        assert others.equals(txs.filter(pl.col("host_ref") != host_ref))
    else:
        assert got_batches.sort("batch_id").equals(batches)
        assert got_txs.sort("host_ref").equals(txs)


def test_contract_spelled_answers_stay_on_the_fast_path(demo, monkeypatch):
    _, batches, txs, raw = demo

    def tolerant_reader(*_args, **_kwargs):
        raise AssertionError("the fast path was abandoned for contract-spelled answers")

    monkeypatch.setattr(frames.models, "parse_batches", tolerant_reader)
    # Open batches (``"closed": null``) and a null ``posref`` are nulls the contract allows.
    envelope = json.loads(raw[1], parse_float=Decimal)
    envelope["batches"][3]["transactions"][2]["posref"] = None
    pos_ref_null = envelope["batches"][3]["transactions"][2]["hostRef"]
    got_batches, got_txs = frames.from_json([raw[0], _dumps(envelope), raw[2]])

    key = ["store_id", "batch_id"]
    assert got_batches.sort(key).equals(batches.sort(key))
    assert got_batches["closed_at"].null_count() == 3
    expected = txs.with_columns(
        pos_ref=pl.when(pl.col("host_ref") == pos_ref_null).then(None).otherwise("pos_ref")
    )
    assert got_txs.sort("host_ref").equals(expected.sort("host_ref"))


def test_amounts_beyond_float_precision_are_read_exactly():
    envelope = {
        "statuscode": "000000",
        "description": "Success",
        "franchiseeid": "914488e3-37a3-41dd-b52a-1cf76a7021fa",
        "storename": "Big",
        "batches": [
            {
                "batchid": "1",
                "status": "closed",
                "opened": "2026-09-29T08:00:00.000000+00:00",
                "closed": "2026-09-29T23:45:00.000000+00:00",
                "transactioncount": 1,
                "soldamount": Decimal("1234567890123456.78"),
                "reloadedamount": Decimal("0.00"),
                "redeemedamount": Decimal("0.00"),
                "netamount": Decimal("1234567890123456.78"),
                "transactions": [
                    {
                        "hostRef": "1",
                        "type": "sale",
                        "cardno": "************9861",
                        "cardref": "8f6957c1f586affa",
                        "amount": Decimal("1234567890123456.78"),
                        "previousbalance": Decimal("0.00"),
                        "newbalance": Decimal("1234567890123456.78"),
                        "posref": "POS-1",
                        "datetime": "2026-09-29T08:16:37.000000+00:00",
                        "username": "clerk",
                    }
                ],
            }
        ],
    }
    got_batches, got_txs = frames.from_json(_dumps(envelope))
    assert got_txs["amount"].to_list() == [Decimal("1234567890123456.78")]
    assert got_batches["net"].to_list() == [Decimal("1234567890123456.78")]


# ------------------------------------------- the flat read of the server's own layout


def _read_both_ways(monkeypatch, answers):
    """What ``from_json`` makes of ``answers`` (frames, or the error it raises): as it
    reads them, and with the flat read of the server's layout turned off."""

    def outcome():
        try:
            return frames.from_json(answers)
        except Exception as error:  # the same error both ways is the same outcome
            return type(error), str(error)

    flat = outcome()
    with monkeypatch.context() as patch:
        patch.setattr(frames, "_read_flat", lambda raw: None)
        whole = outcome()
    return flat, whole


def _same(flat, whole):
    if isinstance(whole[0], type):
        return flat == whole
    return all(got.equals(expected) for got, expected in zip(flat, whole, strict=True))


def test_the_servers_layout_is_read_flat(demo, monkeypatch):
    _, batches, txs, raw = demo

    def nested(_raw):
        raise AssertionError("the server's own layout was read whole, not flat")

    monkeypatch.setattr(frames, "_read_nested", nested)
    got_batches, got_txs = frames.from_json(raw)
    key = ["store_id", "batch_id"]
    assert got_batches.sort(key).equals(batches.sort(key))
    assert got_txs.sort("host_ref").equals(txs.sort("host_ref"))


def _keys_reordered(envelope):
    envelope["batches"][2]["transactions"][1] = dict(
        reversed(envelope["batches"][2]["transactions"][1].items())
    )


def _nested_objects_in_a_transaction(envelope):
    transactions = envelope["batches"][1]["transactions"]
    transactions[0]["extra"] = [{"hostRef": "x"}, {"hostRef": "y", "batchid": "z"}]


def _transactions_not_last(envelope):
    envelope["batches"][0]["note"] = "after"


def _no_transactions(envelope):
    envelope["batches"][1]["transactions"] = []


def _glue_inside_strings(envelope):
    transaction = envelope["batches"][0]["transactions"][0]
    transaction["username"] = '},{"hostRef":"1"}]},{"batchid":"2","transactions":['
    envelope["storename"] = ',"batches":['


def _a_second_transactions_key(envelope):
    batch = envelope["batches"][0]
    envelope["batches"][0] = {"transactions": [], **batch}


def _a_null_batchid(envelope):
    envelope["batches"][3]["batchid"] = None


def _a_null_statuscode(envelope):
    envelope["statuscode"] = None


@pytest.mark.parametrize(
    "change",
    [
        _keys_reordered,
        _nested_objects_in_a_transaction,
        _transactions_not_last,
        _no_transactions,
        _glue_inside_strings,
        _a_second_transactions_key,
        _a_null_batchid,
        _a_null_statuscode,
    ],
)
def test_answers_near_the_servers_layout_read_as_when_read_whole(demo, monkeypatch, change):
    _, _, _, raw = demo
    envelope = json.loads(raw[0], parse_float=Decimal)
    envelope["batches"] = envelope["batches"][:6]
    change(envelope)
    failed = {"statuscode": "000001", "description": "No store", "batches": []}
    answers = [_dumps(envelope), raw[1], _dumps(failed)]

    flat, whole = _read_both_ways(monkeypatch, answers)
    assert _same(flat, whole)


@pytest.mark.parametrize("spacing", ["indent", "spaces"])
def test_answers_with_white_space_read_as_when_read_whole(demo, monkeypatch, spacing):
    _, _, _, raw = demo
    envelope = json.loads(raw[0], parse_float=Decimal)
    envelope["batches"] = envelope["batches"][:4]
    import simplejson

    if spacing == "indent":
        text = simplejson.dumps(envelope, use_decimal=True, indent=1)
    else:
        text = simplejson.dumps(envelope, use_decimal=True)  # ", " and ": "
    flat, whole = _read_both_ways(monkeypatch, [text, raw[1]])
    assert not isinstance(whole[0], type) and _same(flat, whole)


@pytest.mark.parametrize(
    "broken",
    [
        lambda text: text.replace(b'"type":"sale"', b'"type":sale', 1),
        lambda text: text.replace(b'"transactions":[{', b'"transactions":[{{', 1),
        lambda text: b'{,"batches":[]}',
        lambda text: b' {,"batches":' + text[text.index(b"[") :],
    ],
)
def test_invalid_json_in_the_servers_layout_is_refused_as_before(demo, monkeypatch, broken):
    _, _, _, raw = demo
    flat, whole = _read_both_ways(monkeypatch, [broken(raw[0])])
    assert flat == whole and issubclass(whole[0], pl.exceptions.ComputeError)
