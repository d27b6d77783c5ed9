"""The packaging promises: conda users get the same dependencies as pip users."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Where a PyPI name differs from its conda-forge name.
CONDA_NAMES = {"uvicorn[standard]": "uvicorn-standard"}


def _name(requirement: str) -> str:
    """The package name of a requirement, extras kept (``uvicorn[standard]>=0.29``)."""
    match = re.match(r"^\s*([A-Za-z0-9_.-]+(\[[^\]]+\])?)", requirement)
    assert match, requirement
    return match.group(1).lower()


# The test extra's packages that conda users get too: the engines that read the local
# dataset beside polars, which notebook 05 uses.
CONDA_FROM_TEST_EXTRA = {"duckdb", "pyarrow"}


def _pyproject_runtime() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {CONDA_NAMES.get(_name(r), _name(r)): r for r in project["dependencies"]}
    test_extra = {_name(r): r for r in project["optional-dependencies"]["test"]}
    missing = CONDA_FROM_TEST_EXTRA - set(test_extra)
    assert not missing, f"the test extra lost {sorted(missing)}"
    deps.update({name: test_extra[name] for name in CONDA_FROM_TEST_EXTRA})
    return deps


def _environment_runtime() -> dict[str, str]:
    deps: dict[str, str] = {}
    in_deps = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        item = re.match(r"^  - (\S.*)$", line)
        if in_deps and item and not item.group(1).startswith("pip"):
            name = _name(item.group(1))
            if name not in {"python"}:
                deps[name] = item.group(1)
    return deps


def _bound(requirement: str) -> str:
    return requirement[len(_name(requirement)) :].strip()


def test_environment_yml_lists_the_same_runtime_dependencies_as_pyproject():
    pip_deps, conda_deps = _pyproject_runtime(), _environment_runtime()
    assert sorted(conda_deps) == sorted(pip_deps), (
        "environment.yml and pyproject.toml disagree: "
        f"only in pyproject {sorted(set(pip_deps) - set(conda_deps))}, "
        f"only in environment.yml {sorted(set(conda_deps) - set(pip_deps))}"
    )


def test_environment_yml_pins_the_same_lower_bounds():
    pip_deps, conda_deps = _pyproject_runtime(), _environment_runtime()
    for name, requirement in pip_deps.items():
        assert _bound(conda_deps[name]) == _bound(requirement), name


def test_environment_installs_the_package_itself():
    assert "- -e ." in (ROOT / "environment.yml").read_text()


def test_console_script_points_at_the_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["giftcard-toolkit"] == "giftcard_toolkit.cli:main"
