"""Decision strategies x views, cross-validated on the dev reference: honest figures.

Reads what `dvc repro` wrote for a split (manifest, predictions of every model x view, CAM scores)
and the params; predicts the views it lacks (`hflip` by default) into a cache folder; then splits
the images that have a reference entry into two seeded halves and cleans **each half as a split of
its own** (its rows of every predictions file, its CAM rows): for each set of views it re-runs the
vote (CL votes, the ensemble's evidence, calibration and noise estimate on that half only) and
every strategy in memory (no overrides), and scores each half's ledger against the human
reference. So a half's removal budget is its own (`max_remove` of the half), and nothing about the
other half reaches its decisions:

- `paper` and `consensus` (the old default: `vote.evidence.pooling: mean`) with their knobs as in
  params.yaml (`consensus` was tuned on the whole dev set earlier: its figures are optimistic);
- `expected_benefit` with its a-priori knobs (nothing fitted);
- `expected_benefit (fitted)`: `precision` chosen on one half (best agreement gain over
  {0.6, 0.7, 0.8, 0.9}), scored on the other, both ways.

Per half: agreement gain (points), removed share, fix precision corrected / (corrected + broken),
removal precision, secondary-label precision, with 95 % Wilson intervals. Also the ensemble's
top-1 (official labels) and ReaL top-1 per view and combined, and each view's predict cost
relative to the full view (one model, timed side by side).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/strategies.py [--split val] \
        [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.params import load_params
from stages.method import references as reference
from stages.method.decisions import StrategyOptions
from stages.method.ledger import DecideConfig, decide_split
from stages.method.merges import load_merges
from stages.method.pooling import ViewPooled
from stages.method.scoring import EvaluateConfig
from stages.method.votes import VoteConfig, split_votes
from stages.modelling.predict_config import PredictConfig
from stages.modelling.predictor import predict_split

CACHE = Path("bench/.cache")
FITTED_PRECISIONS = (0.6, 0.7, 0.8, 0.9)
Z = 1.96


def wilson(k: int, n: int) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of k successes in n trials (None without trials)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1)


def prediction_folder(split: str, params: dict[str, Any], views: Sequence[str]) -> Path:
    """A folder with every model x view file: the pipeline's (linked), the others predicted here
    once and cached under bench/.cache."""
    source = formats.predictions_path(split, "x").parent
    folder = CACHE / "predictions" / split
    folder.mkdir(parents=True, exist_ok=True)
    models = VoteConfig.from_params(params, split).models
    manifest = formats.read_manifest(split)
    for view in views:
        missing = [m for m in models if not (folder / f"{m}.{view}.npy").is_file()]
        have = [m for m in missing if (source / f"{m}.{view}.npy").is_file()]
        for model in have:
            for suffix in (".npy", ".json"):
                (folder / f"{model}.{view}{suffix}").symlink_to(
                    (source / f"{model}.{view}{suffix}").resolve()
                )
        todo = [m for m in missing if m not in have]
        if todo:
            config = PredictConfig.from_params(params, split, todo, [view])
            outs = {f"{m}.{view}": folder / f"{m}.{view}.npy" for m in todo}
            predict_split(config, manifest, outs)
    return folder


def halves(manifest: pd.DataFrame, entries: list[Any], *, seed: int = 0) -> list[np.ndarray]:
    """Two disjoint (N,) masks over the rows with a reference entry, seeded."""
    judged = np.flatnonzero([e is not None for e in entries])
    order = np.random.default_rng(seed).permutation(judged)
    masks = []
    for part in (order[: len(order) // 2], order[len(order) // 2 :]):
        mask = np.zeros(len(manifest), dtype=bool)
        mask[part] = True
        masks.append(mask)
    return masks


def score(ledger: pd.DataFrame, entries: list[Any], mask: np.ndarray) -> dict[str, Any]:
    """Reference figures of the masked rows, with Wilson intervals."""
    part = [e if keep else None for e, keep in zip(entries, mask)]
    block = reference.agreement(ledger, part)
    fixes = block["fixes"]
    decided = fixes["corrected"] + fixes["broken"]
    removed_bad = round((block["removal_precision"] or 0) * block["removals"] / 100)
    secondary_ok = round((block["secondary_precision"] or 0) * block["secondary_labels"] / 100)
    before, after = block["agreement_before"], block["agreement_after"]
    return {
        "gain": None if before is None or after is None else round(after - before, 2),
        "before": before,
        "after": after,
        "removed_pct": block["removed_fraction"],
        "fixes": fixes,
        "fix_precision": formats.percent(fixes["corrected"], decided),
        "fix_ci": wilson(fixes["corrected"], decided),
        "removals": block["removals"],
        "removal_precision": block["removal_precision"],
        "removal_ci": wilson(removed_bad, block["removals"]),
        "secondary": block["secondary_labels"],
        "secondary_precision": block["secondary_precision"],
        "secondary_ci": wilson(secondary_ok, block["secondary_labels"]),
    }


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What every configuration reads."""

    split: str
    params: dict[str, Any]
    manifest: pd.DataFrame
    cams: pd.DataFrame
    merges: dict[int, int]
    entries: list[Any]
    masks: list[np.ndarray]
    folder: Path


