"""Speed of the predict stage on this machine, side by side in one run, for the demo ensemble:

(a) input path: end-to-end images/s of the stage for one model (`predict_split`: model load, the
    DataLoader decoding with `predict.workers` workers, forward, shards, assembly, sidecar) vs the
    images/s of the bare forward (+ softmax) on pre-decoded, pre-normalised tensors in the same
    batches. Goal: ratio >= 0.85.
(b) one-pass ensemble (`predict_split` with every model; each image decoded once, one resize per
    preprocessing group) vs the sum of the per-model runs of (a). Goal: ratio <= 0.8.
    Also checks the one-pass files are byte-identical to the per-model ones.
(c) peak RSS of this process (stage runs only, measured before the bare-forward tensors are built)
    and of its DataLoader worker processes.
(d) `predict.embeddings`: the one-pass ensemble again with every output's pooled features
    written from the same forward pass, vs (b) (the two alternate twice, each keeps its faster
    run): added wall and CPU time, and added bytes (features vs probabilities files); checks the
    probabilities are byte-identical either way.

Usage (the images are decoded from --root, a Kaggle-layout folder; the manifest is built with
stages.sources.manifest.build_manifest):

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/predict.py \
        --root ../shared/demo/imagenet-val-1300 [--limit 500] [--models a b] [--batch-size 64] \
        [--workers 2] [--device auto] [--threads 1]

On a shared CPU the figures move with the other load: the load average is printed with them, and
(b) is also given in CPU seconds. On CPU the forward passes dominate (decode + resize of a 227x227
demo image is ~1 ms, a MobileNet-V2 forward ~50 ms), so sharing the decode cannot save much there;
the one-pass gain is a GPU/large-image effect, where decoding is the bottleneck. On a CPU shared
with other jobs, `--threads 1` avoids multi-threaded ops stalling on descheduled threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from stages.contracts.params import load_params
from stages.modelling.models import resolve_device
from stages.modelling.predict_config import PredictConfig, PredictOptions
from stages.modelling.predict_data import plan_batches
from stages.modelling.predictor import (
    cpu_threads,
    load_member,
    predict_split,
    softmax_and_features,
    softmax_batch,
)
from stages.modelling.specs import ModelSpec, model_specs
from stages.sources.images import open_image
from stages.sources.layouts import Source
from stages.sources.manifest import build_manifest
from stages.sources.views import DEFAULT_MARGIN


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the DataLoader workers)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed_split(
    manifest: pd.DataFrame,
    specs: Sequence[ModelSpec],
    config: PredictConfig,
    out_dir: Path,
    *,
    embeddings: bool = False,
) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `predict_split` run (with features in
    `out_dir/features` when `embeddings`); CPU time barely moves with the other jobs on a shared
    machine, wall time does."""
    names = [f"{s.name}.full" for s in specs]
    options = dataclasses.replace(config.options, embeddings=embeddings)
    start, cpu = time.perf_counter(), _cpu_s()
    predict_split(
        dataclasses.replace(config, specs=tuple(specs), options=options),
        manifest,
        {name: out_dir / f"{name}.npy" for name in names},
        features={name: out_dir / "features" / f"{name}.npy" for name in names}
        if embeddings
        else None,
    )
    return time.perf_counter() - start, _cpu_s() - cpu


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.npy"))


