"""`evaluate` stage: the ledger, votes and predictions -> `metrics/<split>.json` and the plots.

Metrics (deterministic JSON, null where a ratio has no rows):

- `counts` / `percent` (of manifest rows): keep, fix, remove, skip, merge, override, exempted,
  secondary (rows with secondary labels), placeholders; `remove_new` (removed by this iteration's
  decisions) and `remove_carried` (removed in an earlier iteration); `iteration`; `rows`.
- `models.<name>`: `cl_label_errors`, `top1/top5` on the `original` labels (the ledger `label`)
  and on the `cleaned` labels (`new_label` of kept and fixed rows): the paper's Table 1; with a
  reference, `multi_label_top1` (the model's top-1 among the classes humans accept).
- `cam`: `vetoed` removals (exempted rows) and a histogram by number of exempting models.
- `multi_label_estimate`: the share of active rows whose ensemble gives two or more classes at
  least `evaluate.multi_label_threshold` (for splits without a reference; Anzaku et al. 2024).
- `reference` (with `evaluate.reference_labels`, see `stages.method.references`): agreement before -> after,
  fix outcomes, removal precision, recall of reference-bad rows, secondary-label precision, the
  reference's multi-label share, and `worse` (true, with a logged warning, when the cleaned labels
  agree less with people than the input labels).
- `metrics/<split>-classes.csv` / `.png`: this iteration's fixes and removals per class (top
  `evaluate.top_classes`); `metrics/<split>-rounds.csv`: counts and human agreement per iteration
  (the history `imagenet-clean promote` keeps beside the labels file, plus this iteration).

Predictions are memory-mapped and scanned model by model in row chunks, so nothing of size
N x 1000 is ever held in memory; rows that are not probabilities (logits, NaN) are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.contracts import formats
from stages.method import references
from stages.cli import run_as_script, split_stage_main
from stages.contracts.config import fraction, from_section, positive
from stages.contracts.errors import InputError
from stages.contracts.params import section, split_models, split_params

logger = logging.getLogger(__name__)

COUNTED = ("keep", "fix", "remove", "skip")
CHUNK_ROWS = 8192
SUM_TOLERANCE = 0.02
ROUND_COLUMNS = ("iteration", "keep", "fix", "remove_new", "remove", "secondary",
                 "agreement_before", "agreement_after")


@dataclass(frozen=True)
class EvaluateConfig:
    """params.yaml `evaluate:`.

    Attributes:
        references: the folder of human reference files (a DVC dependency of the stage).
        reference_labels: a file in that folder (ReaL real.json or {image_id: [classes]}), or null.
        multi_label_threshold: ensemble probability at which a class counts for the estimate.
        top_classes: classes shown in the per-class plot.
    """

    references: str = "data/references"
    reference_labels: str | None = None
    multi_label_threshold: float = 0.3
    top_classes: int = 20

    def __post_init__(self) -> None:
        positive("evaluate.top_classes", self.top_classes)
        fraction("evaluate.multi_label_threshold", self.multi_label_threshold, low_open=True)


def action_counts(ledger: pd.DataFrame, clean: pd.DataFrame | None = None) -> dict[str, Any]:
    """Counts and percentages (of ledger rows) of every action and flag; removals split into
    this iteration's (`remove_new`) and earlier iterations' (`remove_carried`)."""
    counts = {a: int((ledger["action"] == a).sum()) for a in COUNTED}
    carried = int(((ledger["action"] == "remove") & ledger["label"].isna()).sum())
    counts.update(remove_new=counts["remove"] - carried, remove_carried=carried,
                  merge=int(ledger["merged"].sum()), override=int(ledger["override"].sum()),
                  exempted=int(ledger["exempted"].sum()),
                  secondary=int((ledger["secondary_labels"].map(len) > 0).sum()),
                  placeholders=0 if clean is None else int(clean["placeholder"].sum()))
    return {"counts": counts, "percent": {k: formats.percent(v, len(ledger)) for k, v in counts.items()}}


def _check_probabilities(chunk: np.ndarray, start: int, usable: np.ndarray | None,
                         source: str) -> None:
    """Refuse rows of usable images that are not probability vectors (logits, NaN, sums != 1)."""
    if usable is None:
        rows = np.arange(len(chunk))
    else:
        rows = np.flatnonzero(usable[start:start + len(chunk)])
    part = chunk[rows]
    bad = (~np.isfinite(part).all(axis=1) | (part.min(axis=1, initial=0) < 0)
           | (np.abs(part.sum(axis=1) - 1) > SUM_TOLERANCE))
    if bad.any():
        row = start + int(rows[np.argmax(bad)])
        raise InputError(f"{source}: row {row} ({int(bad.sum())} such rows in rows {start}.."
                         f"{start + len(chunk) - 1}) is not a probability vector (finite, >= 0, "
                         "summing to 1): logits or NaN on a usable image; apply softmax, re-run "
                         "predict or import-predictions")


def scan_model(probs: np.ndarray, *, chunk_rows: int = CHUNK_ROWS, desc: str = "scan",
               usable: np.ndarray | None = None, source: str = "predictions"
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
            raw = np.asarray(probs[start:start + chunk_rows], dtype=np.float32)
            _check_probabilities(raw, start, usable, source)
            chunk = np.nan_to_num(raw, nan=-1.0)
            top1[start:start + len(chunk)] = chunk.argmax(axis=1)
            top5[start:start + len(chunk)] = np.argpartition(-chunk, 4, axis=1)[:, :5]
            bar.update(len(chunk))
    return top1, top5


def accuracy(top1: np.ndarray, top5: np.ndarray, labels: pd.Series | np.ndarray, rows: np.ndarray
             ) -> dict[str, Any]:
    """Top-1/top-5 (%) over `rows` (N,) bool that have a label, and their count.

    top1: (N,), top5: (N, 5) from `scan_model`; labels: (N,) numbers, NaN/None = no label.
    """
    wanted = pd.to_numeric(pd.Series(labels), errors="coerce").to_numpy(np.float64, na_value=np.nan)
    rows = np.asarray(rows, dtype=bool) & ~np.isnan(wanted)
    target = wanted[rows].astype(np.int64)
    n = int(rows.sum())
    return {"top1": formats.percent(int((top1[rows] == target).sum()), n),
            "top5": formats.percent(int((top5[rows] == target[:, None]).any(axis=1).sum()), n), "rows": n}


def model_metrics(ledger: pd.DataFrame, votes: pd.DataFrame, predictions: Mapping[str, Path], *,
                  entries: list[frozenset[int] | None] | None = None,
                  chunk_rows: int = CHUNK_ROWS, split: str = "<split>") -> dict[str, dict[str, Any]]:
    """Per model: CL label errors, top-1/top-5 on original vs cleaned labels, multi-label top-1.

    Args:
        ledger: the decision ledger (N rows); votes: the votes table (N rows, same order).
        predictions: model name -> (N, 1000) `.npy` file; each is memory-mapped in turn.
        entries: per row, the classes a human reference accepts (None: no entry), or None.
    """
    flagged = votes["cl_models"].explode().dropna().value_counts()
    not_skip = (ledger["action"] != "skip").to_numpy()
    cleaned = ledger["action"].isin(["keep", "fix"]).to_numpy()
    metrics = {}
    for name, path in predictions.items():
        probs = formats.load_predictions(split, name, path=path)
        if probs.shape != (len(ledger), formats.NUM_CLASSES):
            raise InputError(f"{path}: shape {probs.shape}, expected ({len(ledger)}, "
                             f"{formats.NUM_CLASSES}) to match the ledger; re-run predict")
        top1, top5 = scan_model(probs, chunk_rows=chunk_rows, desc=f"evaluate {name}",
                                usable=not_skip, source=str(path))
        del probs
        metrics[name] = {"cl_label_errors": int(flagged.get(name, 0)),
                         "original": accuracy(top1, top5, ledger["label"], not_skip),
                         "cleaned": accuracy(top1, top5, ledger["new_label"], cleaned)}
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
    return {"vetoed": int(len(vetoed)), "by_exempting_models": histogram,
            "images_examined": examined, "model_rows": 0 if cams is None else int(len(cams))}


def class_table(ledger: pd.DataFrame, *, top: int) -> pd.DataFrame:
    """Fixes and removals per class (of the label before this iteration), the `top` classes by
    fixes + removals (ties: class index), as rows class,action,count."""
    wnids, names = formats.class_wnids(), formats.class_names()
    acted = ledger[ledger["action"].isin(["fix", "remove"]) & ledger["label"].notna()]
    counts = pd.crosstab(acted["label"].astype(int), acted["action"]).reindex(
        columns=["fix", "remove"], fill_value=0)
    order = sorted(counts.index, key=lambda c: (-int(counts.loc[c].sum()), c))[:top]
    rows = [{"class": f"{wnids[c]} {names[c].split(',')[0]}", "action": action,
             "count": int(counts.at[c, action])} for c in order for action in ("fix", "remove")]
    return pd.DataFrame(rows, columns=["class", "action", "count"])


def _figure(height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(8, height))


def _save(plt: Any, fig: Any, target: str | Path) -> None:
    fig.tight_layout()
    with formats.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_classes(table: pd.DataFrame, target: str | Path, *, title: str, empty: str) -> None:
    """A horizontal stacked bar chart of `class_table` for people (PNG); `empty` is shown when
    this iteration fixed and removed nothing."""
    classes = list(dict.fromkeys(table["class"]))[::-1]
    plt, (fig, ax) = _figure(1.5 + 0.3 * max(1, len(classes)))
    ax.set_title(title)
    if not classes:
        ax.text(0.5, 0.5, empty, ha="center", va="center")
        ax.set_axis_off()
    else:
        wide = table.pivot(index="class", columns="action", values="count").reindex(classes)
        left = np.zeros(len(classes))
        for action, color in (("fix", "tab:blue"), ("remove", "tab:red")):
            ax.barh(classes, wide[action].to_numpy(), left=left, color=color, label=action)
            left = left + wide[action].to_numpy()
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("images")
        ax.legend(loc="lower right")
    _save(plt, fig, target)


def _empty_note(metrics: Mapping[str, Any]) -> str:
    carried = metrics["counts"]["remove_carried"]
    return (f"no new fixes or removals in iteration {metrics['iteration']}"
            + (f" ({carried} removed in earlier iterations)" if carried else ""))


def round_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One iteration's line of the rounds history."""
    counts, block = metrics["counts"], metrics.get("reference") or {}
    return {"iteration": metrics["iteration"], "keep": counts["keep"], "fix": counts["fix"],
            "remove_new": counts["remove_new"], "remove": counts["remove"],
            "secondary": counts["secondary"], "agreement_before": block.get("agreement_before"),
            "agreement_after": block.get("agreement_after")}


