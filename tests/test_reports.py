"""`giftcard-toolkit report`: a notebook rerun for a store and a day, checked before it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup

from giftcard_toolkit import reports
from giftcard_toolkit.server.seed import demo_stores

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def report(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GIFTCARD_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "giftcard_toolkit.cli", "report", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )


def text_of(html: Path) -> str:
    return " ".join(BeautifulSoup(html.read_text(), "html.parser").get_text(" ").split())


def test_every_notebook_has_one_parameters_cell():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name} has {len(tagged)} cells tagged parameters"
        assert reports.parameters_of(path), f"{path.name} declares no parameter"


@pytest.mark.slow
def test_a_store_day_report_shows_that_store_and_that_day(tmp_path):
    done = report(
        "04", "--demo", "-p", "store", "riverside mall", "-p", "day", "2026-09-29",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    page = tmp_path / "04-reconciliation.html"
    assert str(page) in done.stdout
    text = text_of(page)
    assert "Reconciliation of Riverside Mall - the day 2026-09-29: 1 batch(es)" in text
    assert "1 of 1 match their transactions" in text
    # The batch shown is that store's: no other store's name in the day's table.
    table = BeautifulSoup(page.read_text(), "html.parser").select("table")[0].get_text(" ")
    assert "Riverside Mall" in table
    assert "Downtown Flagship" not in table and "Airport Kiosk" not in table
    # The batch of a past day is closed already: nothing is closed by the report.
    assert "Nothing to close: the batches chosen are closed already." in text


def _failing_notebook(folder: Path) -> Path:
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('divisor = "1"  # a whole number')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Divide\n\nDivides one by a parameter."),
        parameters,
        nbformat.v4.new_code_cell("quotient = 1 / int(divisor)\nprint(quotient)"),
        nbformat.v4.new_code_cell('print("after")'),
    ]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "language": "python",
        "display_name": "Python 3",
    }
    path = folder / "divide.ipynb"
    nbformat.write(notebook, path)
    return path


def test_a_failing_cell_fails_the_run_naming_the_cell(tmp_path):
    source = _failing_notebook(tmp_path)
    out = tmp_path / "out"
    done = report(str(source), "--demo", "-p", "divisor", "0", "--out", str(out))
    assert done.returncode != 0
    assert "divide.ipynb: code cell 3 failed with ZeroDivisionError" in done.stderr
    assert "quotient = 1 / int(divisor)" in done.stderr, "the failing code is shown"
    assert "Traceback" not in done.stderr, "said in words, not a traceback of the toolkit"
    # The report is written up to the failure, error included, and the next cell never ran.
    text = text_of(out / "divide.html")
    assert "ZeroDivisionError" in text
    assert 'In [ ]: print ( "after" )' in text.split("ZeroDivisionError")[-1], "never ran"
    ran = report(str(source), "--demo", "-p", "divisor", "4", "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    assert "0.25" in text_of(out / "divide.html")


@pytest.mark.parametrize(
    ("parameters", "said"),
    [
        (["-p", "stor", "Riverside Mall"], "04-reconciliation has no parameter 'stor' (it takes: "),
        (["-p", "day", "29/09/2026"], "day must be a date as YYYY-MM-DD, e.g. 2026-09-30"),
        (["-p", "store", "Nowhere"], "no store 'Nowhere' among the stores this user may see"),
        (["-p", "allow_changes", "maybe"], "allow_changes must be true or false"),
    ],
)
def test_bad_parameters_are_refused_before_anything_runs(tmp_path, parameters, said):
    done = report("04", "--demo", *parameters, "--out", str(tmp_path))
    assert done.returncode != 0
    assert said in done.stderr
    assert "Nothing was run." in done.stderr
    assert list(tmp_path.iterdir()) == [], "no cell ran, no report was written"


def test_every_problem_is_said_at_once(tmp_path):
    done = report(
        "04", "--demo", "-p", "day", "yesterday", "-p", "store", "Moon Base", "--out",
        str(tmp_path),
    )  # fmt: skip
    assert "day must be a date" in done.stderr and "no store 'Moon Base'" in done.stderr


def test_a_store_the_user_cannot_see_is_refused(srv, tmp_path):
    clerk = {
        "GIFTCARD_URL": srv.url,
        "GIFTCARD_USERNAME": "clerk",
        "GIFTCARD_PASSWORD": srv.users["clerk"],
    }
    others = [s.name for s in srv.stores[1:]]
    done = report("04", "-p", "store", others[0], "--out", str(tmp_path), env=clerk)
    assert done.returncode != 0
    assert f"no store {others[0]!r} among the stores this user may see ('Downtown Flagship')" in (
        done.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_without_a_server_the_report_says_what_to_set(tmp_path):
    done = report("04", "--out", str(tmp_path))
    assert done.returncode != 0
    assert "set GIFTCARD_URL" in done.stderr and "--demo" in done.stderr


def test_an_unknown_notebook_is_named_with_the_ones_there_are(tmp_path):
    done = report("99", "--demo", "--out", str(tmp_path))
    assert done.returncode != 0
    assert "no notebook '99'" in done.stderr and "04-reconciliation" in done.stderr


def test_parameters_are_typed_as_the_notebook_expects():
    stores = [*demo_stores()]
    from giftcard_toolkit.models import Store

    visible = [Store(s.id, s.name, s.address) for s in stores]
    source = reports.find_notebook("04")
    checked = reports.check(
        source,
        {"store": f" {stores[2].id.upper()} ", "day": "2026-09-29", "allow_changes": "no"},
        visible,
    )
    assert checked == {"store": "Airport Kiosk", "day": "2026-09-29", "allow_changes": False}
    assert json.dumps(checked)  # plain values, as papermill writes them into the notebook


@pytest.mark.slow
def test_a_month_end_report_for_the_month_asked(tmp_path):
    done = report("06", "--demo", "-p", "month", "2026-06", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    text = text_of(tmp_path / "06-month-end.html")
    assert "Month end of June 2026: 2026-06-01 to 2026-06-30, all stores" in text
    assert "the roll-forward agrees with the cards' balances: True" in text
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "06-month-end-breakage.png",
        "06-month-end-liability.png",
    ]
    bad = report("06", "--demo", "-p", "month", "2026-13", "--out", str(tmp_path / "x"))
    assert "month must be a month as YYYY-MM, e.g. 2026-08 (got '2026-13')" in bad.stderr
