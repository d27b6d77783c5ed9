"""The README's Python blocks run as written: all of them, in order, as one script, against
the embedded demo server, in a fresh interpreter and an empty folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)


def test_the_readme_shows_python_for_each_part():
    blocks = python_blocks()
    assert len(blocks) >= 5
    script = "\n".join(blocks)
    for shown in ("running()", "GiftCardClient(", "frames.fetch(", "bulk.run(", "cases.replace("):
        assert shown in script


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs_in_order(tmp_path):
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(python_blocks()), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIFTCARD_")}
    env.update(MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the README's code failed:\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr
    assert "Declined 100005" in done.stdout, "the decline the client block shows is printed"
    assert (tmp_path / "txs.parquet").exists() and (tmp_path / "audit.jsonl").exists()
