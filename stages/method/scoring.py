"""A split's figures: action counts, each model's top-1/top-5 on original vs cleaned labels (the
paper's Table 1), CL label errors, CAM vetoes, the multi-label estimate and, with a human
reference, agreement before -> after (`stages.method.references`).

Predictions are memory-mapped and scanned model by model in row chunks, so nothing of size
N x 1000 is ever held in memory; rows of usable images that are not probabilities are refused
(`stages.contracts.probabilities`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.contracts import formats
from stages.contracts.actions import ACTIONS, KEPT, Action
from stages.contracts.config import fraction, from_section, positive
from stages.contracts.errors import InputError
from stages.contracts.params import section
from stages.contracts.probabilities import check_probabilities
from stages.contracts.splits import Params, SplitEntry
from stages.method import references

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateSection:
    """params.yaml `evaluate:`.

    Attributes:
        references: the folder of human reference files (a DVC dependency of the stage).
        reference_labels: split name -> a file in that folder (ReaL real.json or
            {image_id: [classes]}); a split left out (or null) has no reference.
        multi_label_threshold: ensemble probability at which a class counts for the estimate.
        top_classes: classes shown in the per-class plot.
    """

    references: str = "data/references"
    reference_labels: dict[str, str | None] | None = None
    multi_label_threshold: float = 0.3
    top_classes: int = 20

    def __post_init__(self) -> None:
        positive("evaluate.top_classes", self.top_classes)
        fraction("evaluate.multi_label_threshold", self.multi_label_threshold, low_open=True)


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything evaluate reads for one split.

    Attributes:
        split: the split; models: the models whose predictions it scores (its voters).
        reference: the split's human reference file, or None.
        multi_label_threshold, top_classes: as `EvaluateSection`.
        labels_file: the split's current-labels file (its rounds history lies beside it).
    """

    split: str
    models: tuple[str, ...]
    reference: Path | None
    multi_label_threshold: float
    top_classes: int
    labels_file: str

    @classmethod
    def from_params(cls, params: Params, split: str) -> EvaluateConfig:
        """Raises ConfigError for a bad `evaluate:` section or split entry."""
        own = from_section(EvaluateSection, section(params, "evaluate"), where="evaluate")
        entry = SplitEntry.from_params(params, split)
        return cls(
            split,
            entry.models(params),
            references.reference_file(params, split),
            own.multi_label_threshold,
            own.top_classes,
            entry.labels_file,
        )


def action_counts(ledger: pd.DataFrame, clean: pd.DataFrame | None = None) -> dict[str, Any]:
    """Counts and percentages (of ledger rows) of every action and flag; removals split into
    this iteration's (`remove_new`) and earlier iterations' (`remove_carried`)."""
    counts = {str(a): int((ledger["action"] == a).sum()) for a in ACTIONS}
    carried = int(((ledger["action"] == Action.REMOVE) & ledger["label"].isna()).sum())
    counts.update(
        remove_new=counts["remove"] - carried,
        remove_carried=carried,
        merge=int(ledger["merged"].sum()),
        override=int(ledger["override"].sum()),
        exempted=int(ledger["exempted"].sum()),
        secondary=int((ledger["secondary_labels"].map(len) > 0).sum()),
        placeholders=0 if clean is None else int(clean["placeholder"].sum()),
    )
    return {
        "counts": counts,
        "percent": {k: formats.percent(v, len(ledger)) for k, v in counts.items()},
    }