def rounds_history_path(labels_file: str | Path) -> Path:
    """Where promote keeps a split's rounds history: beside its labels file."""
    labels_file = Path(labels_file)
    return labels_file.with_name(f"{labels_file.stem}-rounds.csv")


def rounds_table(history: Path, metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Earlier iterations (from the history file, if any) plus this one, one row each."""
    rows = [round_row(metrics)]
    if history.is_file():
        earlier = pd.read_csv(history)
        missing = set(ROUND_COLUMNS) - set(earlier.columns)
        if missing:
            raise InputError(f"{history}: lacks columns {sorted(missing)}; it is written by "
                             "`imagenet-clean promote`, restore it from git")
        rows = earlier[earlier["iteration"] < metrics["iteration"]].to_dict("records") + rows
    return pd.DataFrame(rows, columns=list(ROUND_COLUMNS))


def write_rounds(table: pd.DataFrame, folder: Path, split: str) -> None:
    """`<split>-rounds-counts.csv` and `<split>-rounds-agreement.csv` (iteration,series,value:
    the `rounds` DVC plot template draws one line per series) and a PNG of both."""
    series = {"counts": ["fix", "remove_new", "secondary"],
              "agreement": ["agreement_before", "agreement_after"]}
    plt, (fig, axes) = _figure(5)
    fig.clear()
    for k, (name, columns) in enumerate(series.items()):
        long = table.melt(id_vars="iteration", value_vars=columns, var_name="series")
        long = long.dropna(subset=["value"])
        with formats.atomic_path(folder / f"{split}-rounds-{name}.csv") as tmp:
            long.to_csv(tmp, index=False, lineterminator="\n")
        ax = fig.add_subplot(1, 2, k + 1)
        for column in columns:
            ax.plot(table["iteration"], table[column], marker="o", label=column)
        ax.set_xlabel("iteration")
        ax.set_title(f"{split}: {name} per iteration")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="best", fontsize="small")
    _save(plt, fig, folder / f"{split}-rounds.png")


def evaluate_split(ledger: pd.DataFrame, votes: pd.DataFrame, predictions: Mapping[str, Path], *,
                   cams: pd.DataFrame | None = None, clean: pd.DataFrame | None = None,
                   entries: list[frozenset[int] | None] | None = None,
                   multi_label_threshold: float = 0.3, top_classes: int = 20,
                   split: str = "<split>") -> tuple[dict[str, Any], pd.DataFrame]:
    """All metrics of a split -> (metrics dict, class table).

    Args:
        entries: per ledger row, the classes a human reference accepts (None: no entry), or None
            when no reference is configured (see `stages.method.references`).
    """
    if len(votes) != len(ledger):
        raise InputError(f"votes ({len(votes)} rows) and ledger ({len(ledger)} rows) differ; "
                         "re-run `dvc repro decide`")
    iterations = sorted(set(ledger["iteration"].astype(int)))
    metrics: dict[str, Any] = {"rows": len(ledger), "iteration": iterations[0] if iterations else 0,
                               **action_counts(ledger, clean)}
    metrics["models"] = model_metrics(ledger, votes, predictions, entries=entries, split=split)
    metrics["cam"] = cam_metrics(ledger, cams)
    if "ensemble_probs" in votes:
        metrics["multi_label_estimate"] = multi_label_estimate(votes,
                                                               threshold=multi_label_threshold)
    if entries is not None:
        block = references.agreement(ledger, entries)
        block["worse"] = references.warn_if_worse(block, split)
        metrics["reference"] = block
    return metrics, class_table(ledger, top=top_classes)


def run_evaluate(split: str, params: dict[str, Any], *, root: str | Path = ".") -> dict[str, Any]:
    """The stage: read ledger, votes, cams, clean split, predictions and the human reference;
    write the metrics, the per-class and per-iteration plots."""
    root = Path(root)
    config = from_section(EvaluateConfig, section(params, "evaluate"), where="evaluate")
    ledger = formats.read_table(root / formats.ledger_path(split), what=f"ledger of {split!r}")
    votes = formats.read_table(root / formats.votes_path(split), what=f"votes of {split!r}")
    cams = formats.read_table(root / formats.cams_path(split), what=f"CAM scores of {split!r}")
    clean = formats.read_table(root / formats.clean_path(split), what=f"clean split {split!r}")
    predictions = {m: root / formats.predictions_path(split, m)
                   for m in split_models(params, split)}
    entries = None
    if config.reference_labels:
        source = Path(config.references) / config.reference_labels
        entries = references.align(references.load_reference(root / source), ledger["image_id"],
                                  source=str(source))
    metrics, classes = evaluate_split(
        ledger, votes, predictions, cams=cams, clean=clean, entries=entries,
        multi_label_threshold=config.multi_label_threshold, top_classes=config.top_classes,
        split=split)
    folder = root / formats.metrics_path(split).parent
    formats.write_json(metrics, root / formats.metrics_path(split))
    with formats.atomic_path(folder / f"{split}-classes.csv") as tmp:
        classes.to_csv(tmp, index=False, lineterminator="\n")
    plot_classes(classes, folder / f"{split}-classes.png", empty=_empty_note(metrics),
                 title=f"{split}: fixes and removals per class (top {config.top_classes})")
    labels_file = split_params(params, split).get("labels") or f"iterations/{split}.parquet"
    write_rounds(rounds_table(root / rounds_history_path(labels_file), metrics), folder, split)
    logger.info("evaluate %s: %s", split, metrics["counts"])
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.evaluate --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="evaluate", doc=__doc__, run=run_evaluate)


if __name__ == "__main__":
    run_as_script(main)
