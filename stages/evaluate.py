"""`evaluate` stage: the ledger, votes and predictions -> `metrics/<split>.json` and the class plot.

Metrics (deterministic JSON, null where a ratio has no rows):

- `counts` / `percent` (of manifest rows): keep, fix, remove, skip, merge, override, exempted,
  placeholders; `iteration`; `rows`.
- `models.<name>`: `cl_label_errors` (rows that model's confident learning flagged), `top1/top5`
  on the `original` labels (the ledger `label`, rows that are not skip and have one) and on the
  `cleaned` labels (`new_label` of kept and fixed rows): the paper's Table 1.
- `cam`: `vetoed` removals (exempted rows) and a histogram of them by number of exempting models.
- `reference` (when `evaluate.reference_labels` names an ImageNet-ReaL style JSON): fix precision
  (new label acceptable), removal precision (no class acceptable or the label is not), keep accuracy
  (label acceptable), label accuracy before/after, and each model's ReaL top-1; only images that
  have an entry count (the top-1 only those with a non-empty one).
- `metrics/<split>-classes.csv` (class,action,count; the top `evaluate.top_classes` classes by fixes +
  removals, class = "wnid name") for `dvc plots`, and the same as a PNG bar chart for people.

Predictions are memory-mapped and scanned model by model in row chunks, so nothing of size
N x 1000 is ever held in memory.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages import formats
from stages.cli import run_as_script, split_stage_main
from stages.params import section

logger = logging.getLogger(__name__)

COUNTED = ("keep", "fix", "remove", "skip")
CHUNK_ROWS = 8192
REAL_ID = re.compile(r"^ILSVRC2012_val_(\d{8})$")


@dataclass(frozen=True)
class EvaluateConfig:
    """params.yaml `evaluate:`."""

    reference_labels: str | None = None
    top_classes: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.top_classes, bool) or not isinstance(self.top_classes, int) \
                or self.top_classes < 1:
            raise ValueError(f"evaluate.top_classes must be a positive int, got {self.top_classes!r}")


def _percent(hits: int, total: int) -> float | None:
    return None if total == 0 else round(100.0 * hits / total, 4)


def action_counts(ledger: pd.DataFrame, clean: pd.DataFrame | None = None) -> dict[str, Any]:
    """Counts and percentages (of ledger rows) of every action and flag."""
    counts = {a: int((ledger["action"] == a).sum()) for a in COUNTED}
    counts.update(merge=int(ledger["merged"].sum()), override=int(ledger["override"].sum()),
                  exempted=int(ledger["exempted"].sum()),
                  placeholders=0 if clean is None else int(clean["placeholder"].sum()))
    return {"counts": counts, "percent": {k: _percent(v, len(ledger)) for k, v in counts.items()}}


def scan_model(probs: np.ndarray, *, chunk_rows: int = CHUNK_ROWS, desc: str = "scan"
               ) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 and top-5 classes of every row, reading `probs` (N, K) chunk by chunk.

    Returns:
        top1: (N,) int32; top5: (N, 5) int32 (unordered). Rows of NaN (skip rows) give garbage
        that callers mask out.
    """
    n = len(probs)
    top1 = np.empty(n, dtype=np.int32)
    top5 = np.empty((n, 5), dtype=np.int32)
    with tqdm(total=n, desc=desc, unit="row", unit_scale=True, mininterval=2.0) as bar:
        for start in range(0, n, chunk_rows):
            chunk = np.nan_to_num(np.asarray(probs[start:start + chunk_rows], dtype=np.float32),
                                  nan=-1.0)
            top1[start:start + len(chunk)] = chunk.argmax(axis=1)
            top5[start:start + len(chunk)] = np.argpartition(-chunk, 4, axis=1)[:, :5]
            bar.update(len(chunk))
    return top1, top5


