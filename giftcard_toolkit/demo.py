"""The main job: start the seeded server, run every notebook, write reports, summarise.

``giftcard-toolkit demo [--out reports/]`` runs each notebook in ``notebooks/`` headless
(nbclient, in this Python environment), writes it as HTML (nbconvert) with its figures as
PNG files, and prints where they are with a short summary of the demo data.

Figures are named for what they show (``02-batch-analytics-liability.png``) and carry their
description as the HTML's alt text: both come from the output's metadata, which the
figures of :mod:`giftcard_toolkit.analysis.plots` put there (see
:func:`giftcard_toolkit.analysis.plots.alt_text`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

# Shipped inside the package (in a clone, a link to the top-level notebooks/).
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
# The kernels nbclient starts listen on loopback only, and every message is signed with a
# key made for the run; ipykernel still warns at start that its TCP transport is not
# encrypted, which readers of the demo's output take for a problem. Warnings only: errors
# are still shown.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


@dataclass(frozen=True)
class Figure:
    """A figure of a report: its PNG file and what it shows, in words."""

    path: Path
    alt: str


@dataclass(frozen=True)
class Report:
    notebook: str
    html: Path
    figures: list[Path]
    seconds: float
    alt_texts: list[str] = field(default_factory=list)  # one per figure, in order
    title: str = ""  # the notebook's heading
    summary: str = ""  # the first sentence of its introduction


class CellFailed(RuntimeError):
    """A cell of a notebook raised: which cell (its number among the code cells, as Jupyter
    shows it), the start of its code, and the error. The report is written all the same."""

    def __init__(self, notebook: str, cell: int, source: str, error: str, html: Path) -> None:
        self.notebook, self.cell, self.source, self.error, self.html = (
            notebook,
            cell,
            source,
            error,
            html,
        )
        code = "\n".join(f"    {line}" for line in source.splitlines()[:6])
        super().__init__(
            f"{notebook}: code cell {cell} failed with {error}\n{code}\n"
            f"(the report up to that cell, error included, is in {html})"
        )


def run_notebook(
    source: Path, out: Path, timeout: int = 300, parameters: dict[str, Any] | None = None
) -> Report:
    """Execute one notebook and write ``<name>.html`` and ``<name>-<n>.png`` into ``out``.

    ``parameters`` go into a cell after the notebook's ``parameters`` cell (papermill's
    convention); a failing cell raises :class:`CellFailed` once the report is written.
    """
    return asyncio.run(_run_notebooks([source], out, timeout, parameters))[0]


async def _run_notebooks(
    sources: list[Path], out: Path, timeout: int, parameters: dict[str, Any] | None = None
) -> list[Report]:
    """Run notebooks side by side (each in its own kernel), a few at a time."""
    at_once = asyncio.Semaphore(2 * (os.cpu_count() or 1))  # kernels wait on servers too

    async def one(source: Path) -> Report:
        async with at_once:
            return await _run_one(source, out, timeout, parameters)

    # Every notebook runs to its end (and its kernel stops) before the first failure raises.
    done = await asyncio.gather(*(one(source) for source in sources), return_exceptions=True)
    for result in done:
        if isinstance(result, BaseException):
            raise result
    return [r for r in done if isinstance(r, Report)]


async def _run_one(
    source: Path, out: Path, timeout: int, parameters: dict[str, Any] | None
) -> Report:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    started = time.perf_counter()
    notebook = nbformat.read(source, as_version=4)
    if parameters:
        from papermill.iorw import load_notebook_node
        from papermill.parameterize import parameterize_notebook

        # papermill's reader adds the metadata its parameterizer needs.
        notebook = parameterize_notebook(
            load_notebook_node(str(source)), parameters, kernel_name="python3"
        )
    failure: CellExecutionError | None = None
    try:
        await NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            store_widget_state=False,
            extra_arguments=KERNEL_ARGUMENTS,
            resources={"metadata": {"path": str(source.parent)}},
        ).async_execute()
    except CellExecutionError as error:
        failure = error
    report = _write_report(notebook, source.stem, out, time.perf_counter() - started)
    if failure is not None:
        number, code = _failed_cell(notebook)
        raise CellFailed(
            source.name, number, code, f"{failure.ename}: {failure.evalue}", report.html
        )
    return report


def _failed_cell(notebook: Any) -> tuple[int, str]:
    """(the failing cell's number among the code cells, its code)."""
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return number, cell.source
    return len(code_cells), ""


def _write_report(notebook: Any, stem: str, out: Path, seconds: float) -> Report:
    from nbconvert import HTMLExporter

    figures = _figures(notebook, stem, out)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    page = out / f"{stem}.html"
    page.write_text(_readable_offline(html, figures), encoding="utf-8")
    title, summary = _title_and_summary(notebook, stem)
    return Report(
        stem, page, [f.path for f in figures], seconds, [f.alt for f in figures], title, summary
    )


def _title_and_summary(notebook: Any, stem: str) -> tuple[str, str]:
    """The first markdown cell's heading and the first sentence after it."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.strip().splitlines()
        title = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else stem
        prose = " ".join(line.strip() for line in lines[1:] if line.strip())
        prose = re.sub(r"[*`]", "", prose)  # markdown's emphasis and code marks
        sentence = re.split(r"(?<=[.!?])\s", prose, maxsplit=1)[0] if prose else ""
        return title, sentence
    return stem, ""


def _figures_and_time(report: Report) -> str:
    count = len(report.figures)
    figures = f"{count} figure{'s' if count != 1 else ''}, " if count else ""
    return f"{figures}{report.seconds:.1f} s"


def write_index(reports: list[Report], out: Path, heading: str = "Reports") -> Path:
    """``index.html`` in ``out``: a link to each report with its one-line summary."""
    from html import escape

    items = "\n".join(
        f'<li><a href="{escape(r.html.name)}">{escape(r.title or r.notebook)}</a>'
        f" — {escape(r.summary)} <small>({_figures_and_time(r)})</small></li>"
        for r in reports
    )
    page = out / "index.html"
    page.write_text(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(heading)}</title>"
        "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.5}"
        "li{margin:.5em 0}</style></head>\n"
        f"<body><h1>{escape(heading)}</h1>\n<ul>\n{items}\n</ul></body></html>\n",
        encoding="utf-8",
    )
    return page


def _figures(notebook: Any, stem: str, out: Path) -> list[Figure]:
    """Write each PNG output as ``<stem>-<name>.png``, named by its ``giftcard_toolkit``
    metadata (else by its place), and collect its alt text."""
    figures: list[Figure] = []
    names: set[str] = set()
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if not png:
                continue
            metadata = output.get("metadata", {})
            number = len(figures) + 1
            name = (
                re.sub(
                    r"[^a-z0-9]+",
                    "-",
                    str(metadata.get("giftcard_toolkit", {}).get("figure") or "").lower(),
                ).strip("-")
                or f"figure-{number}"
            )
            if name in names:
                name = f"{name}-{number}"
            names.add(name)
            alt = metadata.get("image/png", {}).get("alt") or f"Figure {number} of {stem}"
            path = out / f"{stem}-{name}.png"
            path.write_bytes(base64.b64decode(png))
            figures.append(Figure(path, " ".join(str(alt).split())))
    return figures


def _readable_offline(html: str, figures: list[Figure]) -> str:
    """``html`` with each figure's image described by its alt text (nbconvert leaves
    "No description has been provided for this image" otherwise), and without the scripts
    nbconvert's template loads from a CDN (require.js, MathJax): the reports hold no
    formulas and no live widgets, and must open whole on a machine with no internet."""
    from bs4 import BeautifulSoup  # nbconvert's own dependency, as its HTML exporter uses it

    by_data = {base64.b64encode(f.path.read_bytes()).decode(): f.alt for f in figures}
    soup = BeautifulSoup(html, features="html.parser")
    for script in soup.select("script[src]"):
        if str(script["src"]).startswith(("http://", "https://", "//")):
            script.decompose()
    for image in soup.select("img"):
        source = str(image.get("src", ""))
        if source.startswith("data:image/png;base64,"):
            alt = by_data.get("".join(source.split(",", 1)[1].split()))
            if alt:
                image["alt"] = alt
    return str(soup)


def summary() -> dict[str, object]:
    """Stores, cards sold, outstanding liability and anomalies of a fresh demo server."""
    from giftcard_toolkit.analysis import analytics, frames
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


class NothingToRun(RuntimeError):
    """No notebook where notebooks were looked for: a run that did nothing is no success."""


def notebooks_in(folder: Path | None = None) -> list[Path]:
    """The notebooks of ``folder`` (the shipped ones by default), in order;
    :class:`NothingToRun` when there are none."""
    folder = folder or NOTEBOOKS
    found = sorted(folder.glob("*.ipynb"))
    if not found:
        raise NothingToRun(
            f"no notebooks in {folder}: the installation is incomplete (reinstall "
            "giftcard_toolkit), or the folder given holds none"
        )
    return found


def run(out: str | Path = "reports", notebooks: Path | None = None) -> list[Report]:
    """Run every notebook into ``out``; returns one report each (raises on a failed cell)."""
    sources = notebooks_in(notebooks)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.pop("GIFTCARD_URL", None)  # the demo runs on the embedded server
    from giftcard_toolkit.server.runner import prepare_demo

    prepare_demo()  # seeded once here, copied by every notebook's server
    reports = asyncio.run(_run_notebooks(sources, out, timeout=300))
    write_index(reports, out, "giftcard_toolkit demo reports")
    return reports


def copy_notebooks(dest: str | Path, notebooks: Path | None = None) -> list[Path]:
    """Copy the shipped notebooks into ``dest`` to start one's own analysis from.

    A file already there that is the same is left as it is; one that differs (your edits)
    is never overwritten: the copy is refused, naming them, before anything is written.
    """
    dest = Path(dest)
    sources = notebooks_in(notebooks)
    changed = [
        dest / s.name
        for s in sources
        if (dest / s.name).exists() and (dest / s.name).read_bytes() != s.read_bytes()
    ]
    if changed:
        names = ", ".join(p.name for p in changed)
        raise FileExistsError(
            f"{names} in {dest} differ from the shipped notebooks (your changes?): nothing "
            "was copied; move them aside or copy into another folder"
        )
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in sources:
        target = dest / source.name
        if not target.exists():
            target.write_bytes(source.read_bytes())
            copied.append(target)
    return copied
