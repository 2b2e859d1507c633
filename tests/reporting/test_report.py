"""stages.reporting.report: moved from test_review.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from stages.contracts import formats
from stages.contracts.errors import InputError
from stages.reporting.report import (
    WHY,
    ReviewOptions,
    build_report,
    confused_pairs,
    list_matrix,
    model_top5,
    plan_rows,
)

MODELS = ("model_a", "model_b", "model_c")


def _images(folder: Path, count: int = 6, size: tuple[int, int] = (500, 375)) -> list[str]:
    """A few real JPEG files of ImageNet's typical size (what thumbnails decode)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        x = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
        y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None, None]
        pixels = np.concatenate([x + 0 * y, y + 0 * x, (x + y + 40 * k) % 256 + 0 * x], axis=2)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{k}.jpg", quality=90)
        names.append(f"img{k}.jpg")
    return names


def _predictions(
    path: Path, labels: np.ndarray, rng: np.random.Generator, *, block: int = 4096
) -> np.ndarray:
    """(N, 1000) float16 probabilities, mostly confident on `labels`, some on a neighbour class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(labels), 1000))
    noise = rng.random((64, 1000), dtype=np.float32) * 0.001  # rows drawn from 64 noise patterns
    for start in range(0, len(labels), block):
        rows = slice(start, start + block)
        n = len(labels[rows])
        probs = noise[rng.integers(0, len(noise), n)]
        top = np.where(rng.random(n) < 0.8, labels[rows], (labels[rows] + 1) % 1000)
        probs[np.arange(n), top] += rng.uniform(0.3, 0.9, n).astype(np.float32)
        out[rows] = probs / probs.sum(axis=1, keepdims=True)
    out.flush()
    return np.load(path, mmap_mode="r")


def write_split(
    root: Path,
    n: int,
    *,
    seed: int = 0,
    split: str = "val",
    models: tuple[str, ...] = MODELS,
    manifest: pd.DataFrame | None = None,
    image_root: Path | None = None,
) -> dict[str, Any]:
    """A synthetic split under `root` in the project layout: manifest, predictions, votes with the
    evidence columns, a ledger with secondary_labels; returns params for it. Given a real
    `manifest` (and the `image_root` of its paths), its rows, ids and labels are used instead of
    synthetic images."""
    rng = np.random.default_rng(seed)
    if manifest is None:
        names = _images(root / "images")
        ids = [f"img_{k:06d}" for k in range(n)]
        labels = rng.integers(0, 1000, n).astype(np.int32)
        manifest = pd.DataFrame(
            {
                "image_id": ids,
                "path": [names[k % len(names)] for k in range(n)],
                "label": labels,
                "wnid": np.array(formats.class_wnids())[labels],
                "boxes": [[[50, 40, 300, 250]] if k % 3 else [] for k in range(n)],
                "width": 500,
                "height": 375,
                "skip_reason": None,
                "sha256": None,
            }
        )
    else:
        n, ids = len(manifest), list(manifest["image_id"])
        labels = manifest["label"].to_numpy(dtype=np.int32)
    inactive = rng.random(n) < 0.01
    formats.write_table(
        manifest, root / formats.manifest_path(split), schema=formats.MANIFEST_SCHEMA
    )
    preds = [_predictions(root / formats.predictions_path(split, m), labels, rng) for m in models]
    mean = np.zeros((n, 1000), np.float32)
    for p in preds:
        mean += np.asarray(p, dtype=np.float32) / len(preds)
    ens_top = np.argpartition(-mean, 4, axis=1)[:, :5]
    ens_top = np.take_along_axis(ens_top, np.argsort(-np.take_along_axis(mean, ens_top, 1), 1), 1)
    current = pd.array(np.where(inactive, 0, labels), dtype="Int32")
    current[inactive] = pd.NA
    label_prob = np.where(inactive, np.nan, mean[np.arange(n), labels])
    model_top1 = np.stack([np.asarray(p).argmax(axis=1) for p in preds], axis=1)
    kinds = rng.choice(["keep", "fix", "remove", "secondary"], size=n, p=[0.85, 0.07, 0.05, 0.03])
    kinds[inactive] = "remove"
    new = np.where(kinds == "fix", (labels + 1) % 1000, labels).astype(np.float64)
    new[kinds == "remove"] = np.nan
    candidates = [[int((labels[k] + 1) % 1000)] * 2 if kinds[k] == "fix" else [] for k in range(n)]
    votes = pa.table(
        {
            "image_id": ids,
            "label": pa.array(current, type=pa.int32()),
            "original_label": labels,
            "iteration": np.zeros(n, np.int32),
            "inactive_reason": [("removed in iteration 0: test" if i else None) for i in inactive],
            "cl_candidates": pa.array(candidates, type=pa.list_(pa.int32())),
            "cl_models": [list(models[: len(c)]) for c in candidates],
            "top5_misses": np.zeros(n, np.int32),
            "top5_hit_models": [list(models)] * n,
            "n_models": np.full(n, len(models), np.int32),
            "ensemble_top": pa.array(list(ens_top), type=pa.list_(pa.int32())),
            "ensemble_probs": pa.array(
                list(np.take_along_axis(mean, ens_top, 1)), type=pa.list_(pa.float32())
            ),
            "label_prob": pa.array(label_prob, type=pa.float32(), from_pandas=True),
            "model_top1": pa.array(list(model_top1), type=pa.list_(pa.int32())),
        }
    )
    formats.write_table(votes, root / formats.votes_path(split))
    ledger = pd.DataFrame(
        {
            "image_id": ids,
            "label": current,
            "action": np.where(kinds == "secondary", "keep", kinds),
            "new_label": pd.array(np.nan_to_num(new), dtype="Int32"),
            "cl_candidates": candidates,
            "top5_misses": np.zeros(n, np.int32),
            "exempted": False,
            "reason": [f"{k}: synthetic" for k in kinds],
            "secondary_labels": [
                [int((labels[k] + 7) % 1000)] if kinds[k] == "secondary" else [] for k in range(n)
            ],
            "original_label": labels,
            "iteration": 0,
            "merged": False,
            "override": False,
            "exemptions": 0,
        }
    )
    ledger.loc[np.isnan(new), "new_label"] = pd.NA
    ledger.loc[inactive, "label"] = pd.NA
    formats.write_table(ledger, root / formats.ledger_path(split))
    return {
        "splits": {
            split: {
                "root": str(image_root or root / "images"),
                "layout": "imagefolder",
                "overrides": f"data/overrides/{split}.csv",
            }
        },
        "models": {m: {"spec": f"local-dir:{m}"} for m in models},
        "predict": {"models": list(models)},
        "decide": {split: {"h1": 2, "h2": 3, "h3": 2}},
        "review": {
            "keep_sample": 20,
            "seed": 0,
            "chunk_rows": 25,
            "thumb_size": 96,
            "top_pairs": 10,
            "pair_images": 5,
            "workers": 2,
        },
    }


def test_model_top5_matches_a_full_sort(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    matrix = rng.random((300, 1000)).astype(np.float16)
    np.save(tmp_path / "p.npy", matrix)
    mapped = np.load(tmp_path / "p.npy", mmap_mode="r")
    positions = np.array([0, 5, 17, 299])
    classes, probs = model_top5([mapped], positions, block=3)
    for k, pos in enumerate(positions):
        expected = np.lexsort((np.arange(1000), -matrix[pos].astype(np.float32)))[:5]
        assert list(classes[0, k]) == list(expected)
        assert np.allclose(probs[0, k], matrix[pos, expected].astype(np.float32))


def test_confused_pairs_count_both_directions_and_rank_by_quality() -> None:
    labels = np.array([1, 1, 2, 2, 2, 3, 4, -1, 5])
    predicted = np.array([2, 2, 1, 2, 9, 4, 3, 1, 5])
    quality = np.array([0.5, 0.1, 0.3, 0.9, 0.2, 0.4, 0.05, np.nan, 0.9])
    pairs = confused_pairs(labels, predicted, quality, top=2, per_pair=2)
    assert [(p["a"], p["b"], p["ab"], p["ba"]) for p in pairs] == [(1, 2, 2, 1), (3, 4, 1, 1)]
    assert pairs[0]["rows"] == [1, 2]  # quality 0.1, then 0.3 (0.5 is past per_pair)
    assert pairs[1]["rows"] == [6, 5]
    ties = confused_pairs(labels, predicted, quality, top=3, per_pair=2)[2]
    assert (ties["a"], ties["b"]) == (2, 9)  # the only other pair
    tied = confused_pairs(
        np.array([1, 5, 7]), np.array([2, 6, 8]), np.array([0.4, 0.1, np.nan]), top=3, per_pair=1
    )
    assert [(p["a"], p["b"]) for p in tied] == [
        (5, 6),
        (1, 2),
        (7, 8),
    ]  # one image each: by quality


def test_list_matrix_pads_short_and_null_lists() -> None:
    column = pa.array([[3, 4], None, [], [7, 8, 9]], type=pa.list_(pa.int32()))
    assert list_matrix(column, 2).tolist() == [[3, 4], [-1, -1], [-1, -1], [7, 8]]


def test_predictions_of_another_split_are_refused(split_root) -> None:
    root, _params = split_root
    ledger = pd.read_parquet(root / formats.ledger_path("val"))
    votes = pa.Table.from_pandas(pd.read_parquet(root / formats.votes_path("val")))
    manifest = pd.read_parquet(root / formats.manifest_path("val"))
    with pytest.raises(InputError, match=r"predictions of model_a have shape \(10, 1000\)"):
        build_report(
            ledger,
            votes,
            manifest,
            split="val",
            models=["model_a"],
            predictions=[np.zeros((10, 1000), np.float32)],
            image_root=root,
            out=root / "out",
        )


def test_the_strategys_review_queue_is_shown_first_then_lowest_label_quality() -> None:
    """Rows the strategy queued for review (kept as they are) come before every other row shown,
    whatever their label quality; a row a person already decided leaves the queue."""
    n = 6
    ledger = pa.table(
        {
            "action": ["keep", "fix", "keep", "remove", "keep", "keep"],
            "label": [1, 2, 3, 4, 5, 6],
            "secondary_labels": [[]] * n,
            "exempted": [False] * n,
            "merged": [False] * n,
            "override": [False, False, False, False, False, True],
            "review": [False, False, True, False, False, True],
        }
    )
    votes = pa.table(
        {
            "label_prob": [0.9, 0.01, 0.8, 0.02, 0.95, 0.5],
            "ensemble_top": [[1], [9], [3], [8], [5], [6]],
        }
    )
    config = ReviewOptions(keep_sample=0, queue_rows=10, top_pairs=0)
    shown, why, _ = plan_rows(ledger, votes, config=config)
    assert shown.tolist()[:3] == [2, 1, 3]  # the queued row, then the fix and removal by quality
    assert why[2] & WHY["review"] and not why[5] & WHY["review"]
