"""The test suite is hermetic: a user's own overrides, promoted labels and DVC outputs in the
working tree never reach a test, so following the README's review workflow (commit a correction,
promote an iteration) cannot break `make test`.

Tests run in a fresh-clone copy of the project (`pristine_project` in conftest: links to the code,
params and demo, fresh overrides and iterations), and every project copy a slow test reproduces
(`copy_project`) starts from header-only overrides and no promoted labels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, copy_project

HEADER = "image_id,action,new_label,note\n"
USER_OVERRIDE = (
    "ILSVRC2012_val_00003797,fix,738,a pot\nILSVRC2012_val_00003797,secondary,696,paintbrush too\n"
)
"""The README's review round: the paintbrush image fixed to pot, paintbrush kept as secondary."""


def test_tests_run_in_a_fresh_clone_not_in_the_working_tree(pristine_project: Path) -> None:
    assert Path.cwd() == pristine_project != ROOT
    assert Path("data/overrides/val.csv").read_text() == HEADER
    assert not list(Path("iterations").glob("*.parquet"))
    assert not Path("data/decisions").exists() and not Path("metrics").exists()
    assert Path("params.yaml").resolve() == ROOT / "params.yaml"


def test_a_project_copy_starts_like_a_fresh_clone(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", 4)
    for split in ("val", "train_demo"):
        assert (project / f"data/overrides/{split}.csv").read_text() == HEADER
    assert sorted(p.name for p in (project / "iterations").iterdir()) == ["README.md"]


def _user_clone(dest: Path) -> Path:
    """A clone of this project (its tracked files; the demo linked) in which the user has
    committed a review correction and promoted labels, as README's workflows do."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in tracked:
        if name.startswith("data/demo/") or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, dest / name)
    (dest / "data/demo").symlink_to(ROOT / "data/demo")
    (dest / "data/overrides/val.csv").write_text(HEADER + USER_OVERRIDE)
    (dest / "iterations/val.parquet").write_bytes(b"labels promoted by the user, not a test's")
    return dest


@pytest.mark.slow
def test_a_users_committed_override_does_not_break_the_suite(tmp_path: Path) -> None:
    """In a clone with the README's correction and a promoted labels file, the tests that used to
    read them (the overrides reader's, decide's, the project copies of the slow tests) pass."""
    clone = _user_clone(tmp_path / "clone")
    selected = [
        "tests/method/test_overrides.py",
        "tests/test_decide.py",
        "tests/test_promote.py",
        "tests/test_hermetic.py::test_tests_run_in_a_fresh_clone_not_in_the_working_tree",
        "tests/test_hermetic.py::test_a_project_copy_starts_like_a_fresh_clone",
    ]
    env = {**os.environ, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selected]
    done = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "failed" not in done.stdout
    assert (clone / "data/overrides/val.csv").read_text() == HEADER + USER_OVERRIDE