def half_inputs(inputs: Inputs, k: int) -> Inputs:
    """Half `k` as a split of its own: its manifest rows, its rows of every predictions file (a
    cache folder, sidecars re-digested for the new row order), its CAM rows and reference entries;
    its one mask covers every row."""
    rows = np.flatnonzero(inputs.masks[k])
    manifest = inputs.manifest.iloc[rows].reset_index(drop=True)
    folder = CACHE / "halves" / f"{inputs.split}-{k}"
    folder.mkdir(parents=True, exist_ok=True)
    digest = formats.image_ids_sha256(manifest["image_id"])
    for source in sorted(inputs.folder.glob("*.npy")):
        np.save(folder / source.name, np.load(source, mmap_mode="r")[rows])
        sidecar = json.loads(source.with_suffix(".json").read_text())
        sidecar.update(image_ids_sha256=digest, n=len(rows))
        (folder / source.with_suffix(".json").name).write_text(json.dumps(sidecar))
    ids = set(manifest["image_id"])
    return dataclasses.replace(
        inputs,
        manifest=manifest,
        cams=inputs.cams[inputs.cams["image_id"].isin(ids)].reset_index(drop=True),
        entries=[inputs.entries[r] for r in rows],
        masks=[np.ones(len(rows), dtype=bool)],
        folder=folder,
    )


def ledger_for(
    inputs: Inputs, views: tuple[str, ...], strategy: str, pooling: str, options: StrategyOptions
) -> pd.DataFrame:
    """Vote with these views and pooling, decide with this strategy -> the ledger."""
    base = VoteConfig.from_params(inputs.params, inputs.split)
    vote = dataclasses.replace(
        base, views=views, evidence=dataclasses.replace(base.evidence, pooling=pooling)
    )
    table, _ = split_votes(vote, inputs.manifest, predictions=inputs.folder)
    decide = DecideConfig.from_params(inputs.params, inputs.split)
    decide = dataclasses.replace(decide, strategy=strategy, options=options)
    ledger, _ = decide_split(
        table.to_pandas(), inputs.manifest, config=decide, cams=inputs.cams, merges=inputs.merges
    )
    return ledger


def configurations(inputs: Inputs, view_sets: Sequence[tuple[str, ...]]) -> list[dict[str, Any]]:
    """Every strategy x view set, each half cleaned on its own and scored."""
    options = StrategyOptions.from_params(inputs.params)
    parts = [half_inputs(inputs, k) for k in range(len(inputs.masks))]
    rows = []
    for views in view_sets:
        for strategy, pooling in (
            ("paper", "mean"),
            ("consensus", "mean"),
            ("expected_benefit", "calibrated"),
        ):
            scored = [
                score(ledger_for(part, views, strategy, pooling, options), part.entries, mask)
                for part in parts
                for mask in part.masks
            ]
            rows.append({"strategy": strategy, "views": views, "halves": scored})
        rows.append(
            {
                "strategy": "expected_benefit (fitted)",
                "views": views,
                "halves": fitted(parts, views, options),
            }
        )
    return rows


def fitted(
    parts: Sequence[Inputs], views: tuple[str, ...], options: StrategyOptions
) -> list[dict[str, Any]]:
    """`precision` chosen on one half by agreement gain, used on the other (both ways)."""
    scores = [
        {
            p: score(
                ledger_for(
                    part,
                    views,
                    "expected_benefit",
                    "calibrated",
                    dataclasses.replace(
                        options,
                        expected_benefit=dataclasses.replace(options.expected_benefit, precision=p),
                    ),
                ),
                part.entries,
                part.masks[0],
            )
            for p in FITTED_PRECISIONS
        }
        for part in parts
    ]
    out = []
    for fit, held in ((0, 1), (1, 0)):
        best = max(scores[fit], key=lambda p: (scores[fit][p]["gain"] or 0.0, p))
        out.append({**scores[held][best], "fitted": best})
    return out


