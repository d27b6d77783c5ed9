"""Bulk files as Excel and Google Sheets write them (tests/data/bulk/, each with its expected
outcome in corpus.toml), run against a real server: encodings, separators, line endings,
headers, amounts, Excel's damage to numbers, physical line numbers, errors at scale."""

from __future__ import annotations

import csv
import re
import tomllib
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from bulkkit import ledger_rows
from hypothesis import given
from hypothesis import strategies as st

from giftcard_toolkit import GiftCardClient, bulk
from giftcard_toolkit.cards import luhn_check_digit
from giftcard_toolkit.server.seed import DemoCard

CORPUS_DIR = Path(__file__).parent / "data" / "bulk"
CORPUS = tomllib.loads((CORPUS_DIR / "corpus.toml").read_text(encoding="utf-8"))["files"]
PLACEHOLDER = re.compile(r"\{([uz])(\d+)(?:\.(\w+))?\}")
_taken: set[str] = set()  # cards used by this module's tests (one server per module)


def _take(server, count: int, zero_code: bool = False) -> list[DemoCard]:
    cards = [
        c
        for c in server.card_stock
        if not c.sold
        and c.number not in _taken
        and (not zero_code or (c.security_code or "").startswith("0"))
    ][:count]
    assert len(cards) == count, "the demo stock has enough unsold cards"
    _taken.update(c.number for c in cards)
    return cards


def _fill(name: str, server, tmp_path: Path) -> tuple[Path, dict[str, DemoCard]]:
    """The corpus file ``name`` with real cards in place of its placeholders, encoded as the
    original (same encoding, BOM, separators and line endings)."""
    encoding = CORPUS[name]["encoding"]
    template = (CORPUS_DIR / name).read_bytes().decode(encoding)
    wanted = sorted({(k, int(n)) for k, n, _ in PLACEHOLDER.findall(template)})
    cards: dict[str, DemoCard] = {}
    for kind, number in wanted:
        (cards[f"{kind}{number}"],) = _take(server, 1, zero_code=kind == "z")

    def value(found: re.Match[str]) -> str:
        card = cards[f"{found[1]}{found[2]}"]
        code = card.security_code or ""
        return {
            None: card.number,
            "code": code,
            "store": card.store_id,
            "spaced": " ".join(card.number[i : i + 4] for i in range(0, 16, 4)),
            "sci": f"{int(card.number):.5E}",  # as Excel shows a 16-digit number
            "excel_code": code.lstrip("0"),
        }[found[3]]

    path = tmp_path / name
    path.write_bytes(PLACEHOLDER.sub(value, template).encode(encoding))
    return path, cards


def _stored_reasons(server) -> set[str]:
    with server.ledger.read() as conn:
        return {r[0] for r in conn.execute("SELECT reason FROM status_changes")}


def _assert_no_card_data(text: str, cards) -> None:
    for card in cards:
        number, code = card.number, card.security_code
        assert number not in text and number[:8] not in text and number[8:] not in text
        assert " ".join(number[i : i + 4] for i in range(0, 16, 4)) not in text
        for quoted in (f"'{code}'", f'"{code}"', f",{code},", f";{code};", f"\t{code}\t"):
            assert quoted not in text


