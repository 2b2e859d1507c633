"""Training throughput of the `train` stage on this machine, 1 process vs N torchrun processes.

For each process count, runs the real stage (`python -m stages.train`, which re-runs itself under
`torchrun --standalone --nproc-per-node N` when N > 1; DDP with gloo on CPU, NCCL on GPU) on one
fold of a temporary split of --images demo images, and reads the epochs of its log.json:

- images/s: training images per second over all processes (epochs after the first, which pays
  for the DataLoader start and the first allocations), and per process;
- ratio: N-process images/s / 1-process images/s (2 processes on 2 cores: at most 2.0);
- wall: the whole stage, including torch/timm imports, the torchrun agent, the gloo rendezvous
  and the held-out prediction.

Usage:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py [--images 256] [--model resnet10t]
        [--input-size 64] [--batch-size 32] [--epochs 3] [--processes 1 2] [--workers 1]
        [--threads 1] [--device cpu]

The batch size is per process (as in `train.settings`), so N processes train on N x batch images
per update. On a CPU shared with other jobs the figures move with the load, which is printed with
them; every process runs `--threads` torch threads (torchrun's default is 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from stages.contracts import formats
from stages.contracts.params import load_params
from stages.sources.layouts import Source
from stages.sources.manifest import build_manifest

ROOT = Path.cwd()

DEMO = ROOT / "data/demo/imagenet-val"


def _project(folder: Path, args: argparse.Namespace, processes: int) -> None:
    """A split `bench` of the first --images demo images, 2 folds, the stage's params."""
    params = load_params(ROOT / "params.yaml")
    params["splits"]["bench"] = {
        "root": str(DEMO),
        "layout": "kaggle",
        "subset": "val",
        "labels": "none.parquet",
        "predictions": "out-of-fold",
    }
    params["models"][args.model] = {"spec": args.model, "pretrained": False}
    params["train"] = {
        "splits": ["bench"],
        "models": [args.model],
        "folds": [0, 1],
        "seed": 0,
        "launch": {"nproc_per_node": processes},
        "settings": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "input_size": args.input_size,
            "workers": args.workers,
            "threads": args.threads,
            "device": args.device,
            "checkpoint_every": 10**6,
        },
    }
    (folder / "data/manifests").mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    manifest, _ = build_manifest(Source(DEMO, "kaggle", "val"))
    formats.write_table(
        manifest.head(args.images),
        folder / "data/manifests/bench.parquet",
        schema=formats.MANIFEST_SCHEMA,
    )


def _run(folder: Path, command: Sequence[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run(list(command), cwd=folder, env=env, text=True, capture_output=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def measure(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    """One stage run with `processes` processes -> its throughput figures."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _project(folder, args, processes)
        _run(folder, [sys.executable, "-m", "stages.folds", "--split", "bench"])
        wall = _run(
            folder,
            [
                sys.executable,
                "-m",
                "stages.train",
                "--split",
                "bench",
                "--model",
                args.model,
                "--fold",
                "0",
                "--timing",
                str(folder / "timing.json"),
            ],
        )
        log = json.loads((folder / f"data/oof/bench/{args.model}/fold-0/log.json").read_text())
        timing = json.loads((folder / "timing.json").read_text())
    epochs = timing["epochs"][1:] or timing["epochs"]
    images = sum(e["images"] for e in epochs)
    seconds = sum(e["seconds"] for e in epochs)
    rate = images / seconds
    return {
        "processes": processes,
        "images_per_s": round(rate, 1),
        "images_per_s_per_process": round(rate / processes, 1),
        "train_rows": log["n_train"],
        "updates": log["steps"],
        "wall_s": round(wall, 1),
        "epochs": [e["images_per_s"] for e in timing["epochs"]],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    results = []
    for processes in args.processes:
        results.append(measure(args, processes))
        print(json.dumps(results[-1]), f"load average {os.getloadavg()[0]:.2f}", flush=True)
    base = results[0]["images_per_s"]
    print(
        f"\n{args.model} {args.input_size}px, batch {args.batch_size}/process, "
        f"{args.threads} thread(s) and {args.workers} loader worker(s) per process, "
        f"{args.device}, {os.cpu_count()} CPUs"
    )
    print("| processes | images/s | per process | ratio to first | stage wall s |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['processes']} | {r['images_per_s']} | {r['images_per_s_per_process']} | "
            f"{r['images_per_s'] / base:.2f} | {r['wall_s']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
