"""The private parts of cleanlab the project relies on, in one place, for tested versions only.

cleanlab has no public API for three steps of `cleanlab.filter.find_label_issues(
filter_by="prune_by_noise_rate")` that the streaming strategy must reproduce to give exactly its
flags: the prune-count matrix (`_keep_at_least_n_per_class`), the per-class pruning by margin
(`_prune_by_count`) and the final "prediction close to the label" filter (`_reduce_issues`).
Calling cleanlab's own code for them (rather than copies) keeps the flags identical to cleanlab's,
tie-breaking included. `find_label_issues` also keeps a per-class copy of its input in module
globals after it returns; `release_globals` drops it.

Each use is checked against `SUPPORTED` (major.minor versions whose private code was read and whose
results the tests compare with `find_label_issues`); pyproject.toml bounds cleanlab to them.
"""

from __future__ import annotations

import cleanlab
import cleanlab.count
import cleanlab.filter
import numpy as np

from stages.contracts.errors import UserError

SUPPORTED = ("2.9",)
"""cleanlab major.minor versions whose private functions below were read and tested."""


class UnsupportedCleanlab(UserError, ImportError):
    """The installed cleanlab is not one whose private functions this module was tested with."""


def check_version(version: str | None = None) -> None:
    """Raise UnsupportedCleanlab unless `version` (default: the installed one) is supported."""
    version = version or cleanlab.__version__
    minor = ".".join(version.split(".")[:2])
    if minor not in SUPPORTED:
        raise UnsupportedCleanlab(
            f"cleanlab {version} is not supported by the streaming vote strategy (tested: "
            f"{', '.join(s + '.x' for s in SUPPORTED)}); install a tested version "
            f"(pip install 'cleanlab>={SUPPORTED[0]},<{_next_minor(SUPPORTED[-1])}') or set "
            "vote strategy: exact (in memory) for small splits"
        )
    missing = [name for module, name in _PRIVATE if not hasattr(module, name)]
    if missing:
        raise UnsupportedCleanlab(f"cleanlab {version} lacks {missing}; install a tested version")


def _next_minor(version: str) -> str:
    major, minor = version.split(".")
    return f"{major}.{int(minor) + 1}"


_PRIVATE = (
    (cleanlab.filter, "_keep_at_least_n_per_class"),
    (cleanlab.filter, "_prune_by_count"),
    (cleanlab.count, "_reduce_issues"),
)


def prune_count_matrix(
    confident_joint: np.ndarray, *, frac_noise: float, min_examples_per_class: int = 1
) -> np.ndarray:
    """(K, K) calibrated confident joint -> (K, K) int prune counts, transposed like cleanlab's
    (column k = how many rows labelled k to flag for each true class j)."""
    check_version()
    counts: np.ndarray = cleanlab.filter._keep_at_least_n_per_class(
        confident_joint.T, n=min_examples_per_class, frac_noise=frac_noise
    )
    return counts


def prune_by_count(
    k: int, pred_probs_k: np.ndarray, prune_counts_k: np.ndarray, *, min_examples_per_class: int = 1
) -> np.ndarray:
    """Flags among the rows labelled k: pred_probs_k (n_k, K) float32 in row order,
    prune_counts_k (K,) = column k of `prune_count_matrix` -> (n_k,) bool."""
    check_version()
    flags: np.ndarray = cleanlab.filter._prune_by_count(
        [k, min_examples_per_class, [pred_probs_k, prune_counts_k]]
    )
    return flags


def reduce_issues(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(B, K), (B,) -> (B,) bool: the label is (within 1e-6) the most probable class, so cleanlab
    never reports the row."""
    check_version()
    reduced: np.ndarray = cleanlab.count._reduce_issues(pred_probs, labels)
    return reduced


def release_globals() -> None:
    """Drop the per-class copy of pred_probs that find_label_issues leaves in module globals."""
    for name in ("pred_probs_by_class", "prune_count_matrix_cols"):
        if isinstance(getattr(cleanlab.filter, name, None), dict):
            setattr(cleanlab.filter, name, {})


def private_names() -> list[str]:
    """The private cleanlab names this module uses (for tests and messages)."""
    return [f"{module.__name__}.{name}" for module, name in _PRIVATE]


__all__ = [
    "SUPPORTED",
    "UnsupportedCleanlab",
    "check_version",
    "private_names",
    "prune_by_count",
    "prune_count_matrix",
    "reduce_issues",
    "release_globals",
]