def test_every_corpus_file_has_its_expected_outcome():
    files = {p.name for p in CORPUS_DIR.iterdir() if p.name != "corpus.toml"}
    assert files == set(CORPUS)
    for name, spec in CORPUS.items():
        assert ("problems" in spec) != ("run" in spec), name
        if "run" in spec:
            assert len(spec["lines"]) == len(spec["dry_run"]) == len(spec["run"]), name
    raw = {name: (CORPUS_DIR / name).read_bytes() for name in CORPUS}
    # The corpus holds what it says it does, byte for byte.
    assert (
        raw["excel-csv-utf8.csv"].startswith(b"\xef\xbb\xbf")
        and b"\r\n" in raw["excel-csv-utf8.csv"]
    )
    assert raw["excel-unicode-text.txt"].startswith(b"\xff\xfe")
    assert (
        b"caf\xe9" in raw["excel-csv-windows1252.csv"]
        and b"\xa35" in raw["excel-csv-windows1252.csv"]
    )
    assert b"\n" not in raw["mac-cr-only.csv"] and b"\r" in raw["mac-cr-only.csv"]
    assert b"caf\x8e" in raw["mac-roman-cr.csv"]
    assert b",,,,,," in raw["excel-trailing-commas.csv"]
    assert b'"$1,000.00"' in raw["us-currency.csv"]
    assert b"1.000,00 \xe2\x82\xac" in raw["excel-europe-semicolon.csv"]
    assert raw["sheets-title-case.csv"].startswith(b"Operation,Card Number,Security Code")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file(name, server, tmp_path):
    spec = CORPUS[name]
    path, cards = _fill(name, server, tmp_path)
    before = ledger_rows(server)
    with GiftCardClient(server.url, server.username, server.password) as gc:
        if "problems" in spec:
            with pytest.raises(bulk.BulkFileError) as refused:
                bulk.run(gc, path, progress=False)
            got = refused.value.problems
            assert [line for line, _ in got] == [line for line, _ in spec["problems"]]
            for (_, why), (_, words) in zip(got, spec["problems"], strict=True):
                assert words in why
            assert ledger_rows(server) == before, "nothing was sent"
            assert not (tmp_path / f"{name}.journal").exists()
            _assert_no_card_data(str(refused.value), cards.values())
            return
        dry = bulk.run(gc, path, dry_run=True, progress=False)
        assert ledger_rows(server) == before, "a dry run changes nothing"
        results = bulk.run(gc, path, progress=False)
        rerun = bulk.run(gc, path, progress=False)
        balances = {k: gc.balance(c).balance for k, c in cards.items()}
    assert dry["line"].to_list() == results["line"].to_list() == spec["lines"]
    assert dry["status"].to_list() == spec["dry_run"]
    assert results["status"].to_list() == spec["run"]
    if "statuscodes" in spec:
        assert results["statuscode"].to_list() == spec["statuscodes"]
    # What the dry run said would be declined was declined, for the reason it gave.
    predicted = dry.filter(pl.col("status") == "would be declined")["statuscode"]
    assert (
        predicted.to_list()
        == results.filter(pl.col("status") == "declined")["statuscode"].to_list()
    )
    moved = results.filter(
        (pl.col("status") == "approved") & (pl.col("operation").is_in(["sell", "reload", "redeem"]))
    )
    assert ledger_rows(server) == before + moved.height, "each applied row once, rerun included"
    assert rerun["status"].to_list() == [
        "already applied" if s == "approved" and op != "balance" else s
        for s, op in zip(spec["run"], results["operation"], strict=True)
    ]
    assert balances == {k: Decimal(v) for k, v in spec["balances"].items()}
    assert set(spec.get("reasons", [])) <= _stored_reasons(server)
    written = bulk.write_results(results, tmp_path / "results.csv").read_text("utf-8-sig")
    _assert_no_card_data(written + str(dry.rows()), cards.values())


