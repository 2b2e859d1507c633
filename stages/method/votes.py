"""Confident-learning votes and top-5 misses of every model over a split, and the votes table.

For each model m (in the split's model order) cleanlab flags the active rows whose label looks
wrong; each flagged row gets the candidate l' = m's most likely class other than the label. Per
row, L' (`cl_candidates`) lists one candidate per flagging model; C_s (`top5_misses`) counts the
models whose top-5 misses the label. Predictions are memory-mapped and streamed one model at a
time; the confident-learning strategies are in `stages.method.confident`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cleanlab
import numpy as np
import pandas as pd
import pyarrow as pa

from stages.contracts import formats
from stages.contracts.config import from_section
from stages.contracts.errors import InputError, MissingInputError
from stages.contracts.formats import VOTES_SCHEMA
from stages.contracts.labels import CurrentLabels, current_labels
from stages.contracts.params import section
from stages.contracts.splits import Params, SplitEntry
from stages.method.confident import CL_STRATEGIES, FILTER_BY, RANK_BY, ConfidentConfig
from stages.method.evidence import Evidence, EvidenceConfig, ensemble_evidence
from stages.method.pooling import ViewPooled
from stages.modelling.specs import ModelSpec, model_specs, weights_sha256
from stages.sources.views import predict_views

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = ConfidentConfig()
"""The vote options when a caller passes none (cleanlab's defaults)."""


@dataclass(frozen=True)
class VoteConfig:
    """Everything vote reads for one split.

    Attributes:
        split: the split.
        models: the models whose predictions vote (`splits.<split>.models` or `predict.models`).
        views: the views of each model whose predictions count (`predict.views` for pretrained
            splits; out-of-fold training predicts the full view only).
        labels: the split's current-labels file (absent file: the manifest's labels).
        out_of_fold: the predictions come from out-of-fold training (for the fix in messages).
        confident: the confident-learning options (`vote.<split>`).
        specs: the models' params entries (`models.<name>`), to refuse stale predictions.
        evidence: how the ensemble's evidence is computed (`vote.evidence`).
    """

    split: str
    models: tuple[str, ...]
    views: tuple[str, ...]
    labels: str | None
    out_of_fold: bool
    confident: ConfidentConfig
    specs: tuple[ModelSpec, ...] = ()
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)

    @classmethod
    def from_params(cls, params: Params, split: str) -> VoteConfig:
        """Raises ConfigError for a bad split entry, `predict.views` or `vote:` section."""
        entry = SplitEntry.from_params(params, split)
        models = entry.models(params)
        views = ("full",) if entry.out_of_fold else predict_views(params)
        evidence = from_section(
            EvidenceConfig, section(params, "vote").get("evidence"), where="vote.evidence"
        )
        return cls(
            split,
            models,
            views,
            entry.labels_file,
            entry.out_of_fold,
            ConfidentConfig.from_params(params, split),
            specs=tuple(model_specs(params, models)),
            evidence=evidence,
        )


@dataclass(frozen=True, eq=False)
class ModelVotes:
    """One model's votes over N rows.

    Attributes:
        flagged: (F,) row indices (into the N rows) cleanlab flags, most severe first.
        candidates: (F,) int32 candidate label l' of each flagged row.
        top5_hit: (N,) bool, the model's top-5 contains the label (False on inactive rows).
        flagged_at_fn_1: flags at frac_noise=1.0 when fn < 1 was applied, else None.
    """

    model: str
    strategy: str
    flagged: np.ndarray
    candidates: np.ndarray
    top5_hit: np.ndarray
    n_active: int
    flagged_at_fn_1: int | None = None


@dataclass(frozen=True, eq=False)
class VoteResult:
    """`vote`'s output: the per-row vote columns (a pyarrow table, N rows) and per-model votes."""

    table: pa.Table
    models: tuple[ModelVotes, ...]


