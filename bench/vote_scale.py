"""Vote at ImageNet-train scale: the streaming strategy next to cleanlab's exact and batched paths.

Synthetic float16 predictions the size of ILSVRC2012 train (1,281,167 x 1000, 2.56 GB per model,
class-conditional label flips) are written chunkwise as .npy files under a temp dir. Each strategy
then runs in its own process (so each peak RSS is its own) on the memory-mapped files, model by
model, as the vote stage does, and reports seconds per model and peak RSS split into anonymous
(heap) and file-backed (mapped predictions) memory, sampled from /proc/self/status every 0.1 s.
cleanlab's in-memory `exact` needs ~15 bytes per row and class at peak (~19 GB at full size), so it
runs on the first `--exact-rows` rows; the streaming strategy runs on the same rows too, and the
two flag lists (indices and order) are compared. Goals for streaming: peak anonymous RSS <= 2 GB,
total <= 6 GB, <= 2 min per model on 2 cores.

    PYTHONPATH=. .venv/bin/python bench/vote_scale.py --strategy streaming          # 1 model
    PYTHONPATH=. .venv/bin/python bench/vote_scale.py --strategy streaming --models 2 \
        --exact-rows 300000 --beside exact batched

(`PYTHONPATH=.` makes a checkout's `stages` win over an installed copy; with `pip install -e .` of
this checkout it is not needed.)

Demo: the five demo models' real predictions on the demo images (computed once, cached under
/tmp), then per model: exact (find_label_issues) vs batched (LabelInspector) vs streaming flags.

    PYTHONPATH=. .venv/bin/python bench/vote_scale.py --demo \
        [--demo-root ../shared/demo/imagenet-val-1300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stages.contracts import formats
from stages.method.confident import ConfidentConfig
from stages.method.votes import model_votes

ROOT = Path(__file__).resolve().parents[1]
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

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def flag_quality(flagged: np.ndarray, labels: np.ndarray, true: np.ndarray) -> str:
    """Precision/recall of the flags against the synthetic flips (label != true class)."""
    wrong = labels != true
    hits = int(wrong[flagged].sum())
    return (
        f"precision {hits / max(len(flagged), 1):.3f} recall {hits / max(int(wrong.sum()), 1):.3f}"
    )


def write_npy_chunked(
    path: Path,
    shape: tuple[int, int],
    dtype: type[np.floating[Any]],
    chunks: Iterable[npt.NDArray[np.floating[Any]]],
) -> None:
    """Write a .npy header, then the chunks' bytes: never more than one chunk in memory."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle,
            {
                "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                "fortran_order": False,
                "shape": shape,
            },
        )
        for chunk in chunks:
            handle.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())


def _model_chunks(
    rng: np.random.Generator,
    true: npt.NDArray[np.int32],
    classes: int,
    confusable: npt.NDArray[np.int64],
    chunk: int,
) -> Iterator[npt.NDArray[np.float32]]:
    """One synthetic model's softmax rows over `true`, `chunk` rows at a time, drawn from `rng`."""
    rows = len(true)
    for start in range(0, rows, chunk):
        t = true[start : start + chunk]
        n = len(t)
        logits = rng.standard_normal((n, classes), dtype=np.float32) * 1.5
        wrong = rng.random(n) >= 0.8
        near = (t + rng.choice(confusable, n)) % classes
        far = rng.integers(0, classes, n)
        target = np.where(wrong, np.where(rng.random(n) < 0.7, near, far), t)
        logits[np.arange(n), target] += rng.uniform(4, 12, n).astype(np.float32)
        logits[np.arange(n), t] += rng.uniform(0, 4, n).astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        yield logits