def _bare_forward_s(
    manifest: pd.DataFrame, root: Path, specs: Sequence[ModelSpec], config: PredictOptions
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of each model's forward + softmax on pre-decoded inputs, in the stage's batches,
    without and with its features kept (`softmax_and_features`)."""
    device = resolve_device(config.device)
    usable = manifest["skip_reason"].isna().to_numpy()
    batches = plan_batches(usable, [0], shard_size=len(manifest), batch_size=config.batch_size)
    members = [load_member(s, device=device, channels_last=config.channels_last) for s in specs]
    print(f"  bare forwards of {len(members)} models on pre-decoded inputs ...", flush=True)
    seconds: dict[str, float] = {}
    with_features: dict[str, float] = {}
    inputs: dict[str, list[torch.Tensor]] = {}
    for member in members:
        transform = member.transform
        if transform.key not in inputs:
            inputs.clear()  # one group's tensors at a time
            images = [transform.worker_tensor(open_image(root, p)) for p in manifest["path"]]
            inputs[transform.key] = [
                transform.to_device(
                    torch.stack([images[i] for i in rows]),
                    device,
                    channels_last=config.channels_last,
                )
                for rows in batches
            ]
        with torch.inference_mode():
            softmax_batch(member, inputs[transform.key][0], config=config)  # warm-up, not timed
            if device.type == "cuda":
                torch.cuda.synchronize()
            for forward, into in ((softmax_batch, seconds), (softmax_and_features, with_features)):
                start = time.perf_counter()
                for batch in inputs[transform.key]:
                    forward(member, batch, config=config)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                into[member.name] = time.perf_counter() - start
    return seconds, with_features


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/demo/imagenet-val", help="Kaggle-layout split root")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", nargs="+", default=None, help="default: predict.models")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: predict.threads, else torch's default)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    params = load_params(args.params)
    overrides = {
        k: v
        for k, v in {
            "batch_size": args.batch_size,
            "workers": args.workers,
            "device": args.device,
            "threads": args.threads,
        }.items()
        if v is not None
    }
    params["predict"].update(overrides)
    options = PredictOptions.from_params(params)
    specs = model_specs(params, args.models)
    root = Path(args.root)
    config = PredictConfig("bench", str(root), tuple(specs), ("full",), DEFAULT_MARGIN, options)
    manifest, _ = build_manifest(Source(root, "kaggle", "val"))
    manifest = manifest.head(args.limit).reset_index(drop=True) if args.limit else manifest
    n = int(manifest["skip_reason"].isna().sum())
    for path in manifest["path"]:  # warm the page cache so no run pays the first disk read
        (root / path).read_bytes()
    print(
        f"predict bench: {n} images from {root}, models {[s.name for s in specs]}, "
        f"batch {options.batch_size}, workers {options.workers}, device "
        f"{resolve_device(options.device)}, "
        f"torch threads {options.threads or torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared machine)"
    )

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        tmp_path = Path(tmp)
        # (b) and (d) alternate twice and keep each one's faster run: the first pays warm-up
        runs = [
            _timed_split(
                manifest, specs, config, tmp_path / folder, embeddings=folder != "ensemble"
            )
            for folder in ("ensemble", "features", "ensemble", "features")
        ]
        ensemble_s, ensemble_cpu = min(runs[0::2])
        features_s, features_cpu = min(runs[1::2])
        single = {s.name: _timed_split(manifest, [s], config, tmp_path / "single") for s in specs}
        single_s = {name: wall for name, (wall, _) in single.items()}
        single_cpu = sum(cpu for _, cpu in single.values())
        identical = all(
            (tmp_path / "ensemble" / f"{s.name}.full{x}").read_bytes()
            == (tmp_path / other / f"{s.name}.full{x}").read_bytes()
            for s in specs
            for x in (".npy", ".json")
            for other in ("single", "features")
        )
        probs_bytes = _bytes(tmp_path / "ensemble")
        features_bytes = _bytes(tmp_path / "features" / "features")
    rss_self, rss_workers = _peak_mb(resource.RUSAGE_SELF), _peak_mb(resource.RUSAGE_CHILDREN)
    with cpu_threads(options.threads):
        bare_s, bare_features_s = _bare_forward_s(manifest, root, specs, options)

    print("\n(a) input path: end-to-end vs bare forward (goal >= 0.85)")
    print(f"{'model':<22}{'e2e img/s':>11}{'bare img/s':>12}{'ratio':>8}")
    for spec in specs:
        e2e, bare = n / single_s[spec.name], n / bare_s[spec.name]
        print(f"{spec.name:<22}{e2e:>11.1f}{bare:>12.1f}{e2e / bare:>8.2f}")
    total_single, total_bare = sum(single_s.values()), sum(bare_s.values())
    print(
        f"{'all models':<22}{n * len(specs) / total_single:>11.1f}"
        f"{n * len(specs) / total_bare:>12.1f}{total_bare / total_single:>8.2f}"
    )
    print(
        f"\n(b) one-pass ensemble {ensemble_s:.1f} s vs sum of per-model runs {total_single:.1f} s:"
        f" ratio {ensemble_s / total_single:.2f} (goal <= 0.8); CPU time {ensemble_cpu:.1f} s vs "
        f"{single_cpu:.1f} s: ratio {ensemble_cpu / single_cpu:.2f}; bare forwards / ensemble "
        f"{total_bare / ensemble_s:.2f}; files byte-identical: {identical}"
    )
    print(
        f"\n(c) peak RSS: stage process {rss_self:.0f} MB, largest DataLoader worker "
        f"{rss_workers:.0f} MB (then {_peak_mb(resource.RUSAGE_SELF):.0f} MB with the bench's "
        f"pre-decoded tensors); load average now {os.getloadavg()[0]:.2f}"
    )
    print(
        f"\n(d) predict.embeddings: one-pass ensemble with features {features_s:.1f} s vs "
        f"{ensemble_s:.1f} s without: {100 * (features_s / ensemble_s - 1):+.1f} % wall, "
        f"{100 * (features_cpu / ensemble_cpu - 1):+.1f} % CPU; bytes {features_bytes:,} of "
        f"features beside {probs_bytes:,} of probabilities "
        f"(+{100 * features_bytes / probs_bytes:.0f} %, {features_bytes / n / len(specs):,.0f} B "
        f"per image per output); probabilities byte-identical: {identical}; bare forwards "
        f"with features / without {sum(bare_features_s.values()) / total_bare:.3f}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
