"""The decision ledger of a split: the strategy's decisions, then merges, then human overrides,
then one placeholder per class the merges emptied (`decide_split`); counts reconcile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.actions import ACTIONS, KEPT, Action
from stages.contracts.config import from_section
from stages.contracts.errors import InputError
from stages.contracts.params import section
from stages.contracts.splits import Params, SplitEntry
from stages.method.decisions import Rows, StrategyOptions, confidence
from stages.method.duplicates import DuplicateEvidence, DuplicatePolicy, apply_duplicates
from stages.method.merges import MergesConfig, apply_merges, merge_overrides
from stages.method.overrides import apply_overrides
from stages.method.strategies import STRATEGIES
from stages.method.thresholds import Thresholds, resolve_thresholds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecideConfig:
    """Everything decide reads for one split, resolved."""

    strategy: str
    thresholds: Thresholds
    options: StrategyOptions = field(default_factory=StrategyOptions)
    merges: MergesConfig = field(default_factory=MergesConfig)
    overrides: str | None = None
    duplicates: DuplicatePolicy = field(default_factory=DuplicatePolicy)

    @classmethod
    def from_params(cls, params: Params, split: str) -> DecideConfig:
        """From `decide.<split>`, `decide.consensus`, `decide.expected_benefit`,
        `decide.merges`, the split's `overrides` file (`splits.<split>.overrides`) and |M| = the
        split's models.

        Raises:
            ConfigError: unknown/missing keys, bad thresholds, a threshold above |M| (which would
                switch its rule off silently).
        """
        thresholds, own = resolve_thresholds(params, split)
        shared = section(params, "decide")
        return cls(
            own.strategy,
            thresholds,
            StrategyOptions.from_params(params),
            from_section(MergesConfig, shared.get("merges"), where="decide.merges"),
            SplitEntry.from_params(params, split).overrides,
            DuplicatePolicy.from_params(params, split),
        )


def count_exemptions(cams: pd.DataFrame | None) -> dict[str, int]:
    """image_id -> number of distinct models whose CAMs exempt it (cams rows with exempted=true)."""
    if cams is None or len(cams) == 0:
        return {}
    missing = {"image_id", "model", "exempted"} - set(cams.columns)
    if missing:
        raise InputError(f"cams table lacks columns {sorted(missing)}; re-run `dvc repro explain`")
    hits = cams.loc[cams["exempted"].fillna(False).astype(bool), ["image_id", "model"]]
    return {str(k): int(v) for k, v in hits.drop_duplicates().groupby("image_id").size().items()}


def _check_votes(votes: pd.DataFrame, manifest: pd.DataFrame, t: Thresholds) -> None:
    formats.check_votes(votes, manifest)
    active = votes["inactive_reason"].isna()
    stale = sorted(set(votes.loc[active, "n_models"].dropna().astype(int)) - {t.n_models})
    if stale:
        raise InputError(
            f"votes were computed with {stale} models but the split lists "
            f"{t.n_models}; re-run `dvc repro vote`"
        )
    if votes.loc[active, "label"].isna().any():
        raise InputError("votes table has active rows without a label; re-run `dvc repro vote`")
    if (votes["top5_misses"].fillna(0) > t.n_models).any():
        raise InputError(f"votes table has top5_misses above |M|={t.n_models}; re-run vote")


def _lists(column: pd.Series, rows: np.ndarray) -> np.ndarray:
    """An object array of int64 arrays (an absent list becomes empty) for the given rows."""
    out = np.empty(len(rows), dtype=object)
    for k, value in enumerate(column.to_numpy(dtype=object)[rows]):
        out[k] = np.asarray(value if value is not None else [], dtype=np.int64)
    return out


def _matrix(column: pd.Series, rows: np.ndarray, width: int, dtype: type) -> np.ndarray:
    """(A, width) from a list column (rows without the list get zeros)."""
    out: np.ndarray = np.zeros((len(rows), width), dtype=dtype)
    for k, value in enumerate(column.to_numpy(dtype=object)[rows]):
        if value is not None and len(value):
            out[k, : len(value)] = value
    return out


def evidence_rows(votes: pd.DataFrame, rows: np.ndarray, exemptions: np.ndarray) -> Rows:
    """The strategies' view of the given votes rows (positions)."""
    return Rows(
        label=votes["label"].to_numpy(dtype=np.float64, na_value=np.nan)[rows].astype(np.int64),
        candidates=_lists(votes["cl_candidates"], rows),
        misses=votes["top5_misses"].fillna(0).to_numpy(dtype=np.int64)[rows],
        exemptions=exemptions[rows],
        ensemble_top=_matrix(votes["ensemble_top"], rows, 5, np.int64),
        ensemble_probs=_matrix(votes["ensemble_probs"], rows, 5, np.float64),
        label_prob=_floats(votes, "label_prob", rows),
        model_top1=_lists(votes["model_top1"], rows),
        label_posterior=_floats(votes, "label_posterior", rows),
        best_other=votes["best_other"].fillna(-1).to_numpy(dtype=np.int64)[rows],
        best_other_posterior=_floats(votes, "best_other_posterior", rows),
        noise=_floats(votes, "noise_rate", rows),
    )