def _check_inputs(labels: np.ndarray, pred_probs: Any, active: np.ndarray, model: str) -> None:
    shape = getattr(pred_probs, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != len(labels) or shape[1] < 2:
        raise ValueError(
            f"{model}: pred_probs must have shape (N, K) = ({len(labels)}, K>=2) to "
            f"match the labels, got {shape}"
        )
    if active.shape != labels.shape:
        raise ValueError(
            f"active mask has shape {active.shape}, labels {labels.shape}; they must match"
        )
    used = labels[active]
    if used.size and (used.min() < 0 or used.max() >= shape[1]):
        bad = int(used[(used < 0) | (used >= shape[1])][0])
        raise ValueError(
            f"{model}: active label {bad} is outside 0..{shape[1] - 1}; mark rows "
            "without a label inactive"
        )


def model_votes(
    labels: Sequence[int] | np.ndarray,
    pred_probs: Any,
    *,
    config: ConfidentConfig = DEFAULT_CONFIG,
    active: np.ndarray | None = None,
    model: str = "model",
) -> ModelVotes:
    """One model's CL flags with candidates, and its top-5 hits.

    Args:
        labels: (N,) int current labels (any value on inactive rows).
        pred_probs: (N, K) probabilities, float16/float32 ndarray or memmap (read in chunks).
        config: fn, fn_mode, strategy, chunking.
        active: (N,) bool rows that take part (default: all).
        model: name used in messages and results.

    Raises:
        ValueError: bad shapes, labels outside 0..K-1, non-probabilities on active rows.
    """
    labels = np.asarray(labels, dtype=np.int64)
    active = np.ones(len(labels), dtype=bool) if active is None else np.asarray(active, dtype=bool)
    _check_inputs(labels, pred_probs, active, model)
    rows = np.flatnonzero(active)
    strategy = config.resolve_strategy(len(rows))
    hit = np.zeros(len(labels), dtype=bool)
    if len(rows) == 0:
        empty = np.empty(0, dtype=np.int64)
        return ModelVotes(model, strategy, empty, empty.astype(np.int32), hit, 0)
    flags = CL_STRATEGIES[strategy](labels[rows], pred_probs, rows, config, model)
    hit[rows] = flags.top5_hit
    return ModelVotes(
        model,
        strategy,
        rows[flags.ranked],
        flags.candidates[flags.ranked],
        hit,
        len(rows),
        flags.flagged_at_fn_1,
    )


def _lists(matrix: np.ndarray, values: pa.Array | None = None) -> pa.ListArray:
    """(N, M) int matrix, -1 = absent -> N lists of present entries in column order."""
    rows, cols = np.nonzero(matrix >= 0)
    offsets = np.zeros(len(matrix) + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=len(matrix)), out=offsets[1:])
    items = (
        pa.array(matrix[rows, cols], pa.int32())
        if values is None
        else values.take(pa.array(matrix[rows, cols], pa.int32()))
    )
    return pa.ListArray.from_arrays(pa.array(offsets), items)


