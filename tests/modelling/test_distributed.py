"""predict and explain past one process: 2 gloo processes on CPU (torch's own launcher, real demo
images and models) give the rows, probabilities, votes and CAM table of a one-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages import predict
from stages.contracts import formats
from stages.method.confident import ConfidentConfig
from stages.method.votes import vote
from stages.modelling import distributed, launch, predictor

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["mobilenetv1_025", "mobilenetv1_050"]
ROWS = 32


def test_share_splits_items_round_robin_and_covers_all() -> None:
    parts = [distributed.Context(rank, 3).share(list(range(10))) for rank in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert distributed.Context().share([4, 5]) == [4, 5]


def test_rank_shards_share_the_union_of_missing_shards() -> None:
    missing = {"a": {0, 1, 2, 5}, "b": {2, 3}}
    mine = [predictor.rank_shards(missing, distributed.Context(rank, 2)) for rank in range(2)]
    assert mine == [{"a": {0, 2, 5}, "b": {2}}, {"a": {1}, "b": {3}}]  # union 0 1 2 3 5


def test_explain_ranks_take_whole_batches() -> None:
    from stages.method.exemptions import _rank_positions

    positions = list(range(10, 20))
    shares = [_rank_positions(positions, 4, distributed.Context(rank, 2)) for rank in range(2)]
    assert shares == [[10, 11, 12, 13, 18, 19], [14, 15, 16, 17]]


def test_one_process_does_not_start_a_process_group() -> None:
    with distributed.session("cpu") as ctx:
        assert ctx == distributed.Context() and ctx.is_main
    assert launch.relaunch("stages.predict", [], 1) is None


def _run(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """A stage command in `folder`, importing this checkout's `stages`, one torch thread each."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *command], cwd=folder, env=env, text=True, capture_output=True, timeout=600
    )
    if result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory,
    demo_manifest: pd.DataFrame,
    _params: dict,
    demo_root: Path,
) -> tuple[Path, dict]:
    """A project folder: 32 demo rows (one a skip row), two demo models, small shards."""
    folder = tmp_path_factory.mktemp("distributed")
    manifest = demo_manifest.head(ROWS).copy()
    manifest.loc[5, ["path", "skip_reason"]] = [
        "missing.JPEG",
        "unreadable image: marked by the test",
    ]
    formats.write_table(
        manifest, folder / formats.manifest_path("val"), schema=formats.MANIFEST_SCHEMA
    )
    params = json.loads(json.dumps(_params))
    for name in params["models"]:
        spec = params["models"][name]["spec"]
        params["models"][name]["spec"] = f"local-dir:{ROOT / spec.removeprefix('local-dir:')}"
    params["splits"]["val"].update(root=str(demo_root), labels=None)
    params["predict"].update(
        models=MODELS,
        batch_size=4,
        shard_size=8,
        workers=0,
        threads=1,
        device="cpu",
        weights_dir=str(ROOT / "data/demo/models"),
    )
    params["decide"]["val"]["h3"] = 1
    params["explain"].update(
        methods=["gradcam"], min_methods=1, overlays=3, batch_size=2, device="cpu"
    )
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder, params


VIEWS = ("full", "boxes")
FILES = [f"{m}.{v}" for m in MODELS for v in VIEWS]
"""The predictions files of every model x view (the project's `predict.views`)."""


@pytest.fixture(scope="module")
def predicted(project: tuple[Path, dict]) -> Path:
    """Predictions of one process (folder `one`) and of `torchrun --nproc-per-node 2` (`two`)."""
    folder, params = project
    predict.run_ensemble(
        "val", params, manifest_path=folder / formats.manifest_path("val"), out_dir=folder / "one"
    )
    _run(
        folder,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "stages.cli",
        "predict-ensemble",
        "--split",
        "val",
        "--out-dir",
        "two",
    )
    return folder


@pytest.mark.slow
def test_predict_under_torchrun_writes_the_one_process_files(predicted: Path) -> None:
    for model in FILES:
        one = np.load(predicted / "one" / f"{model}.npy")
        two = np.load(predicted / "two" / f"{model}.npy")
        assert one.shape == two.shape == (ROWS, formats.NUM_CLASSES)
        assert np.isnan(two[5]).all() and not np.isnan(np.delete(two, 5, axis=0)).any()
        np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)
        sidecars = [
            json.loads((predicted / run / f"{model}.json").read_text()) for run in ("one", "two")
        ]
        assert sidecars[0] == sidecars[1]
    assert sorted(p.name for p in (predicted / "two").iterdir()) == sorted(
        f"{m}{ext}" for m in FILES for ext in (".npy", ".json")
    )  # no work folders, no temp files


@pytest.mark.slow
def test_votes_from_torchrun_predictions_are_identical(predicted: Path) -> None:
    labels = pd.read_parquet(predicted / formats.manifest_path("val"))["label"].to_numpy()
    active = np.ones(ROWS, dtype=bool)
    active[5] = False
    tables = []
    for run in ("one", "two"):
        probs = {m: np.load(predicted / run / f"{m}.npy", mmap_mode="r") for m in FILES}
        for strategy in ("exact", "streaming"):
            tables.append(
                vote(
                    np.where(active, labels, -1),
                    probs,
                    active=active,
                    config=ConfidentConfig(strategy=strategy),
                ).table
            )
    assert all(table.equals(tables[0]) for table in tables)


@pytest.mark.slow
def test_explain_with_two_processes_writes_the_one_process_table_and_overlays(
    predicted: Path, project: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages.explain import run_explain
    from stages.method.exemptions import ExplainConfig
    from stages.vote import run_vote

    folder, params = project
    monkeypatch.chdir(folder)
    run_vote("val", params, predictions=folder / "one", metrics_out=folder / "vote.json")
    with predictor.cpu_threads(1):  # as each torchrun process (OMP_NUM_THREADS=1)
        run_explain(ExplainConfig.from_params(params, "val"))
    cams = folder / formats.cams_path("val")
    overlays = folder / "data/cams/val-overlays"
    first = {p.name: p.read_bytes() for p in [cams, *overlays.iterdir()]}
    assert len(first) == 5 and pd.read_parquet(cams).shape[0] >= 3  # 3 PNGs + index.json
    cams.unlink()
    edited = {**params, "explain": {**params["explain"], "processes": 2}}
    (folder / "params-2.yaml").write_text(yaml.safe_dump(edited))
    run = _run(folder, "-m", "stages.explain", "--split", "val", "--params", "params-2.yaml")
    assert "torch.distributed.run" in run.stderr  # started itself under torchrun
    second = {p.name: p.read_bytes() for p in [cams, *overlays.iterdir()]}
    assert second == first
