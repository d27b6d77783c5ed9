"""The README's two quick-start commands, verbatim, from a fresh clone.

``./dev test`` from a fresh clone is what CI runs (``.ci/run`` on a clean checkout), so the
slow test here runs the other, ``./dev demo``, in a fresh clone of its own: its own virtual
environment, the seeded server, every notebook, the reports. Slow, so it runs in CI
(``CI=true``) or when ``GIFTCARD_QUICKSTART=1`` is set.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S)
    assert block, "the README has a quick start with a bash block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def test_the_quick_start_is_two_commands():
    assert quick_start_commands() == ["./dev demo", "./dev test"]


@pytest.mark.skipif(
    os.environ.get("CI") != "true" and os.environ.get("GIFTCARD_QUICKSTART") != "1",
    reason="slow: runs in CI, or with GIFTCARD_QUICKSTART=1",
)
def test_the_quick_start_demo_works_from_a_fresh_clone(tmp_path):
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(fresh)], check=True)
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env.pop("GIFTCARD_VENV", None)
    demo, tests = quick_start_commands()
    assert tests == "./dev test" and "./dev test" in (ROOT / ".ci" / "run").read_text()
    done = subprocess.run(
        demo, shell=True, cwd=fresh, env=env, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, f"{demo} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    reports = sorted(p.name for p in (fresh / "reports").iterdir())
    assert "01-quickstart.html" in reports and any(p.endswith(".png") for p in reports)
