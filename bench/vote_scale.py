"""Vote at ImageNet-train scale, and exact vs batched flags on the real demo.

Scale (default): synthetic float16 predictions the size of ILSVRC2012 train (1,281,167 x 1000,
2.56 GB per model) are written chunkwise as .npy files under a temp dir, then memory-mapped and
voted on model by model as the stage does. Prints seconds per model and peak RSS. Goals:
peak RSS <= 8 GB and <= 3 min per model on 2 cores.

    .venv/bin/python bench/vote_scale.py --models 1            # one model, full size
    .venv/bin/python bench/vote_scale.py --models 8            # 20.5 GB of disk
    .venv/bin/python bench/vote_scale.py --rows 100000 --models 2 --strategy exact

Demo: the five demo models' real predictions on the demo images (computed once, cached under
/tmp), then per model: exact (find_label_issues) vs batched (LabelInspector) flags.

    .venv/bin/python bench/vote_scale.py --demo [--demo-root ../shared/demo/imagenet-val-1300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stages import formats  # noqa: E402
from stages.vote import VoteConfig, model_votes, vote_columns  # noqa: E402

TRAIN_ROWS = 1_281_167


def rss_gb() -> dict[str, float]:
    """Current and peak resident set size (GB), with the anonymous/file-backed split."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 1e6, 3)
    fields["ru_maxrss"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)
    return fields