def _accuracy(top1: np.ndarray, top5: np.ndarray, labels: pd.Series, rows: np.ndarray
              ) -> dict[str, float | None]:
    wanted = labels.to_numpy(dtype="float64", na_value=np.nan)
    rows = rows & ~np.isnan(wanted)
    target = wanted[rows].astype(np.int64)
    return {"top1": _percent(int((top1[rows] == target).sum()), int(rows.sum())),
            "top5": _percent(int((top5[rows] == target[:, None]).any(axis=1).sum()),
                             int(rows.sum())), "rows": int(rows.sum())}


def model_metrics(ledger: pd.DataFrame, votes: pd.DataFrame, predictions: Mapping[str, Path], *,
                  reference: list[list[int]] | None = None, chunk_rows: int = CHUNK_ROWS,
                  split: str = "<split>") -> dict[str, dict[str, Any]]:
    """Per model: CL label errors, top-1/top-5 on original vs cleaned labels, ReaL top-1.

    Args:
        ledger: the decision ledger (N rows); votes: the votes table (N rows, same order).
        predictions: model name -> (N, 1000) `.npy` file; each is memory-mapped in turn.
        reference: ReaL-style acceptable classes per ILSVRC2012_val_ index, or None.
    """
    flagged = votes["cl_models"].explode().dropna().value_counts()
    not_skip = (ledger["action"] != "skip").to_numpy()
    cleaned = ledger["action"].isin(["keep", "fix"]).to_numpy()
    entries = _reference_entries(ledger, reference) if reference is not None else None
    metrics = {}
    for name, path in predictions.items():
        probs = formats.load_predictions(split, name, path=path)
        if probs.shape != (len(ledger), formats.NUM_CLASSES):
            raise ValueError(f"{path}: shape {probs.shape}, expected ({len(ledger)}, "
                             f"{formats.NUM_CLASSES}) to match the ledger; re-run predict")
        top1, top5 = scan_model(probs, chunk_rows=chunk_rows, desc=f"evaluate {name}")
        del probs
        metrics[name] = {"cl_label_errors": int(flagged.get(name, 0)),
                         "original": _accuracy(top1, top5, ledger["label"], not_skip),
                         "cleaned": _accuracy(top1, top5, ledger["new_label"], cleaned)}
        if entries is not None:
            real = [(int(top1[i]) in entry) for i, entry in entries.items() if entry and not_skip[i]]
            metrics[name]["real_top1"] = _percent(sum(real), len(real))
    return metrics


