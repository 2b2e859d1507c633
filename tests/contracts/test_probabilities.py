"""stages.contracts.probabilities: the one check of predictions, tolerant by storage dtype."""

from __future__ import annotations

import numpy as np
import pytest

from stages.contracts.errors import InputError
from stages.contracts.probabilities import check_probabilities, sum_tolerance


def softmax(n: int, k: int = 1000, *, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_float16_rows_pass_within_their_rounding_float32_rows_must_sum_closer() -> None:
    probs = softmax(64)
    check_probabilities(probs.astype(np.float16), rows=np.arange(64), where="f16.npy")
    check_probabilities(probs.astype(np.float32), rows=np.arange(64), where="f32.npy")
    off = probs.astype(np.float32) * 1.005  # sums to 1.005: float16 rounding, not float32's
    check_probabilities(off, rows=np.arange(64), where="x", dtype=np.float16)
    with pytest.raises(InputError, match=r"x: row 10 sums to 1.005, not 1 \(tolerance 0.001\)"):
        check_probabilities(off, rows=np.arange(10, 74), where="x")
    assert sum_tolerance(np.float16) > sum_tolerance(np.float32)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p: p.__setitem__((3, 7), np.nan),
            r"f.npy: row 13 \(id3\) has NaN or infinite values, "
            r"but its image is usable .*\(1 such rows among "
            r"rows 10..17\); predict it again",
        ),
        (
            lambda p: p.__setitem__(slice(None), np.log(p)),
            r"row 10 \(id0\) has values outside \[0, 1\] "
            r".*these look like logits .*; apply a softmax",
        ),
        (lambda p: p.__setitem__(2, p[2] / 2), r"row 12 \(id2\) sums to 0.5, not 1"),
    ],
)
def test_a_bad_row_is_named_with_its_image_and_the_fix(edit, message: str) -> None:
    probs = softmax(8)
    edit(probs)
    with pytest.raises(InputError, match=message):
        check_probabilities(
            probs, rows=np.arange(10, 18), where="f.npy", ids=[f"id{i}" for i in range(8)]
        )


def test_integer_predictions_are_not_probabilities() -> None:
    with pytest.raises(InputError, match=r"predictions of dtype int64 are not probabilities"):
        check_probabilities(np.ones((2, 3), dtype=np.int64), rows=np.arange(2), where="x")
