"""Shared fixtures: the embedded demo (real ILSVRC2012 val images + five real timm models)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_ROOT = ROOT / "data" / "demo" / "imagenet-val"
DEMO_MODELS = ROOT / "data" / "demo" / "models"
SHARED_DEMO = ROOT.parent / "shared" / "demo" / "imagenet-val-1300"


@pytest.fixture(autouse=True)
def _project_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages resolve params paths relative to the project root, as `dvc repro` runs them."""
    monkeypatch.chdir(ROOT)


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
    from stages.params import load_params

    return load_params(ROOT / "params.yaml")


@pytest.fixture
def params(_params: dict) -> dict:
    """A fresh copy of the project's params.yaml (tests may edit it)."""
    return copy.deepcopy(_params)


@pytest.fixture(scope="session")
def demo_manifest() -> pd.DataFrame:
    """Manifest of the embedded demo's 500 val images, built by the real ingest code."""
    from stages.ingest import build_manifest
    from stages.layouts import Source

    manifest, _ = build_manifest(Source(DEMO_ROOT, "kaggle", "val"))
    return manifest


@pytest.fixture(scope="session")
def small_manifest(demo_manifest: pd.DataFrame) -> pd.DataFrame:
    """The first 48 rows of the demo manifest: enough for fast tests on real images."""
    return demo_manifest.head(48).reset_index(drop=True)
