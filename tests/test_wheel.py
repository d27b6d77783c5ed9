"""Installed from a wheel, the toolkit works as in the repository: notebooks shipped inside
the package, `demo`, `notebooks DIR` and `--version`; a run with nothing to run fails."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import giftcard_toolkit
from giftcard_toolkit import cli, demo

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
# The web pages' notebooks ship too (apps.py serves them with Voilà).
PAGES = ["console.ipynb", "dashboard.ipynb"]


def test_the_version_comes_from_the_installed_metadata(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"giftcard-toolkit {giftcard_toolkit.__version__}"
    assert giftcard_toolkit.__version__ != "0+unknown"


def test_demo_with_nothing_to_run_fails_in_words(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "NOTEBOOKS", tmp_path / "empty")
    with pytest.raises(SystemExit) as failed:
        cli.main(["demo", "--out", str(tmp_path / "reports")])
    assert "no notebooks in" in str(failed.value) and "reinstall" in str(failed.value)
    assert not (tmp_path / "reports").exists()


def test_notebooks_are_copied_and_edits_never_overwritten(tmp_path, capsys):
    dest = tmp_path / "mine"
    assert cli.main(["notebooks", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == SHIPPED
    assert cli.main(["notebooks", str(dest)]) == 0  # the same files: nothing to do
    assert "0 notebook(s) copied" in capsys.readouterr().out
    edited = dest / SHIPPED[0]
    edited.write_text(edited.read_text().replace("Quick", "My quick"))
    (dest / SHIPPED[1]).unlink()
    with pytest.raises(SystemExit, match=f"{SHIPPED[0]} in .* differ"):
        cli.main(["notebooks", str(dest)])
    assert "My quick" in edited.read_text(), "an edit is never overwritten"
    assert not (dest / SHIPPED[1]).exists(), "nothing was copied"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if os.environ.get("CI") != "true":
        pytest.skip("builds and installs a wheel (a minute): runs in CI, or with CI=true")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=out,
    )
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_ships_the_notebooks(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.split("/")[-1] for n in names if n.endswith(".ipynb")) == sorted(
        SHIPPED + PAGES
    )


def test_installed_from_the_wheel_the_commands_work_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies come from this environment (already installed, no download); the
    # toolkit itself only from the wheel.
    site = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "_toolkit_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GIFTCARD_URL")}
    # ...and so do the data files pip puts beside them (nbconvert's HTML templates).
    env["JUPYTER_PATH"] = str(Path(sysconfig.get_paths()["data"], "share", "jupyter"))
    tool = str(venv / "bin" / "giftcard-toolkit")
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import giftcard_toolkit; print(giftcard_toolkit.__file__)",
        ],
        cwd=empty,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(site), "the toolkit is the wheel's, not the repository's"
    version = subprocess.run(
        [tool, "--version"], cwd=empty, env=env, check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == f"giftcard-toolkit {giftcard_toolkit.__version__}"
    ran = subprocess.run(
        [tool, "demo", "--out", "reports"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    for name in SHIPPED:
        assert Path(name).stem in ran.stdout
        assert (empty / "reports" / f"{Path(name).stem}.html").stat().st_size > 10_000
    copied = subprocess.run(
        [tool, "notebooks", "mine"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert copied.returncode == 0, copied.stderr
    assert sorted(p.name for p in (empty / "mine").iterdir()) == SHIPPED


def test_the_sdist_holds_what_a_packager_needs_to_rebuild_and_test(tmp_path):
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    import tarfile

    sdist = tmp_path / made.stdout.strip().splitlines()[-1]
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    for needed in [
        "pyproject.toml",
        "README.md",
        "environment.yml",
        "dev",
        "data/demo-card-stock.csv",
        "tests/conftest.py",
        "tests/test_wheel.py",
        *(f"notebooks/{n}" for n in SHIPPED),
        *(f"giftcard_toolkit/notebooks/{n}" for n in SHIPPED),
    ]:
        assert f"{top}/{needed}" in names, needed