class PeakSampler:
    """Samples RssAnon/RssFile every 0.1 s in a thread: their peaks tell heap from mapped file."""

    def __init__(self) -> None:
        self.peaks = {"RssAnon": 0.0, "RssFile": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = rss_gb()
            for key in self.peaks:
                self.peaks[key] = max(self.peaks[key], now[key])

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def flag_quality(flagged: np.ndarray, labels: np.ndarray, true: np.ndarray) -> str:
    """Precision/recall of the flags against the synthetic flips (label != true class)."""
    wrong = labels != true
    hits = int(wrong[flagged].sum())
    return f"precision {hits / max(len(flagged), 1):.3f} recall {hits / max(int(wrong.sum()), 1):.3f}"


def write_npy_chunked(path: Path, shape: tuple[int, int], dtype: np.dtype, chunks) -> None:
    """Write a .npy header, then the chunks' bytes: never more than one chunk in memory."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": shape})
        for chunk in chunks:
            handle.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())


def generate(folder: Path, rows: int, models: int, classes: int, seed: int, noise: float,
             chunk: int) -> tuple[Path, list[Path]]:
    """labels.npy (int32) and model_<m>.npy (float16 softmax), chunk by chunk, seeded."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, rows, dtype=np.int32)
    labels = true.copy()
    flip = rng.random(rows) < noise
    labels[flip] = rng.integers(0, classes, int(flip.sum()), dtype=np.int32)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "true.npy", true)
    paths = []
    for m in range(models):
        path = folder / f"model_{m}.npy"
        started = time.perf_counter()
        model_rng = np.random.default_rng([seed, m])

        def chunks():
            for start in range(0, rows, chunk):
                t = true[start:start + chunk]
                logits = model_rng.standard_normal((len(t), classes), dtype=np.float32) * 1.5
                right = model_rng.random(len(t)) < 0.8  # the model is right on ~80 % of rows
                target = np.where(right, t, model_rng.integers(0, classes, len(t)))
                logits[np.arange(len(t)), target] += model_rng.uniform(4, 12, len(t)).astype(np.float32)
                logits -= logits.max(axis=1, keepdims=True)
                np.exp(logits, out=logits)
                logits /= logits.sum(axis=1, keepdims=True)
                yield logits

        write_npy_chunked(path, (rows, classes), np.float16, chunks())
        print(f"generated {path.name}: {path.stat().st_size / 1e9:.2f} GB in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        paths.append(path)
    return folder / "labels.npy", paths


def scale(args: argparse.Namespace) -> None:
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="vote-scale-", dir="/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    need = args.rows * args.classes * 2 * args.models / 1e9
    print(f"{args.models} model(s) x {args.rows} rows x {args.classes} classes float16: "
          f"{need:.2f} GB of disk under {folder} ({args.rows * args.classes * 2 / 1e9:.2f} GB per model)",
          flush=True)
    try:
        labels_path, paths = generate(folder, args.rows, args.models, args.classes, args.seed,
                                      args.noise, args.chunk_rows)
        print(f"after generation: {rss_gb()}", flush=True)
        labels, true = np.load(labels_path), np.load(folder / "true.npy")
        config = VoteConfig(fn=args.fn, strategy=args.strategy, chunk_rows=args.chunk_rows)
        results, seconds = [], []
        with PeakSampler() as sampler:
            for path in paths:
                started = time.perf_counter()
                result = model_votes(labels, np.load(path, mmap_mode="r"), config=config,
                                     model=path.stem)
                seconds.append(time.perf_counter() - started)
                results.append(result)
                print(f"{path.stem}: {result.strategy}, {len(result.flagged)} flagged "
                      f"({flag_quality(result.flagged, labels, true)}), "
                      f"{int(result.top5_hit.sum())} top-5 hits, {seconds[-1]:.1f} s; rss {rss_gb()}",
                      flush=True)
                if args.compare:
                    compare(result, labels, true, path, config)
        started = time.perf_counter()
        table = vote_columns(results, len(labels))
        formats.write_table(table, folder / "votes.parquet")
        print(f"vote columns + parquet: {time.perf_counter() - started:.1f} s, "
              f"{(folder / 'votes.parquet').stat().st_size / 1e6:.1f} MB", flush=True)
        print(json.dumps({"rows": args.rows, "models": args.models, "strategy": results[0].strategy,
                          "seconds_per_model": [round(s, 1) for s in seconds],
                          "mean_seconds_per_model": round(float(np.mean(seconds)), 1),
                          "peak_rss_gb": rss_gb()["VmHWM"], "rss": rss_gb(),
                          "peak_anon_gb": sampler.peaks["RssAnon"],
                          "peak_file_gb": sampler.peaks["RssFile"],
                          "disk_gb": round(need, 2)}, indent=1))
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def compare(result, labels: np.ndarray, true: np.ndarray, path: Path, config: VoteConfig) -> None:
    """Run the other strategy on the same file and print how the flags differ."""
    other = "batched" if result.strategy == "exact" else "exact"
    started = time.perf_counter()
    second = model_votes(labels, np.load(path, mmap_mode="r"), model=path.stem,
                         config=VoteConfig(fn=config.fn, strategy=other, chunk_rows=config.chunk_rows))
    a, b = set(result.flagged.tolist()), set(second.flagged.tolist())
    print(f"  {other}: {len(b)} flagged ({flag_quality(second.flagged, labels, true)}), "
          f"{time.perf_counter() - started:.1f} s; {result.strategy} vs {other}: both {len(a & b)}, "
          f"jaccard {len(a & b) / max(len(a | b), 1):.3f}", flush=True)


def demo_predictions(root: Path, cache: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The demo manifest's labels and each demo model's softmax (cached as .npy under `cache`)."""
    import torch

    from stages.images import open_image
    from stages.ingest import build_manifest
    from stages.layouts import Source
    from stages.models import create_model, data_config, eval_transform, model_specs
    from stages.params import load_params

    manifest, _ = build_manifest(Source(root, "kaggle", "val"))
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec in model_specs(load_params(ROOT / "params.yaml")):
        path = cache / f"{spec.name}.npy"
        if not path.is_file():
            started = time.perf_counter()
            model = create_model(spec)
            transform = eval_transform(data_config(model))
            probs = []
            with torch.no_grad():
                for start in range(0, len(manifest), 64):
                    batch = [transform(open_image(root, p)) for p in manifest["path"][start:start + 64]]
                    probs.append(torch.softmax(model(torch.stack(batch)), dim=1).numpy())
            formats.write_npy(np.concatenate(probs), path)
            print(f"predicted {spec.name} on {len(manifest)} images in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        out[spec.name] = np.load(path, mmap_mode="r")
    return manifest["label"].to_numpy(), out


def demo(args: argparse.Namespace) -> None:
    root = Path(args.demo_root).resolve()
    labels, predictions = demo_predictions(root, Path(args.cache) / root.name)
    print(f"{len(labels)} images, {len(np.unique(labels))} classes "
          f"({int((np.bincount(labels) == 1).sum())} with a single image)")
    print(f"{'model':22} {'exact':>5} {'batched':>7} {'both':>5} {'jaccard':>7}  "
          f"fn=0.9 cleanlab / ranked")
    for name, probs in predictions.items():
        exact = model_votes(labels, probs, config=VoteConfig(strategy="exact"), model=name)
        batched = model_votes(labels, probs, config=VoteConfig(strategy="batched"), model=name)
        e, b = set(exact.flagged.tolist()), set(batched.flagged.tolist())
        jaccard = len(e & b) / max(len(e | b), 1)
        fn_c = model_votes(labels, probs, config=VoteConfig(strategy="exact", fn=0.9), model=name)
        fn_r = model_votes(labels, probs, config=VoteConfig(strategy="exact", fn=0.9,
                                                            fn_mode="ranked"), model=name)
        print(f"{name:22} {len(e):5d} {len(b):7d} {len(e & b):5d} {jaccard:7.3f}  "
              f"{len(fn_c.flagged)} / {len(fn_r.flagged)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=TRAIN_ROWS)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--classes", type=int, default=formats.NUM_CLASSES)
    parser.add_argument("--strategy", default="auto", choices=["auto", "exact", "batched"])
    parser.add_argument("--fn", type=float, default=1.0)
    parser.add_argument("--chunk-rows", type=int, default=VoteConfig.chunk_rows)
    parser.add_argument("--noise", type=float, default=0.05, help="fraction of labels flipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", help="where to write the synthetic files (default: a new /tmp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    parser.add_argument("--compare", action="store_true",
                        help="also run the other strategy on each model and compare the flags")
    parser.add_argument("--demo", action="store_true", help="exact vs batched on the real demo")
    parser.add_argument("--demo-root", default=str(ROOT / "data/demo/imagenet-val"))
    parser.add_argument("--cache", default="/tmp/imagenet-clean-vote-demo")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    demo(args) if args.demo else scale(args)


if __name__ == "__main__":
    main()