def view_accuracy(inputs: Inputs, view_sets: Sequence[tuple[str, ...]]) -> list[dict[str, Any]]:
    """The ensemble's (mean over models of view-pooled probabilities) top-1 on the official
    labels and on the reference (ReaL), per view set."""
    models = VoteConfig.from_params(inputs.params, inputs.split).models
    labels = inputs.manifest["label"].to_numpy()
    usable = inputs.manifest["skip_reason"].isna().to_numpy()
    rows = np.flatnonzero(usable)
    out = []
    for views in view_sets:
        total = 0.0
        for model in models:
            pooled = ViewPooled([inputs.folder / f"{model}.{v}.npy" for v in views])
            total = total + pooled[rows]
        top1 = np.asarray(total).argmax(axis=1)
        official = float((top1 == labels[rows]).mean())
        judged = [(k, inputs.entries[r]) for k, r in enumerate(rows) if inputs.entries[r]]
        real = float(np.mean([top1[k] in e for k, e in judged])) if judged else float("nan")
        out.append(
            {"views": views, "top1": round(100 * official, 2), "real_top1": round(100 * real, 2)}
        )
    return out


def view_cost(split: str, params: dict[str, Any], views: Sequence[str], n: int = 96) -> dict:
    """Seconds to predict n images with one model through each view, side by side (relative to
    the full view)."""
    manifest = formats.read_manifest(split).head(n)
    model = VoteConfig.from_params(params, split).models[0]
    seconds = {}
    for view in ("full", *[v for v in views if v != "full"]):
        config = PredictConfig.from_params(params, split, [model], [view])
        out = CACHE / "cost" / f"{model}.{view}.npy"
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        predict_split(config, manifest, {f"{model}.{view}": out})
        seconds[view] = time.perf_counter() - start
    return {
        "model": model,
        "images": n,
        **{
            v: {"seconds": round(s, 2), "relative": round(s / seconds["full"], 2)}
            for v, s in seconds.items()
        },
    }


def load_inputs(split: str, params: dict[str, Any], views: Sequence[str]) -> Inputs:
    """The split's pipeline outputs, reference and halves."""
    evaluate = EvaluateConfig.from_params(params, split)
    if evaluate.reference is None:
        raise SystemExit(f"evaluate.reference_labels names no file for {split}")
    manifest = formats.read_manifest(split)
    decide = DecideConfig.from_params(params, split)
    entries = reference.align(
        reference.load_reference(evaluate.reference),
        manifest["image_id"],
        source=str(evaluate.reference),
    )
    return Inputs(
        split,
        params,
        manifest,
        formats.read_table(formats.cams_path(split), what="CAM scores"),
        load_merges(decide.merges.table) if decide.merges.enabled else {},
        list(entries),
        halves(manifest, list(entries)),
        prediction_folder(split, params, views),
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ci(value: float | None, ci: tuple[float, float] | None) -> str:
    return "-" if value is None or ci is None else f"{value:.0f} [{ci[0]:.0f}, {ci[1]:.0f}]"


def print_tables(rows: list[dict[str, Any]], split: str) -> None:
    """Markdown: one line per strategy x views x half."""
    print(
        f"| strategy ({split}) | views | half | agreement gain (points) | removed % | "
        "fix precision % [95 % CI] (corrected/broken) | removal precision % [95 % CI] | "
        "secondary precision % (n) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for k, h in enumerate(row["halves"]):
            name = row["strategy"] + (f", precision {h['fitted']}" if "fitted" in h else "")
            half = f"{'BA'[k]} (fit on {'AB'[k]})" if "fitted" in h else "AB"[k]
            f = h["fixes"]
            print(
                f"| {name} | {'+'.join(row['views'])} | {half} | {h['gain']:+.2f} | "
                f"{_pct(h['removed_pct'])} | {_ci(h['fix_precision'], h['fix_ci'])} "
                f"({f['corrected']}/{f['broken']}) | "
                f"{_ci(h['removal_precision'], h['removal_ci'])} | "
                f"{_pct(h['secondary_precision'])} ({h['secondary']}) |"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="val")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--views", nargs="+", default=["full", "boxes", "hflip"])
    parser.add_argument("--no-cost", action="store_true", help="skip the view cost timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    inputs = load_inputs(args.split, params, args.views)
    others = [v for v in args.views if v != "full"]
    view_sets = [("full",)] + [("full", v) for v in others]
    if len(others) > 1:
        view_sets.append(("full", *others))
    rows = configurations(inputs, view_sets)
    print_tables(rows, args.split)
    accuracy = view_accuracy(inputs, [(v,) for v in args.views] + view_sets[1:])
    print("\n| views | ensemble top-1 % | ensemble ReaL top-1 % |\n|---|---|---|")
    for a in accuracy:
        print(f"| {'+'.join(a['views'])} | {a['top1']:.2f} | {a['real_top1']:.2f} |")
    cost = None if args.no_cost else view_cost(args.split, params, args.views)
    if cost:
        print(f"\npredict cost per view ({cost['model']}, {cost['images']} images, 1 process):")
        for view in args.views:
            print(f"  {view}: {cost[view]['seconds']} s ({cost[view]['relative']}x full)")
    if args.json:
        payload = {"rows": rows, "accuracy": accuracy, "cost": cost}
        args.json.write_text(json.dumps(payload, indent=2, default=list) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
