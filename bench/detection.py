"""Detection quality of vote + decide on injected label flips: what thresholds get tuned against.

Takes the pipeline's real predictions (default data/predictions/<split>/<model>.npy and
data/manifests/<split>.parquet; run `dvc repro predict` first), flips a known, seeded set of the
manifest labels, runs the vote stage's pure functions and decide's rules on the flipped labels in
memory, and prints how well fixes and removals recover the flips:

- flips: `--rate` (default 5 %) of the usable rows, chosen with `--seed`; the first half of them
  flip to a uniformly random other class ("random"), the second half to the ensemble's most likely
  class other than the true label, i.e. its second choice when it is right ("confusable";
  ensemble = mean of the models' probabilities).
- fix precision = fixes that restore the true label of a flipped row / fixes;
  fix recall = flipped rows fixed to their true label / flipped rows.
- removal precision = removals of flipped rows / removals; removal recall = flipped rows removed /
  flipped rows. `caught` = flipped rows fixed (to any label) or removed / flipped rows.
- Unflipped rows that get fixed or removed count against precision, although some are the real
  ImageNet label errors the paper is after: precision here is a lower bound.
- No CAMs: consensus removals are not exempted (explain needs images and boxes), so removal
  counts are an upper bound of the pipeline's.

Rows: both decision strategies (`paper` and `consensus`, see stages.method.strategies) at the
thresholds from params (`vote.<split>.fn`, `decide.<split>.h1/h2/h3`, `decide.consensus`), then a
small sweep over fn x h1 x h2 x h3 (`--no-sweep` to skip). Usage:

    python bench/detection.py [--split val] [--rate 0.05] [--seed 0] [--models a,b]
        [--predictions-dir DIR] [--manifest PATH] [--fn-mode ranked] [--no-sweep] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.params import load_params, resolve_threshold, section
from stages.method.evidence import ensemble_evidence
from stages.method.ledger import DecideConfig, apply_rules
from stages.method.strategies import STRATEGIES
from stages.method.thresholds import Thresholds

ROOT = Path.cwd()

SWEEP = {"fn": (1.0, 0.9), "h1": (2, "M/2", "M"), "h2": (2, 3, 4), "h3": ("2M/3", "M")}
KINDS = {1: "random", 2: "confusable"}
CHUNK_ROWS = 8192


def open_predictions(folder: Path, models: Sequence[str], n_rows: int) -> dict[str, np.ndarray]:
    """Memory-map each model's (N, 1000) predictions, checking the shapes against the manifest."""
    arrays = {}
    for model in models:
        path = folder / f"{model}.npy"
        if not path.is_file():
            raise SystemExit(
                f"{path} not found: run `dvc repro predict` first (or pass "
                "--predictions-dir/--manifest/--models)"
            )
        arrays[model] = np.load(path, mmap_mode="r")
        if arrays[model].shape != (n_rows, formats.NUM_CLASSES):
            raise SystemExit(
                f"{path}: shape {arrays[model].shape}, expected ({n_rows}, 1000) to "
                "match the manifest; re-run `dvc repro predict`"
            )
    return arrays


def confusable_classes(
    labels: np.ndarray, predictions: dict[str, np.ndarray], usable: np.ndarray
) -> np.ndarray:
    """(N,) the ensemble's most likely class other than the label (-1 on unusable rows)."""
    out = np.full(len(labels), -1, dtype=np.int64)
    for start in range(0, len(labels), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(labels))
        mean = sum(np.asarray(p[start:stop], dtype=np.float32) for p in predictions.values())
        rows = np.flatnonzero(usable[start:stop])
        mean = mean[rows]
        mean[np.arange(len(rows)), labels[start + rows]] = -np.inf
        out[start + rows] = mean.argmax(axis=1)
    return out


