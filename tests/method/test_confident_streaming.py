"""stages.method.confident_streaming: `find_label_issues_streaming` gives exactly cleanlab's flags,
in cleanlab's order, on the real demo predictions (the real predict code and demo models) and on
200k synthetic rows with class-conditional label noise, from float16 and float32 memory-maps, with
inactive rows; its pieces (thresholds, confident joint) equal cleanlab's, and it holds a few chunks.

The reference is always cleanlab's own in-memory `find_label_issues(labels, pred_probs,
filter_by="prune_by_noise_rate", return_indices_ranked_by="normalized_margin", frac_noise=fn)` on
the active rows as float32. The synthetic arrays are the only stand-ins (ImageNet-train
predictions cannot be shipped); they carry known class-conditional flips.
"""

from __future__ import annotations

import math
import tracemalloc
import warnings
from pathlib import Path

import cleanlab.filter
import numpy as np
import pandas as pd
import pytest

from stages.adapters import cleanlab_adapter
from stages.method.confident import ConfidentConfig
from stages.method.confident_streaming import (
    confident_thresholds,
    count_confident_joint,
    find_label_issues_streaming,
    own_probabilities,
)
from stages.method.votes import model_votes

FN_CASES = [(1.0, "cleanlab"), (0.8, "cleanlab"), (0.8, "ranked")]


def cleanlab_flags(
    labels: np.ndarray, probs: np.ndarray, active: np.ndarray, fn: float
) -> np.ndarray:
    """cleanlab's exact call on the active rows -> flagged row indices, most severe first."""
    rows = np.flatnonzero(active)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = cleanlab.filter.find_label_issues(
            labels[rows],
            np.asarray(probs[rows], dtype=np.float32),
            filter_by="prune_by_noise_rate",
            return_indices_ranked_by="normalized_margin",
            frac_noise=fn,
            n_jobs=1,
        )
    cleanlab_adapter.release_globals()
    return rows[ranked]


def expected_flags(
    labels: np.ndarray, probs: np.ndarray, active: np.ndarray, fn: float, fn_mode: str
) -> np.ndarray:
    if fn_mode == "cleanlab" or fn == 1:
        return cleanlab_flags(labels, probs, active, fn)
    full = cleanlab_flags(labels, probs, active, 1.0)
    return full[: math.ceil(fn * len(full))]


def memmap(array: np.ndarray, folder: Path, dtype: type) -> np.ndarray:
    path = folder / f"probs-{np.dtype(dtype).name}.npy"
    np.save(path, array.astype(dtype))
    return np.load(path, mmap_mode="r")


