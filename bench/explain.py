"""Benchmark the explain stage: seconds per (candidate, model) for each CAM method, the share of
Score-CAM calls the early exit saves, and a check that early-exit decisions equal exhaustive ones.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/explain.py [--split val]
        [--source auto|votes|consensus|top5] [--limit N] [--models a,b] [--json out.json]
        [--cache DIR] [--min-area F] [--count-only]

Candidates (`--source`):
  votes      data/votes/<split>.parquet, exactly as the stage selects them (the default when
             present);
  consensus  the same rule on top-5 hits computed here (from data/predictions when present, else by
             running the models): active rows with boxes whose top-5 misses >= h3 — the stage's own
             candidate set at iteration 0 (the default until the vote stage has run);
  top5       every row with boxes whose label is in a model's top-5 but not its top-1, per model.
`--limit N` keeps the first N pairs per model. Both modes run on every pair: first exhaustive (all
methods), then with the early exit, and the decisions are compared pair by pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from stages.contracts import formats
from stages.contracts.params import load_params, resolve_threshold, section
from stages.contracts.splits import SplitEntry
from stages.method import cams, exemptions
from stages.modelling.models import create_model, data_config, eval_transform
from stages.modelling.specs import model_specs
from stages.sources.images import open_image


def load_manifest(split: str, params: dict[str, Any]) -> pd.DataFrame:
    """The split's manifest, or one built here by the real ingest code when absent."""
    if formats.manifest_path(split).is_file():
        return formats.read_manifest(split)
    from stages.sources.layouts import Source
    from stages.sources.manifest import build_manifest

    entry = SplitEntry.from_params(params, split)
    manifest, _ = build_manifest(Source(Path(entry.root), entry.layout, entry.subset or "val"))
    return manifest


def top5(
    split: str,
    spec: Any,
    manifest: pd.DataFrame,
    root: str,
    device: torch.device,
    cache: Path | None = None,
) -> np.ndarray:
    """(N, 5) top-5 classes of a model: from its predictions, else from `cache`, else computed
    here (and saved to `cache`)."""
    cached = None if cache is None else cache / f"{split}-{spec.name}-{len(manifest)}-top5.npy"
    if cached is not None and cached.is_file():
        return np.load(cached)
    if formats.predictions_path(split, spec.name).is_file():
        probs = formats.load_predictions(split, spec.name)
        return np.argsort(-np.nan_to_num(np.asarray(probs, np.float32), nan=-1), axis=1)[:, :5]
    model = create_model(spec, device=device)
    transform = eval_transform(data_config(model))
    out = np.full((len(manifest), 5), -1, np.int64)
    usable = np.flatnonzero(manifest["skip_reason"].isna().to_numpy())
    with torch.no_grad():
        for start in range(0, len(usable), 64):
            rows = usable[start : start + 64]
            x = torch.stack([transform(open_image(root, manifest.at[r, "path"])) for r in rows])
            out[rows] = model(x.to(device)).topk(5, dim=1).indices.cpu().numpy()
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, out)
    return out


def build_candidates(
    source: str,
    split: str,
    params: dict[str, Any],
    manifest: pd.DataFrame,
    specs: Sequence[Any],
    device: torch.device,
    cache: Path | None = None,
) -> pd.DataFrame:
    """Candidates in `exemptions.select_candidates`' form for the chosen source."""
    h3 = resolve_threshold(section(params, "decide", split)["h3"], len(specs))
    if source == "votes":
        votes = formats.read_table(formats.votes_path(split), what="votes")
        return exemptions.select_candidates(manifest, votes, h3=h3)
    root = SplitEntry.from_params(params, split).root
    labels = manifest["label"].to_numpy()
    tops = {s.name: top5(split, s, manifest, root, device, cache) for s in specs}
    hits = {name: (t == labels[:, None]).any(axis=1) for name, t in tops.items()}
    if source == "top5":
        chosen = {name: hits[name] & (tops[name][:, 0] != labels) for name in hits}
        models = [[n for n in hits if chosen[n][i]] for i in range(len(manifest))]
        votes = pd.DataFrame({"top5_misses": [int(bool(m)) for m in models]})
        h3 = 1
    else:
        models = [[n for n in hits if hits[n][i]] for i in range(len(manifest))]
        votes = pd.DataFrame({"top5_misses": [len(specs) - len(m) for m in models]})
    skipped = manifest["skip_reason"].notna()
    votes = votes.assign(
        image_id=manifest["image_id"],
        top5_hit_models=models,
        label=manifest["label"].where(~skipped),
        n_models=len(specs),
        inactive_reason=manifest["skip_reason"].map(lambda r: None if r is None else f"skip: {r}"),
    )
    return exemptions.select_candidates(manifest, votes, h3=h3)


def limit_pairs(candidates: pd.DataFrame, names: Sequence[str], limit: int | None) -> pd.DataFrame:
    """Keep the first `limit` pairs of each model (and the candidates left with any)."""
    if limit is None:
        return candidates
    seen = dict.fromkeys(names, 0)
    kept = []
    for models in candidates["models"]:
        keep = [m for m in models if seen[m] < limit]
        for m in keep:
            seen[m] += 1
        kept.append(keep)
    out = candidates.assign(models=kept)
    return out[out["models"].map(bool)].reset_index(drop=True)