def inject_flips(
    labels: np.ndarray, confusable: np.ndarray, usable: np.ndarray, *, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip `rate` of the usable rows: the first half randomly, the second half to `confusable`.

    Returns:
        flipped: (N,) labels after the flips; kind: (N,) 0 unflipped, 1 random, 2 confusable.
    """
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(usable)
    chosen = rng.choice(rows, size=max(1, round(rate * len(rows))), replace=False)
    half = len(chosen) // 2 + len(chosen) % 2
    flipped, kind = labels.copy(), np.zeros(len(labels), dtype=np.int8)
    random_rows, confusable_rows = chosen[:half], chosen[half:]
    shift = rng.integers(1, formats.NUM_CLASSES, size=len(random_rows))
    flipped[random_rows] = (labels[random_rows] + shift) % formats.NUM_CLASSES
    flipped[confusable_rows] = confusable[confusable_rows]
    kind[random_rows], kind[confusable_rows] = 1, 2
    return flipped, kind


def vote_columns(
    labels: np.ndarray, predictions: dict[str, np.ndarray], usable: np.ndarray, config: Any
) -> pd.DataFrame:
    """The vote stage's per-row columns for these labels (one cleanlab run per model)."""
    from stages.method.votes import model_votes
    from stages.method.votes import vote_columns as columns

    results = [
        model_votes(labels, probs, config=config, active=usable, model=name)
        for name, probs in predictions.items()
    ]
    return columns(results, len(labels), usable).to_pandas()


def decide_ledger(
    manifest: pd.DataFrame,
    flipped: np.ndarray,
    usable: np.ndarray,
    columns: pd.DataFrame,
    evidence: pd.DataFrame,
    config: DecideConfig,
) -> pd.DataFrame:
    """decide's strategy on a votes table built around the flipped labels (no CAMs)."""
    votes = pd.DataFrame(
        {
            "image_id": manifest["image_id"],
            "label": pd.Series(flipped, dtype="Int32").where(usable, pd.NA),
            "original_label": pd.array(flipped, dtype="Int32"),
            "iteration": 0,
            "inactive_reason": np.where(usable, None, "skip: unusable"),
        }
    )
    votes = pd.concat([votes, columns, evidence], axis=1)
    return apply_rules(
        votes, manifest.assign(skip_reason=np.where(usable, None, "unusable")), config=config
    )


def score(ledger: pd.DataFrame, truth: np.ndarray, kind: np.ndarray) -> dict[str, Any]:
    """Precision and recall of fixes and removals at recovering the flips."""
    action, new = (
        ledger["action"].to_numpy(),
        ledger["new_label"].to_numpy(dtype="float64", na_value=-1),
    )
    flip = kind > 0
    fix, remove = action == "fix", action == "remove"
    restored = fix & flip & (new == truth)

    def ratio(a: int, b: int) -> float | None:
        return None if b == 0 else round(100.0 * a / b, 2)

    out = {
        "flips": int(flip.sum()),
        "fixes": int(fix.sum()),
        "removals": int(remove.sum()),
        "fix_precision": ratio(int(restored.sum()), int(fix.sum())),
        "fix_recall": ratio(int(restored.sum()), int(flip.sum())),
        "removal_precision": ratio(int((remove & flip).sum()), int(remove.sum())),
        "removal_recall": ratio(int((remove & flip).sum()), int(flip.sum())),
        "caught": ratio(int(((fix | remove) & flip).sum()), int(flip.sum())),
    }
    for code, name in KINDS.items():
        rows = kind == code
        out[f"{name}_fix_recall"] = ratio(int((restored & rows).sum()), int(rows.sum()))
        out[f"{name}_removal_recall"] = ratio(int((remove & rows).sum()), int(rows.sum()))
    return out


def settings(params: dict[str, Any], split: str, sweep: bool) -> list[dict[str, Any]]:
    """The paper's setting from params first, then the sweep grid (duplicates dropped later)."""
    own = section(params, "decide", split)
    paper = {
        "fn": float(section(params, "vote", split)["fn"]),
        "h1": own["h1"],
        "h2": own["h2"],
        "h3": own["h3"],
        "paper": True,
    }
    grid = [dict(zip(SWEEP, values), paper=False) for values in itertools.product(*SWEEP.values())]
    return [paper] + (grid if sweep else [])


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Load, flip, then vote + decide + score every setting; one result row per setting."""
    params = load_params(args.params)
    models = args.models.split(",") if args.models else list(section(params, "predict")["models"])
    manifest = formats.read_manifest(args.split, path=args.manifest)
    predictions = open_predictions(args.predictions_dir, models, len(manifest))
    labels = manifest["label"].fillna(0).astype(np.int64).to_numpy()
    usable = manifest["skip_reason"].isna().to_numpy() & manifest["label"].notna().to_numpy()
    flipped, kind = inject_flips(
        labels,
        confusable_classes(labels, predictions, usable),
        usable,
        rate=args.rate,
        seed=args.seed,
    )
    evidence = (
        ensemble_evidence(
            flipped, {m: args.predictions_dir / f"{m}.npy" for m in models}, active=usable
        )
        .columns(usable)
        .to_pandas()
    )
    consensus = DecideConfig.from_params(params, args.split).consensus
    from stages.method.confident import ConfidentConfig

    base = ConfidentConfig.from_params(params, args.split)
    if args.fn_mode:
        base = dataclasses.replace(base, fn_mode=args.fn_mode)
    columns: dict[float, pd.DataFrame] = {}
    results, seen = [], set()
    for setting in settings(params, args.split, not args.no_sweep):
        t = Thresholds(
            *(resolve_threshold(setting[h], len(models), name=h) for h in ("h1", "h2", "h3")),
            n_models=len(models),
        )
        key = (setting["fn"], t.h1, t.h2, t.h3)
        if key in seen:
            continue
        seen.add(key)
        if setting["fn"] not in columns:
            started = time.perf_counter()
            columns[setting["fn"]] = vote_columns(
                flipped, predictions, usable, dataclasses.replace(base, fn=setting["fn"])
            )
            print(
                f"# vote fn={setting['fn']}: {len(models)} models x {int(usable.sum())} rows in "
                f"{time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
        for strategy in STRATEGIES:
            config = DecideConfig(strategy, t, consensus)
            ledger = decide_ledger(
                manifest, flipped, usable, columns[setting["fn"]], evidence, config
            )
            results.append(
                {
                    "paper": setting["paper"],
                    "strategy": strategy,
                    "fn": setting["fn"],
                    "h1": t.h1,
                    "h2": t.h2,
                    "h3": t.h3,
                    **score(ledger, labels, kind),
                }
            )
    return results


def print_table(results: list[dict[str, Any]], header: str) -> None:
    """Print one line per setting."""

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    cols = [
        "strategy",
        "fn",
        "h1",
        "h2",
        "h3",
        "fixes",
        "fix_precision",
        "fix_recall",
        "removals",
        "removal_precision",
        "removal_recall",
        "caught",
        "random_fix_recall",
        "confusable_fix_recall",
        "random_removal_recall",
        "confusable_removal_recall",
    ]
    print(header)
    print(" ".join(["  "] + cols))
    for row in results:
        print(
            " ".join(["* " if row["paper"] else "  "] + [cell(row[c]).rjust(len(c)) for c in cols])
        )
    print(
        f"(* = params.yaml thresholds; precision/recall in %; flipped rows: {results[0]['flips']})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="val")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--predictions-dir",
        type=Path,
        default=None,
        help="folder of <model>.npy (default data/predictions/<split>)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest parquet (default data/manifests/<split>.parquet)",
    )
    parser.add_argument("--models", default=None, help="comma-separated (default predict.models)")
    parser.add_argument("--rate", type=float, default=0.05, help="fraction of usable rows flipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fn-mode",
        default=None,
        help="vote fn_mode for fn < 1 (cleanlab | ranked; default from params)",
    )
    parser.add_argument("--no-sweep", action="store_true", help="only the params.yaml thresholds")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if not 0 < args.rate < 1:
        parser.error(f"--rate must be in (0, 1), got {args.rate}")
    args.predictions_dir = args.predictions_dir or ROOT / "data/predictions" / args.split
    args.manifest = args.manifest or ROOT / formats.manifest_path(args.split)
    if not args.manifest.is_file():
        raise SystemExit(
            f"{args.manifest} not found: run `dvc repro predict` first (it ingests too)"
        )
    results = run(args)
    print_table(
        results,
        f"# detection: split {args.split}, {args.rate:.1%} flipped (seed "
        f"{args.seed}), models {args.models or 'predict.models'}, fn_mode "
        f"{args.fn_mode or 'from params'}",
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
