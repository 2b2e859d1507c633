"""The one check that a block of predictions is softmax probabilities, for every reader.

Predictions are (rows, 1000) float16 or float32 softmax outputs. A usable image's row must be
finite, inside [0, 1] and sum to 1 within the storage dtype's rounding (float16 keeps ~3 decimal
digits, so a row of 1000 float16 values sums to 1 only within 1e-2); only the manifest's skip rows
(and images predict could not decode) are NaN, and readers leave those out before checking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from stages.contracts.errors import InputError

SUM_TOLERANCE: dict[np.dtype[Any], float] = {
    np.dtype(np.float16): 1e-2,
    np.dtype(np.float32): 1e-3,
    np.dtype(np.float64): 1e-3,
}
"""How far from 1 a row may sum, by the dtype the probabilities are stored in."""


def sum_tolerance(dtype: npt.DTypeLike) -> float:
    """The sum tolerance of a storage dtype.

    Raises:
        InputError: not a float16, float32 or float64 dtype.
    """
    kind = np.dtype(dtype)
    if kind not in SUM_TOLERANCE:
        raise InputError(
            f"predictions of dtype {kind} are not probabilities; store float16, "
            "float32 or float64 softmax outputs"
        )
    return SUM_TOLERANCE[kind]


def check_probabilities(
    values: np.ndarray,
    *,
    rows: Sequence[int] | np.ndarray,
    where: str,
    dtype: npt.DTypeLike | None = None,
    ids: Sequence[str] | np.ndarray | None = None,
) -> None:
    """Refuse a block of rows that are not probability vectors.

    Args:
        values: (B, K) probabilities of usable images (already read, any float dtype).
        rows: (B,) their row numbers in the file, for the message.
        where: the file (or model) the rows come from.
        dtype: the dtype they are stored in (default: `values.dtype`), which sets the tolerance.
        ids: (B,) their image ids, for the message (optional).

    Raises:
        InputError: naming the first bad row (and its image id), how many rows of the block are
            bad, what is wrong (NaN, logits, unnormalised) and the fix.
    """
    if not len(values):
        return
    tolerance = sum_tolerance(values.dtype if dtype is None else dtype)
    wide = values.astype(np.float64, copy=False)
    finite = np.isfinite(wide).all(axis=1)
    low, high = wide.min(axis=1), wide.max(axis=1)
    sums = wide.sum(axis=1)
    problems: tuple[tuple[np.bool_ | npt.NDArray[np.bool_], Callable[[int], str], str], ...] = (
        (
            ~finite,
            lambda i: (
                "has NaN or infinite values, but its image is usable (only the "
                "manifest's skip rows may be NaN)"
            ),
            "predict it again, or import predictions of every usable image",
        ),
        (
            (low < 0) | (high > 1),
            lambda i: (
                f"has values outside [0, 1] (min {low[i]:.4g}, max "
                f"{high[i]:.4g}): these look like logits"
            ),
            "apply a softmax over the classes first (scipy.special.softmax(logits, axis=1))",
        ),
        (
            np.abs(sums - 1.0) > tolerance,
            lambda i: f"sums to {sums[i]:.6g}, not 1 (tolerance {tolerance:g})",
            "give softmax probabilities over all classes (divide each row by its "
            "sum if they are unnormalised)",
        ),
    )
    for bad, describe, fix in problems:
        if bad.any():
            first = int(np.argmax(bad))
            name = f" ({ids[first]})" if ids is not None else ""
            raise InputError(
                f"{where}: row {int(rows[first])}{name} {describe(first)} "
                f"({int(bad.sum())} such rows among rows {int(rows[0])}.."
                f"{int(rows[-1])}); {fix}"
            )