def run_model(
    candidates: pd.DataFrame, root: str, spec: Any, config: exemptions.CamOptions, exhaustive: bool
) -> tuple[pd.DataFrame, cams.CamStats, float]:
    stats = cams.CamStats()
    config = dataclasses.replace(config, exhaustive=exhaustive, overlays=0)
    mine = candidates[candidates["models"].map(lambda m: spec.name in m)].reset_index(drop=True)
    mine = mine.assign(models=[[spec.name]] * len(mine))
    started = time.perf_counter()
    table = exemptions.explain_candidates(mine, root, [spec], config=config, stats=stats)
    return table.to_pandas(), stats, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="val")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--source", choices=["auto", "votes", "consensus", "top5"], default="auto")
    parser.add_argument("--limit", type=int, default=None, help="pairs per model")
    parser.add_argument("--models", default=None, help="comma-separated subset of predict.models")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder to keep computed top-5 arrays in between runs",
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=None,
        help="override explain.min_area (a stricter value makes Score-CAM decide more)",
    )
    parser.add_argument("--count-only", action="store_true", help="print the pairs and stop")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.min_area is not None:
        params["explain"]["min_area"] = args.min_area
    config = exemptions.CamOptions.from_params(params)
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if config.device == "auto"
        else torch.device(config.device)
    )
    source = args.source
    if source == "auto":
        source = "votes" if formats.votes_path(args.split).is_file() else "consensus"
    specs = model_specs(params)
    manifest = load_manifest(args.split, params)
    candidates = build_candidates(source, args.split, params, manifest, specs, device, args.cache)
    chosen = [s for s in specs if args.models is None or s.name in args.models.split(",")]
    candidates = limit_pairs(candidates, [s.name for s in specs], args.limit)
    root = SplitEntry.from_params(params, args.split).root
    print(
        f"source={source} device={device} threads={torch.get_num_threads()} "
        f"heat={config.rule.heat} min_area={config.rule.min_area} "
        f"candidates={len(candidates)} pairs={sum(map(len, candidates['models']))}",
        flush=True,
    )
    print(
        "pairs per model:",
        {s.name: sum(s.name in m for m in candidates["models"]) for s in specs},
        flush=True,
    )
    if args.count_only:
        return 0
    figures: dict[str, Any] = {
        "source": source,
        "device": str(device),
        "models": {},
        "min_area": config.rule.min_area,
        "heat": config.rule.heat,
    }
    header = (
        f"{'model':<22}{'pairs':>6}{'gradcam s':>11}{'gradcam++ s':>13}{'scorecam s':>12}"
        f"{'scorecam runs':>15}{'saved':>8}{'equal':>7}{'early-exit s':>14}"
    )
    lines = []
    for spec in chosen:
        full, full_stats, _ = run_model(candidates, root, spec, config, exhaustive=True)
        if full.empty:
            continue
        quick, quick_stats, quick_seconds = run_model(
            candidates, root, spec, config, exhaustive=False
        )
        rule = config.rule
        expected = [rule.exempts([r.gradcam, r.gradcampp, r.scorecam]) for r in full.itertuples()]
        equal = bool(
            (quick["exempted"].tolist() == expected) and quick["exempted"].equals(full["exempted"])
        )
        per = {
            m: full_stats.seconds.get(m, 0.0) / max(1, full_stats.calls.get(m, 0))
            for m in cams.METHODS
        }
        runs = quick_stats.calls.get("scorecam", 0)
        saved = 1.0 - runs / len(full)
        figures["models"][spec.name] = {
            "pairs": len(full),
            "seconds_per_pair": per,
            "scorecam_runs_early_exit": runs,
            "scorecam_saved": saved,
            "decisions_equal": equal,
            "early_exit_seconds": quick_seconds,
            "exempted": int(quick["exempted"].sum()),
        }
        lines.append(
            f"{spec.name:<22}{len(full):>6}{per['gradcam']:>11.3f}{per['gradcam++']:>13.3f}"
            f"{per['scorecam']:>12.2f}{runs:>15}{saved:>8.1%}{equal!s:>7}"
            f"{quick_seconds:>14.1f}"
        )
        print(lines[-1], flush=True)
    print(header, *lines, sep="\n")
    models = figures["models"].values()
    pairs = sum(m["pairs"] for m in models)
    figures["pairs"] = pairs
    figures["scorecam_saved"] = 1 - sum(m["scorecam_runs_early_exit"] for m in models) / max(
        1, pairs
    )
    figures["all_decisions_equal"] = all(m["decisions_equal"] for m in models)
    figures["early_exit_seconds"] = sum(m["early_exit_seconds"] for m in models)
    print(
        f"pairs={pairs} scorecam_saved={figures['scorecam_saved']:.1%} "
        f"decisions_equal={figures['all_decisions_equal']} "
        f"stage_seconds(early exit, these pairs)={figures['early_exit_seconds']:.1f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0 if figures["all_decisions_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
