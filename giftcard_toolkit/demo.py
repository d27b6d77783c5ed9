"""The main job: start the seeded server, run every notebook, write reports, summarise.

``giftcard-toolkit demo [--out reports/]`` runs each notebook in ``notebooks/`` headless
(nbclient, in this Python environment), writes it as HTML (nbconvert) with its figures as
PNG files, and prints where they are with a short summary of the demo data.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@dataclass(frozen=True)
class Report:
    notebook: str
    html: Path
    figures: list[Path]
    seconds: float


def run_notebook(source: Path, out: Path, timeout: int = 300) -> Report:
    """Execute one notebook and write ``<name>.html`` and ``<name>-<n>.png`` into ``out``."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    started = time.perf_counter()
    notebook = nbformat.read(source, as_version=4)
    NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        store_widget_state=False,
        resources={"metadata": {"path": str(source.parent)}},
    ).execute()
    html, _ = HTMLExporter().from_notebook_node(notebook)
    page = out / f"{source.stem}.html"
    page.write_text(html, encoding="utf-8")
    figures: list[Path] = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                figure = out / f"{source.stem}-{len(figures) + 1}.png"
                figure.write_bytes(base64.b64decode(png))
                figures.append(figure)
    return Report(source.stem, page, figures, time.perf_counter() - started)


def summary() -> dict[str, object]:
    """Stores, cards sold, outstanding liability and anomalies of a fresh demo server."""
    from giftcard_toolkit import analytics, frames
    from giftcard_toolkit.session import open_session

    with open_session() as session:
        fetched = frames.fetch(session.client, progress=False)
    assert isinstance(fetched, tuple)  # a sync client answers at once
    _, txs = fetched
    total = analytics.liability(txs).filter(pl.col("store_id") == analytics.ALL_STORES)
    return {
        "stores": txs["store_name"].n_unique(),
        "cards sold": txs.filter(pl.col("type") == "sale").height,
        "transactions": txs.height,
        "outstanding liability": f"${total['liability'][-1]:,.2f}",
        "anomalies flagged": analytics.anomalies(txs).height,
    }


def run(out: str | Path = "reports", notebooks: Path = NOTEBOOKS) -> list[Report]:
    """Run every notebook into ``out``; returns one report each (raises on a failed cell)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.pop("GIFTCARD_URL", None)  # the demo runs on the embedded server
    return [run_notebook(source, out) for source in sorted(notebooks.glob("*.ipynb"))]
