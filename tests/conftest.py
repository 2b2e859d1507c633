"""Shared fixtures: the embedded demo (real ILSVRC2012 val images + five real timm models)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import yaml

from stages.contracts import formats
from stages.contracts.params import load_params

ROOT = Path(__file__).resolve().parents[1]
DEMO_ROOT = ROOT / "data" / "demo" / "imagenet-val"
DEMO_MODELS = ROOT / "data" / "demo" / "models"
SHARED_DEMO = ROOT.parent / "shared" / "demo" / "imagenet-val-1300"

# The published-split fixtures (inputs, cache, online) shared by publish, card, hub and shards.
pytest_plugins = ["hub_inputs"]


USER_STATE = ("data/overrides", "iterations")
"""What a user's own review and iteration rounds write into the project (overrides, promoted labels
and their rounds history): never read by a test, so that committing a correction (as the README's
review workflow does) cannot break `make test`."""


def fresh_user_state(dest: Path, params_file: Path) -> None:
    """Write the state of a fresh clone into `dest`: a header-only overrides file for every split
    and an `iterations/` folder without promoted labels."""
    params = load_params(params_file)
    for entry in (params.get("splits") or {}).values():
        overrides = entry.get("overrides") if isinstance(entry, dict) else None
        if overrides and not Path(overrides).is_absolute():
            (dest / overrides).parent.mkdir(parents=True, exist_ok=True)
            (dest / overrides).write_text("image_id,action,new_label,note\n")
    (dest / "iterations").mkdir(exist_ok=True)
    if (ROOT / "iterations/README.md").is_file():
        shutil.copy(ROOT / "iterations/README.md", dest / "iterations/README.md")


PRISTINE_LINKS = (
    "stages",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    "data/demo",
    "data/table_a1_merges.csv",
    "docs",
    "README.md",
)
"""The project's own files a test's working folder links to (the code, the configuration and the
committed demo); everything else there (the user's overrides, iterations, DVC outputs) is fresh."""


@pytest.fixture(scope="session")
def pristine_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder laid out like a fresh clone of the project: links to its code, params and
    demo, fresh overrides and iterations, and no DVC output of the user's runs."""
    folder = tmp_path_factory.mktemp("pristine")
    for name in PRISTINE_LINKS:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(ROOT / name)
    fresh_user_state(folder, ROOT / "params.yaml")
    return folder


@pytest.fixture(autouse=True)
def _project_cwd(monkeypatch: pytest.MonkeyPatch, pristine_project: Path) -> None:
    """Stages resolve params paths relative to the project root, as `dvc repro` runs them: tests
    run in a fresh-clone copy of it (`pristine_project`), never in the user's working tree."""
    monkeypatch.chdir(pristine_project)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def demo_root() -> Path:
    """The embedded demo split root (Kaggle layout, 500 images)."""
    return DEMO_ROOT


@pytest.fixture(scope="session")
def shared_demo() -> Path:
    """All 1,300 demo images in ../shared (present on developer machines and in CI)."""
    if not SHARED_DEMO.is_dir():
        pytest.skip(f"{SHARED_DEMO} not present")
    return SHARED_DEMO


@pytest.fixture(scope="session")
def _params() -> dict:
    from stages.contracts.params import load_params

    return load_params(ROOT / "params.yaml")


@pytest.fixture
def params(_params: dict) -> dict:
    """A fresh copy of the project's params.yaml (tests may edit it)."""
    return copy.deepcopy(_params)


@pytest.fixture(scope="session")
def demo_manifest() -> pd.DataFrame:
    """Manifest of the embedded demo's 500 val images, built by the real ingest code."""
    from stages.sources.layouts import Source
    from stages.sources.manifest import build_manifest

    manifest, _ = build_manifest(Source(DEMO_ROOT, "kaggle", "val"))
    return manifest


@pytest.fixture(scope="session")
def small_manifest(demo_manifest: pd.DataFrame) -> pd.DataFrame:
    """The first 48 rows of the demo manifest: enough for fast tests on real images."""
    return demo_manifest.head(48).reset_index(drop=True)


PROJECT_FILES = [
    "stages",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    "iterations",
    "data/table_a1_merges.csv",
    "data/overrides",
    "data/demo/models",
    "data/demo/references",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
]


def copy_project(dest: Path, n_images: int) -> Path:
    """Copy the project into `dest` with only the first `n_images` demo images, git-init it."""
    for name in PROJECT_FILES:
        if name in USER_STATE:
            continue
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    split = dest / "data/demo/imagenet-val"
    lines = (DEMO_ROOT / "LOC_val_solution.csv").read_text().splitlines(keepends=True)
    keep = sorted(lines[1:])[:n_images]
    (split / "ILSVRC/Data/CLS-LOC/val").mkdir(parents=True)
    (split / "ILSVRC/Annotations/CLS-LOC/val").mkdir(parents=True)
    shutil.copy(DEMO_ROOT / "LOC_synset_mapping.txt", split)
    (split / "LOC_val_solution.csv").write_text(lines[0] + "".join(keep))
    for line in keep:
        image_id = line.split(",")[0]
        shutil.copy(
            DEMO_ROOT / "ILSVRC/Data/CLS-LOC/val" / f"{image_id}.JPEG",
            split / "ILSVRC/Data/CLS-LOC/val",
        )
        shutil.copy(
            DEMO_ROOT / "ILSVRC/Annotations/CLS-LOC/val" / f"{image_id}.xml",
            split / "ILSVRC/Annotations/CLS-LOC/val",
        )
    _shrink_train_demo(dest / "params.yaml", n_images)
    fresh_user_state(dest, dest / "params.yaml")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "project"], cwd=dest, check=True)
    return dest


