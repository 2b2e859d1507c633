"""stages.method.votes: moved from test_vote.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_labels import FLIP, PER_CLASS, K, probs_for

from stages.method.confident import ConfidentConfig
from stages.method.votes import model_votes, vote


@pytest.fixture
def flipped() -> tuple[np.ndarray, np.ndarray, int]:
    """10 classes x 20 rows, confidently predicted; one row of class 7 is labelled 3."""
    true = np.repeat(np.arange(10), PER_CLASS)
    labels = true.copy()
    row = FLIP[0] * PER_CLASS
    true[row] = FLIP[1]
    return labels, probs_for(true), row


@pytest.mark.parametrize("strategy", ["exact", "batched"])
def test_clear_label_flip_is_the_only_flag_and_its_candidate_is_the_top_other_class(
    flipped: tuple[np.ndarray, np.ndarray, int], strategy: str
) -> None:
    labels, probs, row = flipped
    result = model_votes(labels, probs, config=ConfidentConfig(strategy=strategy), model="m")
    assert result.strategy == strategy
    assert result.flagged.tolist() == [row]
    assert result.candidates.tolist() == [FLIP[1]]


def test_exact_and_batched_agree_on_a_clear_cut_case() -> None:
    true = np.repeat(np.arange(10), PER_CLASS)
    labels = true.copy()
    flips = {5: 8, 47: 1, 123: 9}  # row -> true class (a different one than its label)
    for row, cls in flips.items():
        true[row] = cls
    probs = probs_for(true, seed=3)
    exact = model_votes(labels, probs, config=ConfidentConfig(strategy="exact"))
    batched = model_votes(labels, probs, config=ConfidentConfig(strategy="batched"))
    assert set(exact.flagged) == set(batched.flagged) == set(flips)
    assert (
        dict(zip(exact.flagged, exact.candidates))
        == flips
        == dict(zip(batched.flagged, batched.candidates))
    )


def test_exact_path_does_not_leave_a_copy_of_the_predictions_in_cleanlab(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    import cleanlab.filter

    labels, probs, _ = flipped
    model_votes(labels, probs, config=ConfidentConfig(strategy="exact"))
    assert not getattr(cleanlab.filter, "pred_probs_by_class", {})


def test_auto_strategy_switches_at_exact_max_rows(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, _ = flipped
    assert (
        model_votes(labels, probs, config=ConfidentConfig(exact_max_rows=200)).strategy == "exact"
    )
    assert (
        model_votes(labels, probs, config=ConfidentConfig(exact_max_rows=199)).strategy
        == "streaming"
    )


def test_float16_predictions_give_the_same_votes(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, row = flipped
    for strategy in ("exact", "batched"):
        half = model_votes(
            labels,
            probs.astype(np.float16),
            config=ConfidentConfig(strategy=strategy, chunk_rows=64),
        )
        assert half.flagged.tolist() == [row] and half.candidates.tolist() == [FLIP[1]]


def test_top5_misses_count_models_whose_top5_lacks_the_label() -> None:
    labels = np.array([0, 0])

    def ranked(position: int) -> np.ndarray:
        """Class 0 (the label) with exactly `position` classes more probable than it."""
        row = np.full(K, 1e-4, dtype=np.float32)
        row[1 : 1 + position] = 0.05
        row[0] = 0.02
        return row / row.sum()

    models = {
        "first": [ranked(0), ranked(0)],
        "fifth": [ranked(4), ranked(5)],
        "sixth": [ranked(5), ranked(9)],
    }
    result = vote(
        labels,
        {m: np.array(rows, dtype=np.float32) for m, rows in models.items()},
        config=ConfidentConfig(strategy="exact"),
    )
    table = result.table.to_pydict()
    assert table["top5_misses"] == [1, 2]
    assert table["top5_hit_models"] == [["first", "fifth"], ["first"]]
    assert table["n_models"] == [3, 3]


def test_a_tie_with_the_fifth_class_counts_as_a_hit() -> None:
    row = np.full(K, 0.5 / (K - 5), dtype=np.float32)
    row[1:5] = 0.1  # four classes above the label, the label tied with many others
    row /= row.sum()  # probabilities (the one check refuses rows that do not sum to 1)
    result = model_votes(np.array([0]), row[None, :], config=ConfidentConfig(strategy="exact"))
    assert result.top5_hit.tolist() == [True]
    row[5] = 0.05  # now five classes are more probable
    assert model_votes(np.array([0]), row[None, :] / row.sum()).top5_hit.tolist() == [False]


def test_inactive_rows_take_no_part(flipped: tuple[np.ndarray, np.ndarray, int]) -> None:
    labels, probs, row = flipped
    probs[row] = np.nan  # a skip row's predictions are NaN; inactive rows are never read
    labels[row] = -1
    active = np.ones(len(labels), dtype=bool)
    active[row] = False
    result = vote(
        labels, {"a": probs, "b": probs}, config=ConfidentConfig(strategy="exact"), active=active
    )
    table = result.table.to_pydict()
    assert all(len(r.flagged) == 0 for r in result.models)
    assert table["cl_candidates"][row] == [] and table["top5_misses"][row] == 0
    assert table["top5_hit_models"][row] == []
    assert table["top5_misses"][row + 1] == 0 and table["top5_hit_models"][row + 1] == ["a", "b"]


def test_vote_lists_follow_model_order_with_repeats_kept(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, row = flipped
    other = probs.copy()
    other[row] = probs_for(np.array([FLIP[1]]), seed=9)[0]
    result = vote(
        labels,
        [("z", probs), ("a", probs_for(np.repeat(np.arange(10), PER_CLASS))), ("m", other)],
        config=ConfidentConfig(strategy="exact"),
    )
    table = result.table.to_pydict()
    assert table["cl_models"][row] == ["z", "m"]
    assert table["cl_candidates"][row] == [FLIP[1], FLIP[1]]
    assert table["top5_misses"][row] == 2 and table["top5_hit_models"][row] == ["a"]
    assert sum(map(len, table["cl_candidates"])) == 2


def test_frac_noise_below_one_is_reported_and_ranked_mode_keeps_that_fraction(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """cleanlab multiplies each class-pair prune count by frac_noise and truncates: with 1000
    classes most pairs are seen once, so fn=0.9 drops nearly every flag. The stage says so."""
    true = np.repeat(np.arange(40), PER_CLASS)
    labels = true.copy()
    rows = np.arange(0, 40 * PER_CLASS, PER_CLASS)  # one flip per class pair (i -> i + 1)
    true[rows] = (np.arange(40) + 1) % 40
    probs = probs_for(true, seed=5)
    full = model_votes(labels, probs, config=ConfidentConfig(strategy="exact"))
    assert sorted(full.flagged) == rows.tolist()
    with caplog.at_level(logging.WARNING, logger="stages.vote"):
        truncated = model_votes(
            labels, probs, config=ConfidentConfig(strategy="exact", fn=0.9), model="m"
        )
    assert len(truncated.flagged) == 0 and truncated.flagged_at_fn_1 == 40
    assert "kept 0 of the 40 flags" in caplog.text
    ranked = model_votes(
        labels, probs, config=ConfidentConfig(strategy="exact", fn=0.9, fn_mode="ranked")
    )
    assert len(ranked.flagged) == 36 and ranked.flagged.tolist() == full.flagged[:36].tolist()


@pytest.mark.parametrize("shape", [(199, K), (200, K, 1), (200,)])
def test_pred_probs_of_the_wrong_shape_are_refused(
    flipped: tuple[np.ndarray, np.ndarray, int], shape: tuple[int, ...]
) -> None:
    labels = flipped[0]
    with pytest.raises(
        ValueError, match=r"bad_model: pred_probs must have shape \(N, K\) = \(200,"
    ):
        model_votes(labels, np.zeros(shape, dtype=np.float32), model="bad_model")


def test_nan_on_an_active_row_is_refused_naming_the_row(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, _ = flipped
    probs[17, 4] = np.nan
    with pytest.raises(
        ValueError, match=r"predictions of m7 \(active rows\): row 17 has NaN or infinite values"
    ):
        model_votes(labels, probs, model="m7")


def test_labels_outside_the_classes_and_bad_options_are_refused(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, _ = flipped
    labels[3] = K
    with pytest.raises(ValueError, match="active label 1000 is outside 0..999"):
        model_votes(labels, probs)
    with pytest.raises(ValueError, match="fn .* must be a number in \\(0, 1\\], got 1.5"):
        ConfidentConfig(fn=1.5)
    with pytest.raises(ValueError, match="strategy must be 'auto' or one of"):
        ConfidentConfig(strategy="fast")
    with pytest.raises(ValueError, match="at least one model"):
        vote(labels, {})
