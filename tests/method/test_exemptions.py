"""stages.method.exemptions: moved from test_explain.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

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
            "label_posterior": [None] * len(manifest),
            "best_other": [None] * len(manifest),
            "best_other_posterior": [None] * len(manifest),
            "noise_rate": [None] * len(manifest),
        },
        schema=VOTES_SCHEMA,
    )


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
        {"max_pairs": -1},
    )
    messages = (
        "explain.methods.*layercam",
        "min_methods.*at most the 3 methods",
        "explain.batch_size.*>= 1",
        "unknown key 'colour'",
        "explain.target_layers",
        "explain.exhaustive.*true or false",
        r"explain.max_pairs.*an int >= 0",
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


def test_plan_counts_pairs_per_model_and_estimates_cpu_and_gpu_time(small_manifest) -> None:
    manifest = small_manifest.head(6).copy()
    votes = make_votes(manifest, {0: (MODELS[:2], None), 1: (MODELS[:2], None), 4: ([], None)})
    candidates = exemptions.select_candidates(manifest, votes.to_pandas(), h3=1)
    options = exemptions.CamOptions(device="cpu", processes=2, max_pairs=None)
    plan = exemptions.plan_explain("val", candidates, MODELS, options)
    assert (plan.candidates, plan.pairs, plan.pairs_by_model[MODELS[0]]) == (3, 4, 2)
    assert plan.seconds("cpu") == pytest.approx(4 * exemptions.SECONDS_PER_PAIR["cpu"] / 2)
    assert "3 candidates, 4 (image, model) pairs" in plan.describe()
    plan.check(None)
    plan.check(4)
    with pytest.raises(ConfigError, match=r"4 \(image, model\) pairs .* `explain.max_pairs` = 3"):
        plan.check(3)