def _shrink_train_demo(params_file: Path, n_images: int) -> None:
    """The copy's train_demo split takes the first half of its images, so that the retrain
    comparison keeps unseen val images to score (the project's own: 300 of 500)."""
    import yaml

    params = yaml.safe_load(params_file.read_text())
    if "train_demo" in params.get("splits", {}):
        params["splits"]["train_demo"]["limit"] = max(2, n_images // 2)
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def run_in(project: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (dvc, git, python, imagenet-clean) in a test project with the venv on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    result = subprocess.run(list(command), cwd=project, env=env, text=True, capture_output=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def stale_stages(project: Path, *targets: str) -> set[str]:
    """Stages that `dvc status` (of `targets`, default all) reports as changed. The ingest stages
    are `always_changed` (DVC does not walk image folders; ingest checks its images itself): they
    count only when something besides "always changed" is listed."""
    status = json.loads(run_in(project, "dvc", "status", "--json", *targets).stdout or "{}")
    return {
        stage
        for stage, changes in status.items()
        if any(change != "always changed" for change in changes)
    }


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    """The command line of a running process (empty once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def make_project(tmp_path: Path):
    """Factory: a git-initialised copy of the project on a slice of the demo."""

    def make(n_images: int = 24) -> Path:
        return copy_project(tmp_path / "project", n_images)

    return make


@pytest.fixture
def project(
    tmp_path: Path, small_manifest: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> pd.DataFrame:
    """In tmp_path: val = 6 demo rows (row 1 a skip row, row 0 also in train_demo) and its ledger
    (row 3 fixed to label + 1, row 4 removed); returns val's manifest."""
    monkeypatch.chdir(tmp_path)
    val = small_manifest.head(6).copy()
    val.loc[1, "skip_reason"] = "empty file (0 bytes)"
    for split, table in (("val", val), ("train_demo", small_manifest.iloc[[0, 10]])):
        formats.write_table(table, formats.manifest_path(split), schema=formats.MANIFEST_SCHEMA)
    ledger = pd.DataFrame(
        {"image_id": val["image_id"], "action": "keep", "new_label": val["label"].astype("Int64")}
    )
    ledger.loc[3, ["action", "new_label"]] = ["fix", (int(val["label"][3]) + 1) % 1000]
    ledger.loc[4, ["action", "new_label"]] = ["remove", pd.NA]
    ledger.loc[1, ["action", "new_label"]] = ["remove", pd.NA]
    formats.write_table(ledger, formats.ledger_path("val"))
    return val


@pytest.fixture
def split_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, Any]]:
    """A 400-row split with ledger, votes, predictions and images for the review report."""
    from test_report import write_split

    params = write_split(tmp_path, 400)
    monkeypatch.chdir(tmp_path)
    return tmp_path, params


# --- the out-of-fold demo project (train, oof and retrain tests) -----------------------------


MODEL = "mobilenetv3_small_050"


TINY = {
    "epochs": 2,
    "batch_size": 4,
    "eval_batch_size": 16,
    "input_size": 32,
    "workers": 0,
    "threads": 1,
    "checkpoint_every": 2,
}


def train_sections(
    root: str,
    *,
    settings: dict | None = None,
    launch: dict | None = None,
    models: tuple[str, ...] = (MODEL,),
    folds: int = 2,
    limit: int | None = None,
) -> dict:
    """The params.yaml sections of an out-of-fold split `train_demo` (see docs/train-split.md:
    Cleaning the train split). The lead will fold them into the project's params.yaml; tests add
    them."""
    return {
        "splits": {
            "train_demo": {
                "root": root,
                "layout": "kaggle",
                "subset": "val",
                "synsets": None,
                "boxes": None,
                "limit": limit,
                "labels": "iterations/train_demo.parquet",
                "overrides": "data/overrides/train_demo.csv",
                "predictions": "out-of-fold",
                "models": list(models),
            }
        },
        "models": {name: {"spec": name, "pretrained": False} for name in models},
        "train": {
            "splits": ["train_demo"],
            "models": list(models),
            "folds": list(range(folds)),
            "seed": 0,
            "launch": {"nproc_per_node": 1, **(launch or {})},
            "settings": {**TINY, **(settings or {})},
        },
        "vote": {"train_demo": {"fn": 1.0}},
        "decide": {"train_demo": {"strategy": "consensus", "h1": "M", "h2": "M/2", "h3": "M"}},
    }


def merge(params: dict, sections: dict) -> dict:
    """params with each section's keys added (nested one level)."""
    params = copy.deepcopy(params)
    for name, values in sections.items():
        params.setdefault(name, {})
        params[name].update(copy.deepcopy(values))
    return params


def make_oof_project(path: Path, manifest: pd.DataFrame, **options) -> Path:
    """A folder with params.yaml (the project's + train_demo) and the split's manifest."""
    params = merge(load_params(ROOT / "params.yaml"), train_sections(str(DEMO_ROOT), **options))
    (path / "data/manifests").mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    formats.write_table(
        manifest, path / "data/manifests/train_demo.parquet", schema=formats.MANIFEST_SCHEMA
    )
    return path


def stage(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m stages.<args>` in a project folder, importing this checkout's stages."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=project, env=env, text=True, capture_output=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One small split with its report, shared by the module's servers."""
    from test_report import write_split

    from stages.review import run_review

    root = tmp_path_factory.mktemp("served")
    params = write_split(root, 120, seed=2)
    params["review"]["keep_sample"] = 5
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run_review("val", params)
    return root, params