def test_keys_come_from_the_values_not_the_files_encoding_or_separator(server, tmp_path):
    cards = _take(server, 2)
    a, b = cards
    store = server.stores[0].id
    plain = [
        ("sell", a.number, a.security_code, "12.50", store, "", "till 1"),
        ("redeem", a.number, a.security_code, "1000.00", store, "", ""),
        ("block", b.number, b.security_code, "", "", "café £5 – lost", ""),
        ("sell", a.number, a.security_code, "12.50", store, "", "till 1"),  # identical to row 1
    ]
    header = ",".join(bulk.COLUMNS)
    title = "Operation;Card Number;Security Code;Amount;Store ID;Reason;POS Ref"

    def text(rows, sep: str, amounts) -> list[str]:
        return [
            sep.join(f'"{v}"' if sep in v else v for v in (*r[:3], amount, *r[4:]))
            for r, amount in zip(rows, amounts, strict=True)
        ]

    variants = {
        "utf8.csv": ("\n".join([header, *text(plain, ",", [r[3] for r in plain])]), "utf-8"),
        "europe.csv": (
            "\r\n".join(
                [title, "", *text(plain, ";", ["12,50", "1.000,00 €", "", "€ 12,50"]), ";;;;;;"]
            ),
            "utf-8-sig",
        ),
        "unicode.txt": (
            "\r\n".join(
                [header.replace(",", "\t"), *text(plain, "\t", ["12.50", "$1,000.00", "", "12.5"])]
            ),
            "utf-16",
        ),
        "windows.csv": (
            "\r\n".join([header, *text(plain, ",", ["$12.50", "1,000.00", "", "12.50 USD"])]),
            "cp1252",
        ),
        "mac.csv": ("\r".join([header, *text(plain, ",", [r[3] for r in plain])]), "utf-8"),
    }
    keys = {}
    with GiftCardClient(server.url, server.username, server.password) as gc:
        for name, (content, encoding) in variants.items():
            (tmp_path / name).write_bytes(content.encode(encoding))
            fixes = bulk.validate(tmp_path / name, True, gc.derived_key)
            keys[name] = [f.key for f in fixes]
            assert [f.amount for f in fixes] == [
                Decimal("12.50"),
                Decimal("1000.00"),
                None,
                Decimal("12.50"),
            ], name
            assert [str(f.amount) for f in fixes] == ["12.50", "1000.00", "None", "12.50"]
            assert fixes[2].reason == "café £5 – lost"
    assert len({tuple(k) for k in keys.values()}) == 1, "the same rows, the same keys"
    assert len(set(keys["utf8.csv"])) == 4, "identical rows still get keys of their own"