SKIP_PREFIX = "skip: "
"""The inactive reasons that make a ledger `skip`: the manifest's skip rows, an image predict
could not decode (`stages.method.votes.UNREADABLE`), and such rows carried over by promote."""


def skipped_in_votes(votes: pd.DataFrame) -> np.ndarray:
    """(N,) bool: rows the votes made inactive as unreadable (reason `skip: ...`): a ledger
    `skip` with that reason, counted as such, never a removal with a null label."""
    reasons = votes["inactive_reason"]
    return reasons.notna().to_numpy() & reasons.fillna("").str.startswith(SKIP_PREFIX).to_numpy()


def _floats(votes: pd.DataFrame, column: str, rows: np.ndarray) -> np.ndarray:
    """A nullable float column of the given rows as float64 (NaN for null)."""
    values: np.ndarray = votes[column].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
    return values


def _skeleton(
    votes: pd.DataFrame, manifest: pd.DataFrame, exemptions: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """The ledger before any decision: skip rows (unreadable input), earlier removals (inactive,
    with the labels file's reason) and every active row kept; and the active rows' positions."""
    n = len(votes)
    unusable = manifest["skip_reason"].notna().to_numpy()
    skip = unusable | skipped_in_votes(votes)
    inactive = votes["inactive_reason"].notna().to_numpy() & ~skip
    labels = votes["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    action = np.where(
        skip, Action.SKIP.value, np.where(inactive, Action.REMOVE.value, Action.KEEP.value)
    ).astype(object)
    reason = np.where(
        unusable,
        "skip: " + manifest["skip_reason"].fillna("").astype(str),
        np.where(
            skip | inactive, votes["inactive_reason"].fillna("").astype(str), Action.KEEP.value
        ),
    ).astype(object)
    ledger = pd.DataFrame(
        {
            "image_id": votes["image_id"].to_numpy(),
            "label": formats.nullable_ints(labels),
            "action": action,
            "new_label": formats.nullable_ints(np.where(skip | inactive, np.nan, labels)),
            "cl_candidates": _lists(votes["cl_candidates"], np.arange(n)),
            "top5_misses": votes["top5_misses"].fillna(0).to_numpy(dtype=np.int32),
            "exempted": np.zeros(n, dtype=bool),
            "reason": reason,
            "secondary_labels": [[] for _ in range(n)],
            "confidence": np.full(n, np.nan, dtype=np.float32),
            "review": np.zeros(n, dtype=bool),
            "original_label": votes["original_label"].astype("Int32").to_numpy(),
            "iteration": votes["iteration"].astype("int32").to_numpy(),
            "merged": False,
            "override": False,
            "exemptions": exemptions,
        }
    )
    return ledger, np.flatnonzero(~skip & ~inactive)


def apply_rules(
    votes: pd.DataFrame,
    manifest: pd.DataFrame,
    *,
    config: DecideConfig,
    exemptions: dict[str, int] | None = None,
) -> pd.DataFrame:
    """The strategy's decisions, before merges and overrides.

    Args:
        votes: the votes table (contracts), one row per manifest row, same order.
        manifest: the split's manifest (its `skip_reason` marks skip rows).
        config: the strategy and its thresholds.
        exemptions: image_id -> number of exempting models (see `count_exemptions`).

    Returns:
        The ledger (columns of LEDGER_FULL_SCHEMA), one row per votes row, same order.
    """
    _check_votes(votes, manifest, config.thresholds)
    n_exempt = votes["image_id"].map(exemptions or {}).fillna(0).to_numpy(dtype=np.int32)
    ledger, active = _skeleton(votes, manifest, n_exempt)
    rows = evidence_rows(votes, active, n_exempt)
    decided = STRATEGIES[config.strategy](
        rows, thresholds=config.thresholds, options=config.options
    )
    columns = {
        name: ledger[name].to_numpy(dtype=object if name in ("action", "reason") else None).copy()
        for name in ("action", "reason", "exempted", "review", "confidence")
    }
    columns["action"][active], columns["reason"][active] = decided.action, decided.reason
    columns["exempted"][active], columns["review"][active] = decided.exempted, decided.review
    columns["confidence"][active] = confidence(rows, decided)
    new_label = ledger["new_label"].to_numpy(dtype=np.float64, na_value=np.nan)
    new_label[active] = np.where(decided.new_label < 0, np.nan, decided.new_label)
    secondary = list(ledger["secondary_labels"])
    for k, i in enumerate(active):
        secondary[i] = decided.secondary[k]
    return ledger.assign(
        new_label=formats.nullable_ints(new_label), secondary_labels=secondary, **columns
    )


def build_clean(
    ledger: pd.DataFrame, manifest: pd.DataFrame, *, placeholder_classes: Iterable[int] = ()
) -> pd.DataFrame:
    """The cleaned split: kept and fixed rows (manifest order), then one placeholder row for each
    class of `placeholder_classes` that no kept or fixed row carries (class index order)."""
    wnids = formats.class_wnids()
    kept = ledger["action"].isin(KEPT).to_numpy()
    rows = manifest.loc[kept, ["image_id", "path", "boxes", "width", "height"]].reset_index(
        drop=True
    )
    part = ledger.loc[kept].reset_index(drop=True)
    rows["label"] = part["new_label"].astype("Int32")
    rows["original_label"] = part["original_label"].astype("Int32")
    rows["secondary_labels"] = part["secondary_labels"].to_numpy(dtype=object)
    rows["wnid"] = [wnids[int(c)] for c in rows["label"]]
    rows["action"], rows["placeholder"], rows["merged"] = part["action"], False, part["merged"]
    rows["iteration"] = part["iteration"]
    iteration = int(ledger["iteration"].iloc[0]) if len(ledger) else 0
    present = {int(c) for c in rows["label"]}
    empty = sorted({int(c) for c in placeholder_classes} - present)
    holders = pd.DataFrame(
        {
            "image_id": [f"placeholder_{wnids[c]}" for c in empty],
            "path": None,
            "label": empty,
            "original_label": pd.array([pd.NA] * len(empty), dtype="Int32"),
            "secondary_labels": [[] for _ in empty],
            "wnid": [wnids[c] for c in empty],
            "action": "placeholder",
            "placeholder": True,
            "merged": False,
            "boxes": [[] for _ in empty],
            "width": formats.PLACEHOLDER_SIZE,
            "height": formats.PLACEHOLDER_SIZE,
            "iteration": iteration,
        }
    )
    frames = [f for f in (rows, holders) if len(f)]
    clean = pd.concat(frames, ignore_index=True) if frames else rows
    return clean.reindex(columns=formats.CLEAN_SCHEMA.names)


def reconcile(ledger: pd.DataFrame, manifest: pd.DataFrame) -> dict[str, int]:
    """Counts per action; raises when keep + fix + remove + skip != manifest rows."""
    counts = {str(a): int((ledger["action"] == a).sum()) for a in ACTIONS}
    if sum(counts.values()) != len(manifest) or len(ledger) != len(manifest):
        raise ValueError(
            f"ledger does not reconcile: {counts} over {len(ledger)} rows, manifest has "
            f"{len(manifest)} rows; this is a bug in decide, please report it"
        )
    return counts


def decide_split(
    votes: pd.DataFrame,
    manifest: pd.DataFrame,
    *,
    config: DecideConfig,
    cams: pd.DataFrame | None = None,
    merges: dict[int, int] | None = None,
    overrides: pd.DataFrame | None = None,
    overrides_source: str = "overrides",
    duplicates: DuplicateEvidence | None = None,
    split: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Strategy, then merges, then the duplicates policy, then overrides, then placeholders ->
    (ledger, cleaned split)."""
    ledger = apply_rules(votes, manifest, config=config, exemptions=count_exemptions(cams))
    ledger = apply_merges(ledger, merges or {})
    ledger = apply_duplicates(ledger, duplicates, split=split)
    if overrides is not None and len(overrides):
        ledger = apply_overrides(ledger, overrides, source=overrides_source)
        ledger = merge_overrides(ledger, merges or {}, source=overrides_source)
    reconcile(ledger, manifest)
    clean = build_clean(ledger, manifest, placeholder_classes=(merges or {}).keys())
    return ledger, clean