def scan_model(
    probs: np.ndarray,
    *,
    chunk_rows: int = formats.CHUNK_ROWS,
    desc: str = "scan",
    usable: np.ndarray | None = None,
    source: str = "predictions",
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 and top-5 classes of every row, reading `probs` (N, K) chunk by chunk.

    Args:
        probs: (N, K) probabilities (memory-mapped).
        usable: (N,) bool rows that must be probability vectors (default: all); the others (skip
            rows, NaN) give garbage that callers mask out.
        source: the file's name for messages.

    Returns:
        top1: (N,) int32; top5: (N, 5) int32 (unordered).

    Raises:
        InputError: a usable row is not a probability vector.
    """
    n = len(probs)
    top1 = np.empty(n, dtype=np.int32)
    top5 = np.empty((n, 5), dtype=np.int32)
    with tqdm(total=n, desc=desc, unit="row", unit_scale=True, mininterval=2.0) as bar:
        for start in range(0, n, chunk_rows):
            raw = np.asarray(probs[start : start + chunk_rows], dtype=np.float32)
            rows = np.arange(start, start + len(raw))
            if usable is not None:
                rows = rows[usable[start : start + len(raw)]]
            check_probabilities(raw[rows - start], rows=rows, where=source, dtype=probs.dtype)
            chunk = np.nan_to_num(raw, nan=-1.0)
            top1[start : start + len(chunk)] = chunk.argmax(axis=1)
            top5[start : start + len(chunk)] = np.argpartition(-chunk, 4, axis=1)[:, :5]
            bar.update(len(chunk))
    return top1, top5


def accuracy(
    top1: np.ndarray, top5: np.ndarray, labels: pd.Series | np.ndarray, rows: np.ndarray
) -> dict[str, Any]:
    """Top-1/top-5 (%) over `rows` (N,) bool that have a label, and their count.

    top1: (N,), top5: (N, 5) from `scan_model`; labels: (N,) numbers, NaN/None = no label.
    """
    wanted = pd.to_numeric(pd.Series(labels), errors="coerce").to_numpy(np.float64, na_value=np.nan)
    rows = np.asarray(rows, dtype=bool) & ~np.isnan(wanted)
    target = wanted[rows].astype(np.int64)
    n = int(rows.sum())
    return {
        "top1": formats.percent(int((top1[rows] == target).sum()), n),
        "top5": formats.percent(int((top5[rows] == target[:, None]).any(axis=1).sum()), n),
        "rows": n,
    }


def model_metrics(
    ledger: pd.DataFrame,
    votes: pd.DataFrame,
    predictions: Mapping[str, Path],
    *,
    entries: list[frozenset[int] | None] | None = None,
    chunk_rows: int = formats.CHUNK_ROWS,
    split: str = "<split>",
) -> dict[str, dict[str, Any]]:
    """Per model: CL label errors, top-1/top-5 on original vs cleaned labels, multi-label top-1.

    Args:
        ledger: the decision ledger (N rows); votes: the votes table (N rows, same order).
        predictions: model name -> (N, 1000) `.npy` file; each is memory-mapped in turn.
        entries: per row, the classes a human reference accepts (None: no entry), or None.
    """
    flagged = votes["cl_models"].explode().dropna().value_counts()
    not_skip = (ledger["action"] != Action.SKIP).to_numpy()
    cleaned = ledger["action"].isin(KEPT).to_numpy()
    metrics = {}
    for name, path in predictions.items():
        probs = formats.load_predictions(split, name, path=path)
        if probs.shape != (len(ledger), formats.NUM_CLASSES):
            raise InputError(
                f"{path}: shape {probs.shape}, expected ({len(ledger)}, "
                f"{formats.NUM_CLASSES}) to match the ledger; re-run predict"
            )
        top1, top5 = scan_model(
            probs, chunk_rows=chunk_rows, desc=f"evaluate {name}", usable=not_skip, source=str(path)
        )
        del probs
        metrics[name] = {
            "cl_label_errors": int(flagged.get(name, 0)),
            "original": accuracy(top1, top5, ledger["label"], not_skip),
            "cleaned": accuracy(top1, top5, ledger["new_label"], cleaned),
        }
        if entries is not None:
            metrics[name]["multi_label_top1"] = references.multi_label_top1(top1, entries, not_skip)
    return metrics


def multi_label_estimate(votes: pd.DataFrame, *, threshold: float) -> dict[str, Any]:
    """Share of active rows whose ensemble gives >= 2 classes at least `threshold`."""
    probs = votes.loc[votes["inactive_reason"].isna(), "ensemble_probs"]
    multi = sum(int((np.asarray(p) >= threshold).sum() >= 2) for p in probs)
    return {"share": formats.percent(multi, len(probs)), "rows": len(probs), "threshold": threshold}


def cam_metrics(ledger: pd.DataFrame, cams: pd.DataFrame | None) -> dict[str, Any]:
    """Removals vetoed by CAMs and their histogram by number of exempting models."""
    vetoed = ledger.loc[ledger["exempted"].astype(bool), "exemptions"].astype(int)
    histogram = {str(k): int(v) for k, v in sorted(vetoed.value_counts().items())}
    examined = 0 if cams is None or len(cams) == 0 else int(cams["image_id"].nunique())
    return {
        "vetoed": len(vetoed),
        "by_exempting_models": histogram,
        "images_examined": examined,
        "model_rows": 0 if cams is None else len(cams),
    }


def class_table(ledger: pd.DataFrame, *, top: int) -> pd.DataFrame:
    """Fixes and removals per class (of the label before this iteration), the `top` classes by
    fixes + removals (ties: class index), as rows class,action,count."""
    wnids, names = formats.class_wnids(), formats.class_names()
    acted = ledger[ledger["action"].isin([Action.FIX, Action.REMOVE]) & ledger["label"].notna()]
    counts = pd.crosstab(acted["label"].astype(int), acted["action"]).reindex(
        columns=["fix", "remove"], fill_value=0
    )
    totals = counts.sum(axis=1)
    order = sorted(counts.index, key=lambda c: (-int(totals[c]), c))[:top]
    rows = [
        {
            "class": f"{wnids[c]} {names[c].split(',')[0]}",
            "action": action,
            "count": int(counts[action][c]),
        }
        for c in order
        for action in ("fix", "remove")
    ]
    return pd.DataFrame(rows, columns=["class", "action", "count"])


def evaluate_split(
    ledger: pd.DataFrame,
    votes: pd.DataFrame,
    predictions: Mapping[str, Path],
    *,
    cams: pd.DataFrame | None = None,
    clean: pd.DataFrame | None = None,
    entries: list[frozenset[int] | None] | None = None,
    multi_label_threshold: float = 0.3,
    top_classes: int = 20,
    split: str = "<split>",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """All metrics of a split -> (metrics dict, class table).

    Args:
        entries: per ledger row, the classes a human reference accepts (None: no entry), or None
            when no reference is configured (see `stages.method.references`).
    """
    if len(votes) != len(ledger):
        raise InputError(
            f"votes ({len(votes)} rows) and ledger ({len(ledger)} rows) differ; "
            "re-run `dvc repro decide`"
        )
    iterations = sorted(set(ledger["iteration"].astype(int)))
    metrics: dict[str, Any] = {
        "rows": len(ledger),
        "iteration": iterations[0] if iterations else 0,
        **action_counts(ledger, clean),
    }
    metrics["models"] = model_metrics(ledger, votes, predictions, entries=entries, split=split)
    metrics["cam"] = cam_metrics(ledger, cams)
    if "ensemble_probs" in votes:
        metrics["multi_label_estimate"] = multi_label_estimate(
            votes, threshold=multi_label_threshold
        )
    if entries is not None:
        block = references.agreement(ledger, entries)
        block["worse"] = references.warn_if_worse(block, split)
        metrics["reference"] = block
    return metrics, class_table(ledger, top=top_classes)


HEADLINE_REFERENCE = ("agreement_before", "agreement_after", "removal_precision", "worse")
"""The `reference` figures `metrics/<split>.json` keeps (the rest: `<split>-detail.json`)."""


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures a person diffs between iterations (`metrics/<split>.json`, what `dvc metrics
    show` prints): rows, iteration, counts, CAM vetoes, each model's top-1 on the original and
    cleaned labels and, with a reference, agreement before -> after and removal precision. The
    full figures go to `<split>-detail.json`, the per-model table to `<split>-models.csv`."""
    head: dict[str, Any] = {
        "rows": metrics["rows"],
        "iteration": metrics["iteration"],
        "counts": dict(metrics["counts"]),
        "cam": {"vetoed": metrics["cam"]["vetoed"]},
        "models": {
            name: {arm: {"top1": entry[arm]["top1"]} for arm in ("original", "cleaned")}
            for name, entry in metrics["models"].items()
        },
    }
    if "reference" in metrics:
        head["reference"] = {k: metrics["reference"].get(k) for k in HEADLINE_REFERENCE}
    return head


def model_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per model: CL label errors, top-1/top-5 and rows on the original and cleaned labels
    (the paper's Table 1) and, with a reference, the multi-label top-1."""
    rows = [
        {
            "model": name,
            "cl_label_errors": entry["cl_label_errors"],
            **{
                f"{arm}_{key}": entry[arm][key]
                for arm in ("original", "cleaned")
                for key in ("top1", "top5", "rows")
            },
            "multi_label_top1": entry.get("multi_label_top1"),
        }
        for name, entry in metrics["models"].items()
    ]
    columns = ["model", "cl_label_errors"] + [
        f"{arm}_{key}" for arm in ("original", "cleaned") for key in ("top1", "top5", "rows")
    ]
    return pd.DataFrame(rows, columns=[*columns, "multi_label_top1"])