def test_line_numbers_are_physical_lines(server, tmp_path):
    (a,) = _take(server, 1)
    store = a.store_id
    path = tmp_path / "fixes.csv"
    path.write_text(
        "\n".join(
            [
                "",  # 1: a blank line above the header
                ",".join(bulk.COLUMNS),  # 2
                f'block,{a.number},{a.security_code},,,"lost\non the bus",',  # 3-4: Alt+Enter
                "",  # 5
                f"sell,{a.number},{a.security_code},1.999,{store},,",  # 6: bad amount
                ",,,,,,",  # 7
                f"reload,{a.number},{a.security_code},abc,{store},,",  # 8: bad amount
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(bulk.BulkFileError) as refused:
        bulk.validate(path)
    assert [line for line, _ in refused.value.problems] == [6, 8]
    assert "line 6: amount '1.999'" in str(refused.value)
    path.write_text(
        path.read_text().replace("1.999", "10.00").replace("abc", "5.00"), encoding="utf-8"
    )
    with GiftCardClient(server.url, server.username, server.password) as gc:
        dry = bulk.run(gc, path, dry_run=True, progress=False)
    assert dry["line"].to_list() == [3, 6, 8]
    # Rows of one card are predicted in file order: a block before the sale is declined.
    assert dry["status"].to_list() == ["would be declined", "checked", "checked"]


def test_ten_thousand_bad_rows_give_a_short_message_and_the_full_list_in_a_file(server, tmp_path):
    cards = _take(server, 5)
    path = tmp_path / "fixes.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(bulk.COLUMNS)
        for i in range(10_000):
            card = cards[i % 5]
            writer.writerow(
                ["reload", card.number, card.security_code, "abc", card.store_id, "", ""]
            )
    before = ledger_rows(server)
    with (
        GiftCardClient(server.url, server.username, server.password) as gc,
        pytest.raises(bulk.BulkFileError) as refused,
    ):
        bulk.run(gc, path, progress=False)
    message = str(refused.value)
    assert len(refused.value.problems) == 10_000
    assert message.count("\n  line ") == 20
    assert message.startswith("10,000 problem(s); nothing was sent:\n  line 2: amount 'abc'")
    assert "... and 9,980 more; every one is listed in" in message
    assert len(message) < 5_000
    assert refused.value.errors_file == tmp_path / "fixes.errors.csv"
    with refused.value.errors_file.open(encoding="utf-8-sig", newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert [int(r["line"]) for r in listed] == list(range(2, 10_002))
    assert all("amount 'abc' is not a number" in r["problem"] for r in listed)
    assert ledger_rows(server) == before
    _assert_no_card_data(message + refused.value.errors_file.read_text("utf-8-sig"), cards)


def test_card_numbers_never_reach_a_message_even_in_the_wrong_column(tmp_path):
    path = tmp_path / "fixes.csv"
    number = "6006491234567897"
    path.write_text(
        ",".join(bulk.COLUMNS)
        + f"\n{number},x,1234,{number},,,\nsell,{number},1234,{number},nope,,\n"
        + f"0123,{number},,,,,\n"  # a row shifted left: the code in the operation column
    )
    with pytest.raises(bulk.BulkFileError) as refused:
        bulk.validate(path)
    assert [line for line, _ in refused.value.problems] == [2, 3, 4]
    assert "line 4: operation (a value with digits) is not one of" in str(refused.value)
    assert number not in str(refused.value) and "0123" not in str(refused.value)
    assert "card number in the wrong column" in str(refused.value)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"PK\x03\x04rest-of-a-zip", "Excel workbook"),
        (b"operation,card_number\n\x81\x8d\n", "neither UTF-8 nor Windows-1252"),
        (b"", "the file is empty"),
        (b"operation|card_number|security_code\n", "missing column(s) operation"),
        (",".join(bulk.COLUMNS).encode() + b"\n,,,,,,\n", "line 2: the file has no rows"),
        (",".join(bulk.COLUMNS).encode() + b",card_number\n", "card_number appear twice"),
        (",".join(bulk.COLUMNS).encode() + b'\nsell,"6006,1,2,3,4,5,6\n', "must end with one"),
    ],
)
def test_files_that_cannot_be_read_are_refused_saying_why(tmp_path, content, why):
    path = tmp_path / "fixes.csv"
    path.write_bytes(content)
    with pytest.raises(bulk.BulkFileError, match=re.escape(why)):
        bulk.validate(path)


def test_a_value_holding_the_separator_without_quotes_is_named(tmp_path):
    path = tmp_path / "fixes.csv"
    number = "600649123456789" + luhn_check_digit("600649123456789")
    path.write_text(",".join(bulk.COLUMNS) + f"\nblock,{number},1234,,,lost, on the bus,lane 2\n")
    with pytest.raises(bulk.BulkFileError, match="line 2: the row has 1 more value"):
        bulk.validate(path)


@given(cents=st.integers(min_value=1, max_value=10**9))
def test_an_amount_reads_the_same_however_a_spreadsheet_writes_it(cents):
    amount = Decimal(cents).scaleb(-2)
    plain = f"{amount:.2f}"
    us = f"${amount:,.2f}"
    europe = f"{amount:,.2f}".translate(str.maketrans(",.", ".,")) + " €"
    spaced = f"{amount:,.2f}".replace(",", "\u202f").replace(".", ",")  # French
    read = {
        bulk.parse_amount(plain),
        bulk.parse_amount(us),
        bulk.parse_amount(us.replace("$", "USD ")),
        bulk.parse_amount(europe, ";"),
        bulk.parse_amount(spaced, ";"),
    }
    assert {str(a) for a in read} == {plain}, "one amount, and one key material"


@pytest.mark.parametrize(
    ("text", "separator", "why"),
    [
        ("1,000", ",", "ambiguous: it reads as 1000 with the comma as a thousands separator"),
        ("1.000", ";", "ambiguous: it reads as 1000 with the point"),
        ("1.500", ",", "ambiguous"),
        ("1.234", ",", "at most 2 decimals (if it means 1234, write 1234)"),
        ("1,00.00", ",", "reads no single way"),
        ("-5", ",", "above zero"),
        ("$-5.00", ",", "above zero"),
        ("0", ",", "above zero"),
        ("12.345", ",", "at most 2 decimals"),
        ("12,345", ";", "ambiguous"),
        ("5 EUR 5", ",", "not a number"),
        ("1e3", ",", "not a number"),
        ("", ",", "amount is empty"),
    ],
)
def test_amounts_that_read_two_ways_or_none_are_refused(text, separator, why):
    with pytest.raises(bulk.AmountError, match=re.escape(why)):
        bulk.parse_amount(text, separator)
