"""Reports a colleague reruns: a notebook run for *this* store and *this* day or month.

``giftcard-toolkit report 04 -p store "Riverside Mall" -p day 2026-09-29`` runs a notebook
with parameters and writes it as HTML with its figures. Each notebook declares what it
takes in one cell tagged ``parameters`` (papermill's convention: the values given go into a
cell after it). Everything given is checked *before* any cell runs: an unknown parameter, a
date that does not parse, or a store the user cannot see is refused in words, so a report
never half-runs on a typo. A cell that fails makes the run fail, naming the cell.

What a parameter is follows from its name (the same names in every notebook):

=================  ===============================================================
``store``          a store's name or id, among those the user may see
``since``,         a date, ``YYYY-MM-DD``
``until``,
``as_of``, ``day``
``month``          a month, ``YYYY-MM``
``allow_changes``  ``true`` or ``false``
anything else      text, as given
=================  ===============================================================
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from giftcard_toolkit import demo
from giftcard_toolkit.models import Store
from giftcard_toolkit.session import UnknownStore, find_store

DATES = {"since", "until", "as_of", "day"}
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


class BadParameters(ValueError):
    """Parameters a notebook cannot take; nothing was run."""


def find_notebook(name: str | Path) -> Path:
    """A notebook file, or a shipped notebook by its name, stem or number (``04``)."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    shipped = demo.notebooks_in()
    for candidate in shipped:
        if str(name) in (candidate.name, candidate.stem) or candidate.stem.split("-")[0] == str(
            name
        ).zfill(2):
            return candidate
    names = ", ".join(p.stem for p in shipped)
    raise BadParameters(f"no notebook {str(name)!r}: give a .ipynb file, or one of {names}")


def parameters_of(notebook: Path) -> dict[str, dict[str, Any]]:
    """The notebook's parameters (name, default, help), read from its ``parameters`` cell."""
    from papermill import inspect_notebook

    return dict(inspect_notebook(str(notebook)))


def check(notebook: Path, given: dict[str, str], stores: list[Store]) -> dict[str, Any]:
    """``given`` (texts, as typed) checked and typed for ``notebook``; every problem at once
    in a :class:`BadParameters`. ``stores`` are those the user may see."""
    known = parameters_of(notebook)
    problems: list[str] = []
    checked: dict[str, Any] = {}
    for name, text in given.items():
        if name not in known:
            takes = ", ".join(known) or "no parameters"
            problems.append(f"{notebook.stem} has no parameter {name!r} (it takes: {takes})")
            continue
        try:
            checked[name] = _typed(name, text, stores)
        except (ValueError, UnknownStore) as bad:
            problems.append(str(bad))
    if problems:
        raise BadParameters("; ".join(problems) + ". Nothing was run.")
    return checked


def _typed(name: str, text: str, stores: list[Store]) -> Any:
    text = text.strip()
    if name in DATES:
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            raise ValueError(
                f"{name} must be a date as YYYY-MM-DD, e.g. 2026-09-30 (got {text!r})"
            ) from None
    if name == "month":
        if not _MONTH.fullmatch(text):
            raise ValueError(f"month must be a month as YYYY-MM, e.g. 2026-08 (got {text!r})")
        return text
    if name == "allow_changes":
        if text.lower() not in _TRUE | _FALSE:
            raise ValueError(f"allow_changes must be true or false (got {text!r})")
        return text.lower() in _TRUE
    if name == "store":
        return find_store(stores, text).name
    return text


def visible_stores(use_demo: bool) -> list[Store]:
    """The stores the report's user may see: the demo's, or those of ``GIFTCARD_URL``'s user."""
    if use_demo:
        from giftcard_toolkit.server.seed import demo_stores

        return [Store(s.id, s.name, s.address) for s in demo_stores()]
    from giftcard_toolkit.client import GiftCardClient

    if not os.environ.get("GIFTCARD_URL"):
        raise BadParameters(
            "no server: set GIFTCARD_URL, GIFTCARD_USERNAME and GIFTCARD_PASSWORD, or run the "
            "report on the demo server with --demo"
        )
    with GiftCardClient.from_env() as client:
        return list(client.verify().stores)


@contextlib.contextmanager
def _server_for_kernels(use_demo: bool) -> Iterator[None]:
    """The notebook's kernel inherits this environment: without ``GIFTCARD_URL`` it starts
    its own embedded demo server."""
    saved = os.environ.get("GIFTCARD_URL")
    if use_demo:
        os.environ.pop("GIFTCARD_URL", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["GIFTCARD_URL"] = saved


def run(
    notebook: str | Path,
    parameters: dict[str, str] | None = None,
    out: str | Path = "reports",
    use_demo: bool = False,
) -> demo.Report:
    """Check ``parameters``, run ``notebook`` with them, write its HTML report into ``out``.

    Raises :class:`BadParameters` before anything runs, or :class:`demo.CellFailed`.
    """
    source = find_notebook(notebook)
    given = dict(parameters or {})
    checked = check(source, given, visible_stores(use_demo))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _server_for_kernels(use_demo):
        return demo.run_notebook(source, out, parameters=checked)
