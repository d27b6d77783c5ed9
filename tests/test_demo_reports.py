"""``giftcard-toolkit demo`` is quiet, and its reports are readable by everyone: each figure
is a PNG named for what it shows, and described in the HTML by its alt text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from giftcard_toolkit import demo

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_a_report_names_its_figures_and_describes_them(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("GIFTCARD_URL", raising=False)
    report = demo.run_notebook(ROOT / "notebooks" / "02-batch-analytics.ipynb", tmp_path)
    said = capfd.readouterr()
    assert "WARNING" not in said.err and "without encryption" not in said.err, said.err
    assert [f.name for f in report.figures] == [
        "02-batch-analytics-daily-volume.png",
        "02-batch-analytics-liability.png",
        "02-batch-analytics-redemption-curve.png",
        "02-batch-analytics-breakage.png",
    ]
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in report.figures)
    html = report.html.read_text(encoding="utf-8")
    assert "No description has been provided" not in html
    soup = BeautifulSoup(html, features="html.parser")
    remote = [str(s["src"]) for s in soup.select("script[src]") if "//" in str(s["src"])]
    assert remote == [], "the report needs no internet to open"
    images = BeautifulSoup(html, features="html.parser").select("img")
    alts = [str(image.get("alt", "")) for image in images]
    assert alts == report.alt_texts and len(alts) == 4
    assert alts[0].startswith("Bar and line chart of daily gift card volume")
    assert re.search(r"\d{4}-\d{2}-\d{2} to 2026-09-30", alts[0])
    assert re.search(r"which ends at \$[0-9,]+\.[0-9]{2}", alts[1])
    assert "breakage under a 365-day rule" in alts[3]


def test_the_demo_command_prints_no_kernel_warnings(tmp_path, capfd, monkeypatch):
    """The whole main job's output: its own lines, nothing from the kernels."""
    from giftcard_toolkit.cli import main

    monkeypatch.setattr(demo, "summary", lambda: {"stores": 3})  # the summary is tested apart
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    source = (ROOT / "notebooks" / "04-reconciliation.ipynb").read_bytes()
    (notebooks / "04-reconciliation.ipynb").write_bytes(source)
    run = demo.run
    monkeypatch.setattr(demo, "run", lambda out: run(out, notebooks))
    assert main(["demo", "--out", str(tmp_path / "reports")]) == 0
    said = capfd.readouterr()
    assert said.err == "", said.err
    assert "04-reconciliation" in said.out
    assert (tmp_path / "reports" / "04-reconciliation-anomalies.png").exists()
    # An index page links each report, with the notebook's title and first sentence.
    index = BeautifulSoup((tmp_path / "reports" / "index.html").read_text(), "html.parser")
    links = {a["href"]: a.get_text() for a in index.select("a")}
    assert links == {"04-reconciliation.html": "Reconciliation and anomalies"}
    assert "Closing a store's batch settles the day." in index.get_text()
    assert "index.html" in said.out


def test_the_ops_console_shows_in_the_report_as_a_picture_not_a_repr(tmp_path, monkeypatch):
    """Live widgets need a kernel (and a renderer from a CDN): the report of notebook 03
    draws the console instead, offline, with its tabs and labels whole."""
    monkeypatch.delenv("GIFTCARD_URL", raising=False)
    report = demo.run_notebook(ROOT / "notebooks" / "03-ops-card-fixes.ipynb", tmp_path)
    html = report.html.read_text(encoding="utf-8")
    assert "Tab(children=" not in html and "CardForm(" not in html
    assert "application/vnd.jupyter.widget-view+json" not in html, "no widget left unrendered"
    (picture,) = BeautifulSoup(html, features="html.parser").select(".gc-picture")
    text = picture.get_text(" ", strip=True)
    for shown in ("Card", "Balance", "Sell", "Reload", "Redeem", "Block / unblock"):
        assert shown in text
    assert "Card number" in text and "Security code" in text and "Look up" in text
    assert "giftcard-toolkit console" in text, "it says how to use the console for real"
    assert not re.search(r"\b\d{16}\b", text), "no card number in the picture"