def vote_columns(
    results: Sequence[ModelVotes], n_rows: int, active: np.ndarray | None = None
) -> pa.Table:
    """Per-model votes -> the per-row columns cl_candidates, cl_models, top5_misses,
    top5_hit_models, n_models (N rows; models in `results` order)."""
    names = pa.array([r.model for r in results], pa.string())
    cand = np.full((n_rows, len(results)), -1, dtype=np.int32)
    hits = np.full((n_rows, len(results)), -1, dtype=np.int32)
    for m, result in enumerate(results):
        cand[result.flagged, m] = result.candidates
        hits[result.top5_hit, m] = m
    model_of = np.where(cand >= 0, np.arange(len(results), dtype=np.int32), -1)
    used = np.ones(n_rows, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    misses = np.where(used, (hits < 0).sum(axis=1), 0).astype(np.int32)
    return pa.table(
        {
            "cl_candidates": _lists(cand),
            "cl_models": _lists(model_of, names),
            "top5_misses": pa.array(misses, pa.int32()),
            "top5_hit_models": _lists(hits, names),
            "n_models": pa.array(np.full(n_rows, len(results), dtype=np.int32), pa.int32()),
        }
    )


def vote(
    labels: Sequence[int] | np.ndarray,
    pred_probs_by_model: Mapping[str, Any] | Iterable[tuple[str, Any]],
    *,
    config: ConfidentConfig = DEFAULT_CONFIG,
    active: np.ndarray | None = None,
) -> VoteResult:
    """Votes of every model, streamed: one model's predictions at a time.

    Args:
        labels: (N,) int current labels.
        pred_probs_by_model: model name -> (N, K) probabilities, a mapping or an iterable of
            (name, array) pairs (a generator that memory-maps each file on demand keeps at most
            one model's predictions open).
        config: see ConfidentConfig.
        active: (N,) bool rows that take part (default: all).
    """
    items = (
        pred_probs_by_model.items()
        if isinstance(pred_probs_by_model, Mapping)
        else pred_probs_by_model
    )
    results = tuple(
        model_votes(labels, probs, config=config, active=active, model=name)
        for name, probs in items
    )
    if not results:
        raise ValueError("vote needs at least one model's predictions (params predict.models)")
    names = [r.model for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    return VoteResult(vote_columns(results, len(np.asarray(labels)), active), results)


def prediction_files(
    split: str,
    models: Sequence[str],
    manifest: pd.DataFrame,
    folder: Path | None = None,
    *,
    views: Sequence[str] = ("full",),
    out_of_fold: bool = False,
) -> dict[str, dict[str, Path]]:
    """Every model x view's predictions file for the split, checked against the manifest before
    any is read: it exists, has shape (N, 1000), and its sidecar's row-order digest is the
    manifest's.

    Returns:
        model -> view -> path, in the given orders.

    Raises:
        MissingInputError: a predictions file or its sidecar is missing (the message says how to
            make it: predict, out-of-fold training or `imagenet-clean import-predictions`).
        InputError: wrong shape, or rows in another order than the manifest's.
    """
    folder = folder or formats.predictions_path(split, "x").parent
    digest = formats.image_ids_sha256(manifest["image_id"])
    files: dict[str, dict[str, Path]] = {}
    for model in models:
        for view in views:
            path = folder / formats.predictions_path(split, model, view).name
            make = _how_to_make(split, model, view, out_of_fold=out_of_fold)
            if not path.is_file():
                raise MissingInputError(f"predictions {path} do not exist; {make}")
            shape = np.load(path, mmap_mode="r").shape
            if len(shape) != 2 or shape != (len(manifest), formats.NUM_CLASSES):
                raise InputError(
                    f"predictions {path} have shape {shape}, expected ({len(manifest)}, "
                    f"{formats.NUM_CLASSES}) for the {len(manifest)}-row manifest of split "
                    f"{split!r}; re-run predict for model {model}, view {view}"
                )
            _check_row_order(path.with_suffix(".json"), digest, make)
            files.setdefault(model, {})[view] = path
    return files


def _how_to_make(split: str, model: str, view: str, *, out_of_fold: bool) -> str:
    """The command that makes a missing predictions file."""
    made = (
        f"run `dvc repro oof@{split}-{model}` (out-of-fold training; the split and model must "
        "be in params.yaml train.splits and train.models)"
        if out_of_fold
        else f"run `dvc repro predict@{split}-{model}-{view}` (add {split!r} to params.yaml "
        "predict.splits if it is missing there)"
    )
    return made + (
        ", or bring predictions made elsewhere with `imagenet-clean import-predictions "
        f"--split {split} --model {model} --view {view} FILE`"
    )


def _check_row_order(sidecar: Path, digest: str, make: str) -> None:
    if not sidecar.is_file():
        raise MissingInputError(
            f"predictions sidecar {sidecar} does not exist, so the row order "
            f"of {sidecar.with_suffix('.npy')} cannot be checked; {make}"
        )
    recorded = json.loads(sidecar.read_text()).get("image_ids_sha256")
    if recorded is None:
        raise InputError(
            f"{sidecar} records no image_ids_sha256 (written by an older version), "
            f"so the row order of its predictions cannot be checked; {make}"
        )
    if recorded != digest:
        raise InputError(
            f"{sidecar.with_suffix('.npy')}: its rows are not in the manifest's "
            f"image_id order (row-order digest {recorded[:12]}... != manifest "
            f"{digest[:12]}...); {make}"
        )


def check_weights(
    split: str, files: Mapping[str, Mapping[str, Path]], specs: Sequence[ModelSpec]
) -> None:
    """Refuse predictions that the predict stage made with other weights than the model's params
    entry names now (a local model folder or checkpoint overwritten since, or another spec): the
    sidecar of each of the model's views must record the same `spec` and `weights_sha256`.
    Predictions made elsewhere (imported, out-of-fold) and models whose weights are not local are
    not checked.

    Args:
        files: model -> view -> predictions file (`prediction_files`).

    Raises:
        InputError: naming the model, the predictions file and the fix (`dvc repro predict@...`).
    """
    for spec in specs:
        for view, path in files.get(spec.name, {}).items():
            sidecar = json.loads(path.with_suffix(".json").read_text())
            if sidecar.get("source") != "predict":
                continue
            recorded, now = sidecar.get("weights_sha256"), weights_sha256(spec)
            if sidecar.get("spec") == spec.spec and (recorded is None or recorded == now):
                continue
            was = f"{sidecar.get('spec')} (weights sha256 {str(recorded)[:12]}...)"
            raise InputError(
                f"predictions {path} of model {spec.name!r} were made with {was}, but "
                f"params.yaml `models.{spec.name}` now loads {spec.spec} (weights sha256 "
                f"{str(now)[:12]}...): they are stale; re-run them with "
                f"`dvc repro predict@{split}-{spec.name}-{view}`"
            )


UNREADABLE = (
    "skip: unreadable image: predict could not decode it (ingest.verify: full records such "
    "files at ingest)"
)
"""The inactive reason of an image predict could not decode; its `skip: ` prefix (as for the
manifest's skip rows) makes it a `skip` in the ledger, never a removal."""


def without_unreadable(current: CurrentLabels, split: str, nan_rows: np.ndarray) -> CurrentLabels:
    """The current labels with the images predict could not decode (active rows among the NaN
    rows of any model's predictions, `Evidence.nan_rows`) made inactive, with a reason, instead
    of failing the vote."""
    unreadable = nan_rows & current.active
    if not unreadable.any():
        return current
    logger.warning(
        "%s: %d images predict could not decode take no part in the vote",
        split,
        int(unreadable.sum()),
    )
    reason = current.inactive_reason.copy()
    reason[unreadable] = UNREADABLE
    return dataclasses.replace(
        current,
        label=np.where(unreadable, -1, current.label),
        active=current.active & ~unreadable,
        inactive_reason=reason,
    )


def votes_table(
    manifest: pd.DataFrame, current: CurrentLabels, result: VoteResult, evidence: Evidence
) -> pa.Table:
    """The votes file: manifest identity and labels, the vote columns, the ensemble's evidence."""
    n = len(manifest)
    front = pa.table(
        {
            "image_id": pa.array(manifest["image_id"].astype(str).tolist(), pa.string()),
            "label": pa.array(current.label, pa.int32(), mask=~current.active),
            "original_label": pa.array(manifest["label"].astype("Int64"), pa.int32()),
            "iteration": pa.array(np.full(n, current.iteration, dtype=np.int32)),
            "inactive_reason": pa.array(current.inactive_reason.tolist(), pa.string()),
        }
    )
    columns = front.columns + result.table.columns + evidence.columns(current.active).columns
    return pa.Table.from_arrays(columns, schema=VOTES_SCHEMA)


def split_votes(
    config: VoteConfig, manifest: pd.DataFrame, *, predictions: Path | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """The votes table of a split (manifest order) and its figures (metrics/vote/<split>.json).

    Args:
        config: the split's vote configuration.
        manifest: the split's manifest.
        predictions: the folder of the models' predictions (default: the split's).
    """
    split, confident = config.split, config.confident
    files = prediction_files(
        split,
        config.models,
        manifest,
        predictions,
        views=config.views,
        out_of_fold=config.out_of_fold,
    )
    check_weights(split, files, config.specs)
    labelled = current_labels(manifest, config.labels)
    # One pass over every model x view gives the evidence and the rows predict could not decode;
    # rows some file leaves NaN take no part in its calibration, noise estimate or posterior.
    scratch = (predictions or formats.predictions_path(split, "x").parent).parent
    evidence = ensemble_evidence(
        labelled.label, files, active=labelled.active, config=config.evidence, scratch=scratch
    )
    current = without_unreadable(labelled, split, evidence.nan_rows)
    strategy = confident.resolve_strategy(int(current.active.sum()))
    logger.info(
        "vote %s: %d rows, %d active, iteration %d, %d models x %d views, strategy %s "
        "(exact_max_rows %d), fn %s",
        split,
        len(manifest),
        current.active.sum(),
        current.iteration,
        len(files),
        len(config.views),
        strategy,
        confident.exact_max_rows,
        confident.fn,
    )
    pairs = ((m, ViewPooled(list(views.values()))) for m, views in files.items())
    result = vote(current.label, pairs, config=confident, active=current.active)
    stats = {
        "split": split,
        "rows": len(manifest),
        "active": int(current.active.sum()),
        "inactive": int((~current.active).sum()),
        "iteration": current.iteration,
        "strategy": strategy,
        "fn": confident.fn,
        "fn_mode": confident.fn_mode,
        "cleanlab": cleanlab.__version__,
        "filter_by": FILTER_BY,
        "ranked_by": RANK_BY,
        "views": list(config.views),
        "rows_with_candidates": len(np.unique(np.concatenate([r.flagged for r in result.models]))),
        "models": {
            r.model: {
                "flagged": len(r.flagged),
                "flagged_at_fn_1": r.flagged_at_fn_1,
                "top5_hits": int(r.top5_hit.sum()),
            }
            for r in result.models
        },
        "evidence": evidence.summary,
    }
    return votes_table(manifest, current, result, evidence), stats
