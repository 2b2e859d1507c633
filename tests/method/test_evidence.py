"""stages.method.evidence: the ensemble's evidence per row (with `mean` pooling: the mean of the
models' probabilities, its top-5 with their mean probabilities, the mean probability of the label,
each model's top-1) from two hand-built 7-class prediction files whose means are exact binary
fractions, and the votes table's evidence columns with inactive rows (a skip row with NaN
predictions, a removed row); the calibrated pooling, the view pooling, the noise estimate (equal to
cleanlab's) and the posterior on real demo predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from stages.contracts import formats
from stages.method.evidence import EvidenceConfig, ensemble_evidence, estimated_noise

MEAN = EvidenceConfig(pooling="mean")

A = [
    [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125, 0],
    [0, 0.0625, 0, 0.125, 0.0625, 0.25, 0.5],
    [np.nan] * 7,  # a skip row: no predictions
    [0.0625, 0.75, 0.125, 0.03125, 0.015625, 0.0078125, 0.0078125],
    [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125, 0],
]  # removed in an earlier iteration
B = [
    [0.25, 0.5, 0.125, 0.03125, 0.0625, 0, 0.03125],
    [0, 0.125, 0.125, 0, 0, 0.5, 0.25],
    [np.nan] * 7,
    [0.0625, 0.75, 0.125, 0.03125, 0.015625, 0.0078125, 0.0078125],
    [0.25, 0.5, 0.125, 0.03125, 0.0625, 0, 0.03125],
]
LABELS = np.array([1, 2, -1, 6, -1])
ACTIVE = np.array([True, True, False, True, False])
EVIDENCE_COLUMNS = [
    "ensemble_top",
    "ensemble_probs",
    "label_prob",
    "model_top1",
    "label_posterior",
    "best_other",
    "best_other_posterior",
    "noise_rate",
]


def write_predictions(folder: Path, dtype: type = np.float32) -> dict[str, dict[str, Path]]:
    paths = {}
    for name, rows in (("a", A), ("b", B)):
        paths[name] = {"full": folder / f"{name}.npy"}
        np.save(paths[name]["full"], np.array(rows, dtype=dtype))
    return paths


@pytest.mark.parametrize("chunk_rows", [2, 8192])
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
def test_top5_of_the_ensemble_mean_label_probability_and_each_models_top1(
    tmp_path: Path, dtype: type, chunk_rows: int
) -> None:
    evidence = ensemble_evidence(
        LABELS,
        write_predictions(tmp_path, dtype),
        active=ACTIVE,
        config=MEAN,
        chunk_rows=chunk_rows,
    )
    # mean row 0: [.375, .375, .125, .046875, .046875, .015625, .015625]: ties keep class order
    assert evidence.top[0].tolist() == [0, 1, 2, 3, 4]
    assert evidence.probs[0].tolist() == [0.375, 0.375, 0.125, 0.046875, 0.046875]
    # mean row 1: [0, .09375, .0625, .0625, .03125, .375, .375]
    assert evidence.top[1].tolist() == [5, 6, 1, 2, 3]
    assert evidence.probs[1].tolist() == [0.375, 0.375, 0.09375, 0.0625, 0.0625]
    assert evidence.top[3].tolist() == [1, 2, 0, 3, 4]
    assert evidence.probs[3].tolist() == [0.75, 0.125, 0.0625, 0.03125, 0.015625]
    # the label's mean probability, also for a label outside the top-5 (row 3: class 6)
    np.testing.assert_array_equal(evidence.label_prob, [0.375, 0.0625, np.nan, 0.0078125, np.nan])
    assert evidence.model_top1[[0, 1, 3]].tolist() == [[0, 1], [6, 5], [1, 1]]
    assert (
        evidence.top.dtype,
        evidence.probs.dtype,
        evidence.label_prob.dtype,
        evidence.model_top1.dtype,
    ) == (np.int32, np.float32, np.float32, np.int32)


def test_ties_at_the_fifth_place_keep_the_smaller_classes(tmp_path: Path) -> None:
    """Many classes tied at the fifth value (float16 rounds small probabilities together): the
    smaller class indices are listed, whatever the partition would pick."""
    rng = np.random.default_rng(0)
    rows = np.full((64, 1000), 0.5 / 995, dtype=np.float32)
    best = np.stack([rng.choice(1000, 4, replace=False) for _ in range(64)])
    np.put_along_axis(rows, best, np.array([0.2, 0.15, 0.1, 0.05], dtype=np.float32), axis=1)
    path = tmp_path / "m.npy"
    np.save(path, rows)
    evidence = ensemble_evidence(np.zeros(64, dtype=np.int64), {"m": {"full": path}}, config=MEAN)
    fifth = [min(set(range(1000)) - set(row)) for row in best.tolist()]
    assert evidence.top.tolist() == [row + [extra] for row, extra in zip(best.tolist(), fifth)]


def test_nan_rows_finds_skipped_and_unreadable_rows_in_any_model(tmp_path: Path) -> None:
    paths = {}
    for name, nan in (("a", [2, 7]), ("b", [7, 9])):
        probs = np.full((10, 8), 0.125, dtype=np.float16)
        probs[nan] = np.nan
        paths[name] = {"full": tmp_path / f"{name}.npy"}
        np.save(paths[name]["full"], probs)
    evidence = ensemble_evidence(np.zeros(10, dtype=np.int64), paths, chunk_rows=3)
    assert np.flatnonzero(evidence.nan_rows).tolist() == [2, 7, 9]


def test_model_top1_columns_follow_the_order_of_the_predictions(tmp_path: Path) -> None:
    paths = write_predictions(tmp_path)
    reordered = ensemble_evidence(
        LABELS, {"b": paths["b"], "a": paths["a"]}, active=ACTIVE, config=MEAN
    )
    assert reordered.model_top1[[0, 1, 3]].tolist() == [[1, 0], [5, 6], [1, 1]]
    assert reordered.top[1].tolist() == [5, 6, 1, 2, 3]


def test_columns_give_inactive_rows_empty_lists_and_a_null_label_probability(
    tmp_path: Path,
) -> None:
    evidence = ensemble_evidence(LABELS, write_predictions(tmp_path), active=ACTIVE, config=MEAN)
    table = evidence.columns(ACTIVE)
    assert table.schema == pa.schema([formats.VOTES_SCHEMA.field(n) for n in EVIDENCE_COLUMNS])
    columns = table.to_pydict()
    assert columns["ensemble_top"] == [[0, 1, 2, 3, 4], [5, 6, 1, 2, 3], [], [1, 2, 0, 3, 4], []]
    assert columns["ensemble_probs"][1] == [0.375, 0.375, 0.09375, 0.0625, 0.0625]
    assert columns["ensemble_probs"][2] == columns["ensemble_probs"][4] == []
    assert columns["label_prob"] == [0.375, 0.0625, None, 0.0078125, None]
    assert columns["model_top1"] == [[0, 1], [6, 5], [], [1, 1], []]
    assert [v is None for v in columns["label_posterior"]] == [False, False, True, False, True]
    assert columns["best_other"][2] is None and columns["noise_rate"][4] is None


def test_a_split_without_rows_gives_empty_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.zeros((0, 7), dtype=np.float16))
    evidence = ensemble_evidence(np.zeros(0, dtype=np.int64), {"m": {"full": path}})
    assert evidence.top.shape == (0, 5) and evidence.model_top1.shape == (0, 1)
    table = evidence.columns(np.zeros(0, dtype=bool))
    assert table.num_rows == 0
    assert table.schema == pa.schema([formats.VOTES_SCHEMA.field(n) for n in EVIDENCE_COLUMNS])


def test_the_noise_estimate_is_cleanlabs_estimated_joint() -> None:
    """1 - trace of cleanlab's `estimate_joint`, computed streaming in row chunks."""
    from cleanlab.count import estimate_joint

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=600)
    logits = rng.normal(0, 1, size=(600, 10))
    logits[np.arange(600), labels] += 2.5
    labels[:60] = (labels[:60] + 1) % 10  # 10 % of the labels flipped
    q = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = 1 - np.trace(estimate_joint(labels, q))
    ours = estimated_noise(labels, q.astype(np.float32), np.ones(600, bool), chunk_rows=64)
    assert ours == pytest.approx(expected, abs=1e-3)
    assert 0.05 < ours < 0.25


def test_the_posterior_trusts_labels_less_where_the_ensemble_disagrees(tmp_path: Path) -> None:
    """Calibrated pooling on two models: the row the ensemble gives to another class has a low
    label posterior and that class as its best other; the noise rate is smoothed and capped."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, size=300)
    paths = {}
    for name in ("a", "b"):
        logits = rng.normal(0, 1, size=(300, 7))
        logits[np.arange(300), labels] += 4
        logits[0, labels[0]] -= 4
        logits[0, (labels[0] + 1) % 7] += 6
        paths[name] = {"full": tmp_path / f"{name}.npy"}
        np.save(paths[name]["full"], (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)))
    evidence = ensemble_evidence(labels, paths, config=EvidenceConfig(noise_ceiling=0.05))
    assert evidence.label_posterior.argmin() == 0 and evidence.label_posterior[0] < 0.5
    assert evidence.best_other[0] == (labels[0] + 1) % 7
    assert evidence.noise <= 0.05 and evidence.summary["noise_ceiling"] == 0.05
    assert set(evidence.summary["temperatures"]) == {"a", "b"}