def generate(
    folder: Path, rows: int, models: int, classes: int, seed: int, noise: float, chunk: int
) -> tuple[Path, list[Path]]:
    """labels.npy (int32) and model_<m>.npy (float16 softmax), chunk by chunk, seeded.

    Class-conditional noise: class c is mislabelled as one of its confusable classes c+1, c+2,
    c+17 at a per-class rate in [0, 2 * noise]. Each model is right on ~80 % of rows; otherwise
    it prefers a confusable class (70 %) or any class."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, rows, dtype=np.int32)
    confusable = np.array([1, 2, 17])
    rate = rng.uniform(0, 2 * noise, classes)
    labels = true.copy()
    flip = rng.random(rows) < rate[true]
    labels[flip] = (true[flip] + rng.choice(confusable, int(flip.sum()))) % classes
    np.save(folder / "labels.npy", labels)
    np.save(folder / "true.npy", true)
    paths = []
    for m in range(models):
        path = folder / f"model_{m}.npy"
        started = time.perf_counter()
        model_rng = np.random.default_rng([seed, m])
        softmax = _model_chunks(model_rng, true, classes, confusable, chunk)
        write_npy_chunked(path, (rows, classes), np.float16, softmax)
        print(
            f"generated {path.name}: {path.stat().st_size / 1e9:.2f} GB in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        paths.append(path)
    return folder / "labels.npy", paths


def measure(args: argparse.Namespace) -> None:
    """In a fresh process: one strategy over the first `--rows` rows of every model file in
    `--dir`; prints one JSON line (seconds per model, peaks) and saves model 0's flags."""
    folder = Path(args.dir)
    labels, true = (
        np.load(folder / "labels.npy")[: args.rows],
        np.load(folder / "true.npy")[: args.rows],
    )
    config = ConfidentConfig(
        fn=args.fn, fn_mode=args.fn_mode, strategy=args.measure, chunk_rows=args.chunk_rows
    )
    seconds, flagged = [], []
    paths = sorted(folder.glob("model_*.npy"))
    with PeakSampler() as sampler:
        for path in paths:
            started = time.perf_counter()
            result = model_votes(
                labels, np.load(path, mmap_mode="r")[: args.rows], config=config, model=path.stem
            )
            seconds.append(time.perf_counter() - started)
            flagged.append(len(result.flagged))
            if path == paths[0]:
                np.save(folder / f"flags-{args.measure}-{args.rows}.npy", result.flagged)
                quality = flag_quality(result.flagged, labels, true)
    print(
        json.dumps(
            {
                "strategy": args.measure,
                "rows": args.rows,
                "models": len(paths),
                "seconds_per_model": [round(x, 1) for x in seconds],
                "flagged": flagged,
                "quality": quality,
                "peak_anon_gb": sampler.peaks["RssAnon"],
                "peak_file_gb": sampler.peaks["RssFile"],
                "peak_total_gb": rss_gb()["VmHWM"],
            }
        ),
        flush=True,
    )


def run_measure(folder: Path, strategy: str, rows: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure",
        strategy,
        "--dir",
        str(folder),
        "--rows",
        str(rows),
        "--fn",
        str(args.fn),
        "--fn-mode",
        args.fn_mode,
        "--chunk-rows",
        str(args.chunk_rows),
    ]
    print(f"running {strategy} on {rows} rows ...", flush=True)
    done = subprocess.run(command, check=True, text=True, stdout=subprocess.PIPE)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {result}", flush=True)
    return result


