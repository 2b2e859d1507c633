"""stages.explain and stages.method.exemptions: config, candidate selection and the stage end to end
on a tiny votes table.

The votes table is built here (the vote stage is not used), with the contract's schema; everything
else is real: demo images, demo models, pytorch-grad-cam.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages import explain
from stages.contracts import formats
from stages.contracts.errors import ConfigError
from stages.method import exemptions

VOTES_SCHEMA = formats.VOTES_SCHEMA

MODELS = ["mobilenetv1_025", "mobilenetv1_050", "mobilenetv1_075"]


def make_votes(manifest: pd.DataFrame, rows: dict[int, tuple[list[str], str | None]]) -> pa.Table:
    """Votes for `manifest`: row -> (top5_hit_models, inactive_reason); other rows: all models
    hit."""
    hits = [rows.get(i, (MODELS, None))[0] for i in range(len(manifest))]
    inactive = [rows.get(i, (MODELS, None))[1] for i in range(len(manifest))]
    labels = [None if r else int(v) for v, r in zip(manifest["label"], inactive)]
    return pa.table(
        {
            "image_id": manifest["image_id"].tolist(),
            "label": labels,
            "original_label": manifest["label"].astype(int).tolist(),
            "iteration": [0] * len(manifest),
            "inactive_reason": inactive,
            "cl_candidates": [[] for _ in hits],
            "cl_models": [[] for _ in hits],
            "top5_misses": [len(MODELS) - len(h) for h in hits],
            "top5_hit_models": hits,
            "n_models": [len(MODELS)] * len(manifest),
            "ensemble_top": [[] for _ in hits],
            "ensemble_probs": [[] for _ in hits],
            "label_prob": [None] * len(manifest),
            "model_top1": [[] for _ in hits],
        },
        schema=VOTES_SCHEMA,
    )


# ----------------------------------------------------------------------------- config


def test_config_sorts_methods_by_cost_and_validates(params: dict) -> None:
    params["explain"]["methods"] = ["scorecam", "gradcam++", "gradcam"]
    config = exemptions.CamOptions.from_params(params)
    assert config.methods == ("gradcam", "gradcam++", "scorecam")
    assert (config.rule.heat, config.rule.min_area, config.rule.min_methods) == (0.75, 0.01, 2)
    bad = (
        {"methods": ["gradcam", "layercam"]},
        {"min_methods": 4},
        {"batch_size": 0},
        {"colour": "red"},
        {"target_layers": {"m": 3}},
        {"exhaustive": "yes"},
    )
    messages = (
        "explain.methods.*layercam",
        "min_methods.*at most the 3 methods",
        "explain.batch_size.*>= 1",
        "unknown key 'colour'",
        "explain.target_layers",
        "explain.exhaustive.*true or false",
    )
    for change, message in zip(bad, messages):
        edited = copy.deepcopy(params)
        edited["explain"].update(change)
        with pytest.raises(ConfigError, match=message):
            exemptions.CamOptions.from_params(edited)


def test_select_candidates_needs_active_rows_with_boxes_and_enough_misses(small_manifest) -> None:
    manifest = small_manifest.head(6).copy()
    manifest.at[3, "boxes"] = []
    votes = make_votes(
        manifest,
        {0: ([MODELS[1]], None), 2: ([], None), 3: ([], None), 4: ([], "skip: unreadable image")},
    ).to_pandas()
    picked = exemptions.select_candidates(manifest, votes, h3=2)
    assert picked["image_id"].tolist() == manifest["image_id"].iloc[[0, 2]].tolist()
    assert picked["models"].tolist() == [[MODELS[1]], []]
    assert picked["boxes"][0] == [[int(v) for v in b] for b in manifest["boxes"][0]]
    with pytest.raises(ValueError, match="do not align with the manifest"):
        exemptions.select_candidates(manifest, votes.iloc[::-1].reset_index(drop=True), h3=2)
    with pytest.raises(ValueError, match="lacks columns"):
        exemptions.select_candidates(manifest, votes.drop(columns=["top5_hit_models"]), h3=2)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def stage_dir(
    tmp_path: Path,
    params: dict,
    small_manifest: pd.DataFrame,
    demo_root: Path,
    project_root: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """A project folder with a manifest (8 demo rows, row 3 without boxes) and params that point
    at the demo images and models; the test writes the votes."""
    manifest = small_manifest.head(8).copy()
    manifest.at[3, "boxes"] = []
    formats.write_table(
        manifest, tmp_path / formats.manifest_path("val"), schema=formats.MANIFEST_SCHEMA
    )
    for name in params["models"]:
        folder = params["models"][name]["spec"].removeprefix("local-dir:")
        params["models"][name]["spec"] = f"local-dir:{project_root / folder}"
    params["splits"]["val"]["root"] = str(demo_root)
    params["predict"]["models"] = MODELS
    params["decide"]["val"]["h3"] = 1
    params["explain"]["overlays"] = 2
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path, manifest


def test_stage_writes_contract_table_and_overlays_deterministically(stage_dir) -> None:
    folder, manifest = stage_dir
    ids = manifest["image_id"].tolist()
    votes = make_votes(
        manifest,
        {
            0: (MODELS[:2], None),
            2: ([MODELS[0]], None),
            3: ([MODELS[0]], None),
            5: ([], None),
            6: ([MODELS[0]], "skip: unreadable image"),
        },
    )
    formats.write_table(votes, folder / formats.votes_path("val"))
    assert explain.main(["--split", "val", "--params", "params.yaml"]) == 0
    out = folder / formats.cams_path("val")
    assert pq.read_schema(out).remove_metadata() == formats.CAMS_SCHEMA
    table = pd.read_parquet(out)
    assert list(zip(table["image_id"], table["model"])) == [
        (ids[0], MODELS[0]),
        (ids[0], MODELS[1]),
        (ids[2], MODELS[0]),
    ]
    for row in table.itertuples():
        computed = [s for s in (row.gradcam, row.gradcampp, row.scorecam) if not np.isnan(s)]
        assert all(0.0 <= s <= 1.0 for s in computed) and len(computed) >= 2
        assert row.methods_passed == sum(s >= 0.01 for s in computed)
        assert row.exempted == (row.methods_passed >= 2)
        cheap = int(row.gradcam >= 0.01) + int(row.gradcampp >= 0.01)
        assert np.isnan(row.scorecam) == (cheap != 1)  # early exit: Score-CAM only when undecided
    overlays = folder / "data/cams/val-overlays"
    pngs = sorted(p.name for p in overlays.iterdir())
    assert pngs == sorted([f"{ids[0]}__{MODELS[0]}.png", f"{ids[0]}__{MODELS[1]}.png"])
    first = {p: (overlays / p).read_bytes() for p in pngs} | {"table": out.read_bytes()}
    assert explain.main(["--split", "val", "--params", "params.yaml"]) == 0
    again = {p: (overlays / p).read_bytes() for p in pngs} | {"table": out.read_bytes()}
    assert again == first


def test_stage_with_no_candidates_writes_an_empty_table_and_folder(stage_dir) -> None:
    folder, manifest = stage_dir
    formats.write_table(make_votes(manifest, {}), folder / formats.votes_path("val"))
    explain.main(["--split", "val", "--params", "params.yaml"])
    table = pq.read_table(folder / formats.cams_path("val"))
    assert table.num_rows == 0 and table.schema.remove_metadata() == formats.CAMS_SCHEMA
    assert list((folder / "data/cams/val-overlays").iterdir()) == []


def test_stage_refuses_votes_of_another_ensemble(stage_dir) -> None:
    folder, manifest = stage_dir
    votes = make_votes(manifest, {0: (MODELS[:2], None)})
    votes = votes.set_column(9, "n_models", pa.array([5] * len(manifest), pa.int32()))
    formats.write_table(votes, folder / formats.votes_path("val"))
    with pytest.raises(ValueError, match=r"cast by \[5\] models.*re-run"):
        explain.main(["--split", "val", "--params", "params.yaml"])


def test_cam_model_restores_cudnn_flags_when_loading_fails(tmp_path: Path) -> None:
    import torch

    from stages.modelling.specs import ModelSpec

    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    with (
        pytest.raises(FileNotFoundError, match="config.json not found"),
        exemptions.cam_model(ModelSpec("m", f"local-dir:{tmp_path}"), device=torch.device("cpu")),
    ):
        pass
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before