def load_reference(path: str | Path) -> list[list[int]]:
    """An ImageNet-ReaL style JSON: entry i = acceptable classes of ILSVRC2012_val_{i+1:08d}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.reference_labels: {path} not found; fix the path or set "
                                "it to null")
    data = json.loads(path.read_text())
    if not isinstance(data, list) or not all(
            isinstance(e, list) and all(isinstance(c, int) and 0 <= c < formats.NUM_CLASSES
                                        for c in e) for e in data):
        raise ValueError(f"{path}: expected a JSON list of lists of class indices 0..999 "
                         "(ImageNet-ReaL real.json format)")
    return data


def _reference_entries(ledger: pd.DataFrame, reference: list[list[int]]) -> dict[int, frozenset]:
    """ledger row -> acceptable classes, for rows whose image_id has a reference entry."""
    entries = {}
    for row, image_id in enumerate(ledger["image_id"]):
        match = REAL_ID.match(str(image_id))
        if match and 0 < int(match.group(1)) <= len(reference):
            entries[row] = frozenset(reference[int(match.group(1)) - 1])
    return entries


def reference_metrics(ledger: pd.DataFrame, reference: list[list[int]]) -> dict[str, Any]:
    """Agreement of the decisions with reference labels (only images with an entry count)."""
    entries = _reference_entries(ledger, reference)
    tallies: dict[str, list[bool]] = {k: [] for k in ("fix", "remove", "keep", "original", "cleaned")}
    for row, ok in entries.items():
        action, label, new = ledger.at[row, "action"], ledger.at[row, "label"], ledger.at[row, "new_label"]
        if pd.isna(label):
            continue  # skip rows and rows that left in an earlier iteration
        tallies["original"].append(int(label) in ok)
        if action == "fix":
            tallies["fix"].append(int(new) in ok)
        elif action == "remove":
            tallies["remove"].append(not ok or int(label) not in ok)
        elif action == "keep":
            tallies["keep"].append(int(label) in ok)
        if action in ("keep", "fix"):
            tallies["cleaned"].append(int(new) in ok)
    names = {"fix": "fix_precision", "remove": "removal_precision", "keep": "keep_accuracy",
             "original": "label_accuracy_original", "cleaned": "label_accuracy_cleaned"}
    out: dict[str, Any] = {"images": len(entries)}
    for key, name in names.items():
        out[name] = _percent(sum(tallies[key]), len(tallies[key]))
        out[f"{name}_rows"] = len(tallies[key])
    return out


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


def plot_classes(table: pd.DataFrame, target: str | Path, *, title: str) -> None:
    """A horizontal stacked bar chart of `class_table` for people (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(table["class"]))[::-1]
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * max(1, len(classes))))
    ax.set_title(title)
    if not classes:
        ax.text(0.5, 0.5, "no fixes or removals", ha="center", va="center")
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
    fig.tight_layout()
    with formats.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def evaluate_split(ledger: pd.DataFrame, votes: pd.DataFrame, predictions: Mapping[str, Path], *,
                   cams: pd.DataFrame | None = None, clean: pd.DataFrame | None = None,
                   reference: list[list[int]] | None = None, top_classes: int = 20,
                   split: str = "<split>") -> tuple[dict[str, Any], pd.DataFrame]:
    """All metrics of a split -> (metrics dict, class table)."""
    if len(votes) != len(ledger):
        raise ValueError(f"votes ({len(votes)} rows) and ledger ({len(ledger)} rows) differ; "
                         "re-run `dvc repro decide`")
    iterations = sorted(set(ledger["iteration"].astype(int)))
    metrics: dict[str, Any] = {"rows": len(ledger), "iteration": iterations[0] if iterations else 0,
                               **action_counts(ledger, clean)}
    metrics["models"] = model_metrics(ledger, votes, predictions, reference=reference, split=split)
    metrics["cam"] = cam_metrics(ledger, cams)
    if reference is not None:
        metrics["reference"] = reference_metrics(ledger, reference)
    return metrics, class_table(ledger, top=top_classes)


def run_evaluate(split: str, params: dict[str, Any], *, root: str | Path = ".") -> dict[str, Any]:
    """The stage: read ledger, votes, cams, clean split and predictions; write the metrics files."""
    root = Path(root)
    config = EvaluateConfig(**section(params, "evaluate"))
    ledger = formats.read_table(root / formats.ledger_path(split), what=f"ledger of {split!r}")
    votes = formats.read_table(root / formats.votes_path(split), what=f"votes of {split!r}")
    cams = formats.read_table(root / formats.cams_path(split), what=f"CAM scores of {split!r}")
    clean = formats.read_table(root / formats.clean_path(split), what=f"clean split {split!r}")
    predictions = {m: root / formats.predictions_path(split, m)
                   for m in section(params, "predict")["models"]}
    reference = load_reference(root / config.reference_labels) if config.reference_labels else None
    metrics, classes = evaluate_split(ledger, votes, predictions, cams=cams, clean=clean,
                                      reference=reference, top_classes=config.top_classes,
                                      split=split)
    formats.write_json(metrics, root / formats.metrics_path(split))
    with formats.atomic_path(root / "metrics" / f"{split}-classes.csv") as tmp:
        classes.to_csv(tmp, index=False, lineterminator="\n")
    plot_classes(classes, root / "metrics" / f"{split}-classes.png",
                 title=f"{split}: fixes and removals per class (top {config.top_classes})")
    logger.info("evaluate %s: %s", split, metrics["counts"])
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.evaluate --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="evaluate", doc=__doc__, run=run_evaluate)


if __name__ == "__main__":
    run_as_script(main)