def scale(args: argparse.Namespace) -> None:
    folder = (
        Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="vote-scale-", dir="/tmp"))
    )
    folder.mkdir(parents=True, exist_ok=True)
    per_model = args.rows * args.classes * 2 / 1e9
    need = args.rows * args.classes * 2 * args.models / 1e9
    print(
        f"{args.models} model(s) x {args.rows} rows x {args.classes} classes float16: "
        f"{need:.2f} GB of disk under {folder} ({per_model:.2f} GB per model)",
        flush=True,
    )
    try:
        if not (folder / "labels.npy").is_file():
            generate(
                folder, args.rows, args.models, args.classes, args.seed, args.noise, args.chunk_rows
            )
        exact_rows = min(args.exact_rows, args.rows)
        runs = [run_measure(folder, args.strategy, args.rows, args)]
        for other in args.beside:
            runs.append(
                run_measure(folder, other, exact_rows if other == "exact" else args.rows, args)
            )
        check = {}
        if args.strategy != "exact" and "exact" in args.beside:
            if exact_rows != args.rows:
                runs.append(run_measure(folder, args.strategy, exact_rows, args))
            a = np.load(folder / f"flags-{args.strategy}-{exact_rows}.npy")
            b = np.load(folder / f"flags-exact-{exact_rows}.npy")
            check = {
                "rows": exact_rows,
                "flags": len(b),
                "same_indices_and_order": bool(np.array_equal(a, b)),
                "same_set": set(a.tolist()) == set(b.tolist()),
            }
        table(runs, check, args)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def table(runs: list[dict], check: dict, args: argparse.Namespace) -> None:
    """The README table: one line per strategy run."""
    print(
        f"\n{args.classes} classes float16, fn={args.fn}, chunk_rows={args.chunk_rows}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print("| strategy | rows | s per model | peak anon GB | peak file GB | peak total GB | flags |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(
            f"| {run['strategy']} | {run['rows']:,} | "
            f"{', '.join(str(x) for x in run['seconds_per_model'])} | {run['peak_anon_gb']:.2f} | "
            f"{run['peak_file_gb']:.2f} | {run['peak_total_gb']:.2f} | "
            f"{', '.join(f'{x:,}' for x in run['flagged'])} |"
        )
    if check:
        print(
            f"\nstreaming vs cleanlab exact on the first {check['rows']:,} rows: "
            f"{check['flags']:,} flags, same indices in the same order: "
            f"{check['same_indices_and_order']}"
        )


def demo_predictions(root: Path, cache: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The demo manifest's labels and each demo model's softmax (cached as .npy under `cache`)."""
    import torch

    from stages.contracts.params import load_params
    from stages.modelling.models import create_model, data_config, eval_transform
    from stages.modelling.specs import model_specs
    from stages.sources.images import open_image
    from stages.sources.layouts import Source
    from stages.sources.manifest import build_manifest

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
                    batch = [
                        transform(open_image(root, p)) for p in manifest["path"][start : start + 64]
                    ]
                    probs.append(torch.softmax(model(torch.stack(batch)), dim=1).numpy())
            formats.write_npy(np.concatenate(probs), path)
            print(
                f"predicted {spec.name} on {len(manifest)} images in "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
        out[spec.name] = np.load(path, mmap_mode="r")
    return manifest["label"].to_numpy(), out


def demo(args: argparse.Namespace) -> None:
    root = Path(args.demo_root).resolve()
    labels, predictions = demo_predictions(root, Path(args.cache) / root.name)
    print(
        f"{len(labels)} images, {len(np.unique(labels))} classes "
        f"({int((np.bincount(labels) == 1).sum())} with a single image)"
    )
    print(
        f"{'model':22} {'exact':>5} {'stream=':>7} {'batched':>7} {'both':>5} {'jaccard':>7}  "
        f"fn=0.9 cleanlab / ranked"
    )
    for name, probs in predictions.items():
        exact = model_votes(labels, probs, config=ConfidentConfig(strategy="exact"), model=name)
        streaming = model_votes(
            labels, probs, config=ConfidentConfig(strategy="streaming"), model=name
        )
        batched = model_votes(labels, probs, config=ConfidentConfig(strategy="batched"), model=name)
        e, b = set(exact.flagged.tolist()), set(batched.flagged.tolist())
        jaccard = len(e & b) / max(len(e | b), 1)
        fn_c = model_votes(
            labels, probs, config=ConfidentConfig(strategy="exact", fn=0.9), model=name
        )
        fn_r = model_votes(
            labels,
            probs,
            config=ConfidentConfig(strategy="exact", fn=0.9, fn_mode="ranked"),
            model=name,
        )
        same = np.array_equal(exact.flagged, streaming.flagged)
        print(
            f"{name:22} {len(e):5d} {same!s:>7} {len(b):7d} {len(e & b):5d} {jaccard:7.3f}  "
            f"{len(fn_c.flagged)} / {len(fn_r.flagged)}"
        )


STRATEGIES = ["auto", "exact", "streaming", "batched"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=TRAIN_ROWS)
    parser.add_argument("--models", type=int, default=1)
    parser.add_argument("--classes", type=int, default=formats.NUM_CLASSES)
    parser.add_argument("--strategy", default="streaming", choices=STRATEGIES)
    parser.add_argument(
        "--beside",
        nargs="*",
        default=["exact", "batched"],
        choices=STRATEGIES,
        help="strategies measured in the same run for comparison",
    )
    parser.add_argument(
        "--exact-rows",
        type=int,
        default=300_000,
        help="rows for cleanlab's in-memory exact (~15 bytes per row and class)",
    )
    parser.add_argument("--fn", type=float, default=1.0)
    parser.add_argument("--fn-mode", default="cleanlab", choices=["cleanlab", "ranked"])
    parser.add_argument("--chunk-rows", type=int, default=ConfidentConfig.chunk_rows)
    parser.add_argument("--noise", type=float, default=0.05, help="mean fraction of labels flipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dir",
        help="where to write the synthetic files (default: a new /tmp dir);"
        " files already there are reused",
    )
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    parser.add_argument("--measure", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--demo", action="store_true", help="exact vs batched on the real demo")
    parser.add_argument("--demo-root", default=str(ROOT / "data/demo/imagenet-val"))
    parser.add_argument("--cache", default="/tmp/imagenet-clean-vote-demo")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.measure:
        measure(args)
    elif args.demo:
        demo(args)
    else:
        scale(args)


if __name__ == "__main__":
    main()
