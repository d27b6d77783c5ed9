"""The API is documented inside the repository: ``docs/openapi.json`` is exactly what the
server's own ``/openapi.json`` says, and ``docs/api.md`` names every endpoint and status code
the server has. After a change to the server, regenerate the file with
``GIFTCARD_UPDATE_DOCS=1 ./dev test tests/test_api_docs.py``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from giftcard_toolkit import errors
from giftcard_toolkit.server import Ledger, create_app

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "openapi.json"
GUIDE = ROOT / "docs" / "api.md"


def _spec(tmp_path: Path) -> dict[str, Any]:
    ledger = Ledger(tmp_path / "empty.sqlite")
    try:
        return create_app(ledger).openapi()
    finally:
        ledger.close()


def _text(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def test_the_committed_openapi_json_is_the_servers(tmp_path):
    spec = _spec(tmp_path)
    if os.environ.get("GIFTCARD_UPDATE_DOCS") == "1":
        COMMITTED.parent.mkdir(exist_ok=True)
        COMMITTED.write_text(_text(spec), encoding="utf-8")
    assert COMMITTED.exists(), "docs/openapi.json: run with GIFTCARD_UPDATE_DOCS=1 to make it"
    assert json.loads(COMMITTED.read_text(encoding="utf-8")) == spec, (
        "docs/openapi.json differs from the server's /openapi.json: regenerate it with "
        "GIFTCARD_UPDATE_DOCS=1 ./dev test tests/test_api_docs.py, and update docs/api.md "
        "to match"
    )
    assert COMMITTED.read_text(encoding="utf-8") == _text(spec), "and is written canonically"


def test_the_guide_names_every_endpoint_of_the_server(tmp_path):
    guide = GUIDE.read_text(encoding="utf-8")
    for path, operations in _spec(tmp_path)["paths"].items():
        for method in operations:
            assert f"`{method.upper()} {path}`" in guide, f"docs/api.md names {method} {path}"


def test_the_guide_names_every_status_code_and_its_exception():
    guide = GUIDE.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\d{6})` \| [^|]+ \| ([^|]+) \|$", guide, re.M)
    table = {code: raised.strip() for code, raised in rows}
    for code, declined in errors.DECLINES.items():
        assert table.get(code) == f"`errors.{declined.__name__}`", code
    assert table.get("999999") == "`errors.ServerError`"
    assert {"000000", "000001"} <= set(table)


@pytest.mark.parametrize("name", ["README.md", "docs/api.md"])
def test_the_docs_name_nothing_outside_the_repository(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert "../" not in text, f"{name} points outside the repository"
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not re.match(r"[a-z]+://", link):
            assert ((ROOT / name).parent / link).exists(), f"{name} links to {link}"