def noisy_split(
    n: int, k: int, *, seed: int, inactive: float = 0.03
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-conditional noise: class c is mislabelled as c+1 (rate 2-15 % per class) and as c+7
    (0-5 %); the model is confident on the true class, sometimes torn toward c+1. Inactive rows
    (skipped or removed earlier) have NaN predictions and label -1."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    rate_next, rate_far = rng.uniform(0.02, 0.15, k), rng.uniform(0.0, 0.05, k)
    draw = rng.random(n)
    labels = true.copy()
    labels[draw < rate_next[true]] = ((true + 1) % k)[draw < rate_next[true]]
    far = (draw >= rate_next[true]) & (draw < rate_next[true] + rate_far[true])
    labels[far] = ((true + 7) % k)[far]
    logits = rng.standard_normal((n, k), dtype=np.float32)
    logits[np.arange(n), true] += rng.uniform(0.5, 6, n).astype(np.float32)
    logits[np.arange(n), (true + 1) % k] += rng.uniform(0, 3, n).astype(np.float32)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    active = rng.random(n) >= inactive
    probs[~active], labels[~active] = np.nan, -1
    return labels, probs, active


@pytest.fixture(scope="module")
def synthetic_200k(tmp_path_factory: pytest.TempPathFactory) -> dict:
    labels, probs, active = noisy_split(200_000, 100, seed=1)
    folder = tmp_path_factory.mktemp("synthetic")
    return {
        "labels": labels,
        "active": active,
        "maps": {dtype: memmap(probs, folder, dtype) for dtype in (np.float16, np.float32)},
    }


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
def test_streaming_equals_cleanlab_on_200k_noisy_rows(synthetic_200k: dict, dtype: type) -> None:
    labels, active = synthetic_200k["labels"], synthetic_200k["active"]
    probs = synthetic_200k["maps"][dtype]
    references = {fn: cleanlab_flags(labels, probs, active, fn) for fn in (1.0, 0.8)}
    for fn, fn_mode in FN_CASES:
        want = (
            references[fn]
            if fn_mode == "cleanlab"
            else references[1.0][: math.ceil(fn * len(references[1.0]))]
        )
        got = model_votes(
            labels,
            probs,
            active=active,
            model="synthetic",
            config=ConfidentConfig(strategy="streaming", fn=fn, fn_mode=fn_mode, chunk_rows=30_001),
        )
        assert got.strategy == "streaming"
        assert len(want) > 10_000
        np.testing.assert_array_equal(got.flagged, want, err_msg=f"fn={fn} {fn_mode}")
        assert got.flagged_at_fn_1 == (None if fn == 1 else len(references[1.0]))


def test_streaming_equals_cleanlab_with_1000_classes(tmp_path: Path) -> None:
    """ImageNet's class count: sparse class pairs, many prune counts of 0 and 1."""
    labels, probs, active = noisy_split(20_000, 1000, seed=2)
    half = memmap(probs, tmp_path, np.float16)
    for fn, fn_mode in FN_CASES:
        config = ConfidentConfig(strategy="streaming", fn=fn, fn_mode=fn_mode, chunk_rows=4096)
        got = model_votes(labels, half, active=active, config=config)
        exact = model_votes(
            labels,
            half,
            active=active,
            config=ConfidentConfig(strategy="exact", fn=fn, fn_mode=fn_mode, chunk_rows=4096),
        )
        np.testing.assert_array_equal(
            got.flagged, expected_flags(labels, half, active, fn, fn_mode)
        )
        np.testing.assert_array_equal(got.flagged, exact.flagged)
        np.testing.assert_array_equal(got.candidates, exact.candidates)
        np.testing.assert_array_equal(got.top5_hit, exact.top5_hit)


@pytest.fixture(scope="module")
def demo_predictions(demo_manifest: pd.DataFrame, demo_root: Path, _params: dict) -> dict:
    """Two real demo models over the 500 embedded demo images, by the real predict code."""
    from stages.modelling.predict_config import PredictOptions
    from stages.modelling.predictor import predict_models
    from stages.modelling.specs import model_specs

    specs = model_specs(_params, ["mobilenetv1_025", "mobilenetv1_050"])
    return predict_models(
        demo_manifest, demo_root, specs, config=PredictOptions(batch_size=50, workers=0, threads=1)
    )


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
def test_streaming_equals_cleanlab_on_real_demo_predictions(
    demo_predictions: dict, demo_manifest: pd.DataFrame, tmp_path: Path, dtype: type
) -> None:
    labels = demo_manifest["label"].to_numpy().astype(np.int64)
    active = np.ones(len(labels), dtype=bool)
    active[::9] = False  # rows an earlier iteration removed take no part
    for name, probs in demo_predictions.items():
        mapped = memmap(probs, tmp_path, dtype)
        for fn, fn_mode in FN_CASES:
            got = model_votes(
                labels,
                mapped,
                active=active,
                model=name,
                config=ConfidentConfig(strategy="streaming", fn=fn, fn_mode=fn_mode, chunk_rows=97),
            )
            want = expected_flags(labels, mapped, active, fn, fn_mode)
            assert fn < 1 or len(want) > 20
            np.testing.assert_array_equal(got.flagged, want, err_msg=f"{name} fn={fn} {fn_mode}")


def test_pieces_equal_cleanlab_thresholds_and_joint() -> None:
    from cleanlab.count import compute_confident_joint, get_confident_thresholds

    labels, probs, _active = noisy_split(5000, 40, seed=3, inactive=0)
    probs = probs.astype(np.float16).astype(np.float32)
    own = own_probabilities(labels, probs, np.arange(len(labels)), chunk_rows=333)
    thresholds = confident_thresholds(labels, own, 40)
    np.testing.assert_array_equal(thresholds, get_confident_thresholds(labels, probs))
    counts = count_confident_joint(labels, probs, thresholds)
    expected = compute_confident_joint(labels, probs, calibrate=False)
    np.fill_diagonal(counts, counts.diagonal().clip(min=1))
    np.testing.assert_array_equal(counts, expected)


def test_streaming_holds_a_few_chunks_not_the_predictions(tmp_path: Path) -> None:
    """40k x 1000 float16 on disk (80 MB; 160 MB as float32, which the exact strategy holds):
    allocations stay within a few 2,000-row chunks (8 MB each) plus cleanlab's K x K matrices."""
    labels, probs, _ = noisy_split(40_000, 1000, seed=4, inactive=0)
    mapped = memmap(probs, tmp_path, np.float16)
    del probs
    tracemalloc.start()
    try:
        model_votes(labels, mapped, config=ConfidentConfig(strategy="streaming", chunk_rows=2000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64e6, f"peak {peak / 1e6:.0f} MB"


def test_streaming_leaves_nothing_in_cleanlab_globals() -> None:
    labels, probs, _ = noisy_split(2000, 20, seed=6)
    find_label_issues_streaming(
        labels[labels >= 0], probs, rows=np.flatnonzero(labels >= 0), chunk_rows=512
    )
    assert not getattr(cleanlab.filter, "pred_probs_by_class", {})


def test_streaming_rejects_unsorted_rows_and_labels_outside_the_classes() -> None:
    with pytest.raises(ValueError, match="ascending row indices"):
        find_label_issues_streaming(np.array([0, 1]), np.full((3, 2), 0.5), rows=np.array([2, 1]))
    with pytest.raises(ValueError, match=r"class indices in 0..1, got 0..2"):
        find_label_issues_streaming(np.array([0, 2]), np.full((2, 2), 0.5))
