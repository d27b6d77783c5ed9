"""The README's two quick-start commands, verbatim, from a fresh clone.

Slow (a new virtual environment, the demo, lint, types and every notebook), so it runs in
CI (``CI=true``) or when ``GIFTCARD_QUICKSTART=1`` is set. The ``./dev test`` it starts
leaves the tests under tests/ to the run that started it (see conftest.py): that run is the
same command on a fresh clone already.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INNER = "GIFTCARD_QUICKSTART_INNER"


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S)
    assert block, "the README has a quick start with a bash block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def test_the_quick_start_is_two_commands():
    assert quick_start_commands() == ["./dev demo", "./dev test"]


@pytest.mark.skipif(os.environ.get(INNER) == "1", reason="inside the quick-start test's own run")
@pytest.mark.skipif(
    os.environ.get("CI") != "true" and os.environ.get("GIFTCARD_QUICKSTART") != "1",
    reason="slow: runs in CI, or with GIFTCARD_QUICKSTART=1",
)
def test_the_quick_start_works_from_a_fresh_clone(tmp_path):
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(fresh)], check=True)
    env = {**os.environ, INNER: "1"}
    env.pop("VIRTUAL_ENV", None)
    for command in quick_start_commands():
        done = subprocess.run(
            command, shell=True, cwd=fresh, env=env, capture_output=True, text=True, timeout=1500
        )
        assert done.returncode == 0, (
            f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    reports = sorted(p.name for p in (fresh / "reports").iterdir())
    assert "01-quickstart.html" in reports and any(p.endswith(".png") for p in reports)
