"""The whole pipeline at ImageNet scale on one machine: every stage and DVC's own checks, timed and
their peak memory sampled, at several sizes, with the growth ratio and a straight-line
extrapolation to 1,331,167 images (ILSVRC2012 train + val).

For each `--rows N` a DVC project is built under `--work`: a Kaggle-layout split of N images
(hard links to the 500 demo images, cycled under new ids `ILSVRC2012_val_00000001..N`, each with
its source image's labels and boxes in LOC_val_solution.csv), the five demo models' real
predictions tiled to N rows and brought in with `import-predictions` (predict itself is model work
for a GPU and is not measured), and the demo's human reference tiled the same way. Then, each
under `dvc repro -s <stage>` in its own process tree:

    ingest (cold: every image read)     ingest (warm: what every `dvc repro` pays from then on)
    import-predictions x 5              vote        explain (plan only, see below)
    decide      evaluate      review    publish
    dvc status (clean project)          dvc repro (nothing changed)

vote runs its streaming strategy at every size (`vote.exact_max_rows: 1`), the one it uses at
1.33M (above the default 200,000 active rows; cleanlab's in-memory `exact` needs ~15 bytes per
row and class, see docs/vote.md), so that the line through the sizes is the one 1.33M follows.
explain's heatmaps cost ~1.1 s per (image, model) pair on CPU (model work for a GPU); by default
the bench runs the stage with `explain.max_pairs: 0`, which reads the manifest and votes, selects
the candidates, prints its plan and stops, and then records an empty CAM table with `dvc commit`
(`--explain run` computes the heatmaps instead). Peak memory is sampled every 0.1 s over the
stage's process tree (pool workers included; `dvc` itself left out for stages, counted for
`dvc status`): `own` = anonymous RSS (heap), `mapped` = file-backed RSS (memory-mapped files and
page cache of the files it maps). `dvc status` is also run with the image folder moved away: the
same answer means DVC does not look at the images.

    HF_HUB_OFFLINE=1 PYTHONPATH=. PATH=.venv/bin:$PATH .venv/bin/python bench/pipeline_scale.py \\
        --rows 10000 50000 [--work /tmp/pipeline-scale] [--json out.json] [--explain plan|run]

Needs `make repro` first (the demo's manifest and predictions under data/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stages.contracts import formats
from stages.contracts.params import load_params

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1_331_167
DEMO = ROOT / "data/demo/imagenet-val"
PROJECT_FILES = [
    "stages",
    "pyproject.toml",
    "iterations",
    "data/table_a1_merges.csv",
    "data/overrides",
    "data/demo/models",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
]
BENCH_STAGES = ("ingest", "predict", "vote", "explain", "decide", "evaluate", "review", "publish")


# ----------------------------------------------------------------------------- memory


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(c) for c in text.split()]
    except OSError:
        pass
    return found


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        current = todo.pop()
        seen.append(current)
        todo += _children(current)
    return seen


def _rss(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile) in kB of one process (0, 0 once it has gone)."""
    fields = {"RssAnon": 0, "RssFile": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in fields:
                fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields["RssAnon"], fields["RssFile"]


def measure(command: list[str], cwd: Path, *, stage_only: bool) -> dict[str, Any]:
    """Run `command`; wall seconds and the peak own/mapped GB of its process tree (without the
    root process when `stage_only`: `dvc repro` runs the stage as its child)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = {"own": 0, "mapped": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            pids = _tree(process.pid)
            if stage_only:
                pids = pids[1:]
            sizes = [_rss(p) for p in pids]
            peak["own"] = max(peak["own"], sum(s[0] for s in sizes))
            peak["mapped"] = max(peak["mapped"], sum(s[1] for s in sizes))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = process.communicate()
    done.set()
    thread.join()
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "own_gb": round(peak["own"] / 1e6, 3),
        "mapped_gb": round(peak["mapped"] / 1e6, 3),
        "rc": process.returncode,
        "output": output,
    }


# ----------------------------------------------------------------------------- the project


def build_project(folder: Path, rows: int, explain: str) -> Path:
    """A git + DVC project of the pipeline (val split only) over a tiled split of `rows` images."""
    if folder.exists():
        shutil.rmtree(folder)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, folder / name)
    demo = formats.read_manifest("val", path=ROOT / formats.manifest_path("val"))
    solution = pd.read_csv(DEMO / "LOC_val_solution.csv").set_index("ImageId")["PredictionString"]
    split = folder / "data/split"
    images = split / "ILSVRC/Data/CLS-LOC/val"
    images.mkdir(parents=True)
    shutil.copy(DEMO / "LOC_synset_mapping.txt", split)
    source_ids = demo["image_id"].to_numpy(dtype=object)
    source_paths = demo["path"].to_numpy(dtype=object)
    ids = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(rows)]
    lines = ["ImageId,PredictionString"]
    for i, image_id in enumerate(ids):
        k = i % len(demo)
        os.link(DEMO / source_paths[k], images / f"{image_id}.JPEG")
        lines.append(f"{image_id},{solution[source_ids[k]]}")
    (split / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    reference = json.loads((ROOT / "data/demo/references/real-demo500.json").read_text())
    tiled = {
        image_id: reference[source_ids[i % len(demo)]]
        for i, image_id in enumerate(ids)
        if source_ids[i % len(demo)] in reference
    }
    (folder / "data/demo/references").mkdir(parents=True, exist_ok=True)
    (folder / "data/demo/references/real-bench.json").write_text(json.dumps(tiled))
    params = load_params(ROOT / "params.yaml")
    params["splits"] = {
        "val": {
            "root": "data/split",
            "layout": "kaggle",
            "subset": "val",
            "synsets": None,
            "boxes": None,
            "limit": None,
            "labels": "iterations/val.parquet",
            "overrides": "data/overrides/val.csv",
        }
    }
    params["predict"]["splits"] = ["val"]
    params["train"]["splits"] = []
    # vote as it runs at 1.33M: above vote.exact_max_rows active rows, the streaming strategy
    params["vote"] = {"val": params["vote"]["val"], "exact_max_rows": 1}
    params["decide"] = {k: v for k, v in params["decide"].items() if k != "train_demo"}
    params["evaluate"]["reference_labels"] = {"val": "real-bench.json"}
    params["publish"]["splits"] = ["val"]
    if explain == "plan":
        params["explain"]["max_pairs"] = 0
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in BENCH_STAGES}
    (folder / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run([*git, "add", "-A"], cwd=folder, check=True)
    subprocess.run([*git, "commit", "-qm", "bench project"], cwd=folder, check=True)
    return folder


def tiled_predictions(folder: Path, model: str, rows: int) -> tuple[Path, Path]:
    """The demo model's predictions tiled to `rows` (manifest order) as .npy + an id list."""
    demo = np.load(ROOT / formats.predictions_path("val", model), mmap_mode="r")
    out = folder / f"tiled-{model}.npy"
    tiled = np.lib.format.open_memmap(out, mode="w+", dtype=demo.dtype, shape=(rows, demo.shape[1]))
    for start in range(0, rows, len(demo)):
        stop = min(rows, start + len(demo))
        tiled[start:stop] = demo[: stop - start]
    tiled.flush()
    del tiled
    ids = folder / "tiled-ids.txt"
    if not ids.exists():
        ids.write_text("".join(f"ILSVRC2012_val_{i + 1:08d}\n" for i in range(rows)))
    return out, ids


# ----------------------------------------------------------------------------- one size


def run_size(work: Path, rows: int, explain: str) -> dict[str, dict[str, Any]]:
    """Build the project of `rows` images and measure every step; returns step -> figures."""
    print(f"\n=== {rows:,} rows: building the project", flush=True)
    project = build_project(work / f"rows-{rows}", rows, explain)
    figures: dict[str, dict[str, Any]] = {}

    def step(
        name: str, command: list[str], *, stage_only: bool = True, ok: tuple[int, ...] = (0,)
    ) -> dict[str, Any]:
        result = measure(command, project, stage_only=stage_only)
        if result["rc"] not in ok:
            raise SystemExit(f"{name} failed ({result['rc']}):\n{result['output'][-4000:]}")
        figures[name] = {k: v for k, v in result.items() if k != "output"}
        print(
            f"{name:<24} {result['seconds']:>8.1f} s  own {result['own_gb']:.2f} GB  "
            f"mapped {result['mapped_gb']:.2f} GB",
            flush=True,
        )
        return result

    step("ingest (cold)", ["dvc", "repro", "-s", "ingest@val"])
    warm = step("ingest (warm)", ["dvc", "repro", "-s", "ingest@val"])
    assert f"{rows} files unchanged since the last ingest" in warm["output"], warm["output"][-2000:]
    models = load_params(project / "params.yaml")["predict"]["models"]
    imports = {"seconds": 0.0, "own_gb": 0.0, "mapped_gb": 0.0}
    for model in models:
        npy, ids = tiled_predictions(project, model, rows)
        command = ["python", "-m", "stages.import_predictions", "--split", "val", "--model", model]
        result = measure([*command, str(npy), "--image-ids", str(ids)], project, stage_only=False)
        if result["rc"]:
            raise SystemExit(f"import {model} failed:\n{result['output'][-4000:]}")
        npy.unlink()
        imports["seconds"] += result["seconds"]
        imports["own_gb"] = max(imports["own_gb"], result["own_gb"])
        imports["mapped_gb"] = max(imports["mapped_gb"], result["mapped_gb"])
    figures["import-predictions x5"] = imports
    print(f"{'import-predictions x5':<24} {imports['seconds']:>8.1f} s", flush=True)
    step("vote", ["dvc", "repro", "-s", "vote@val"])
    if explain == "plan":
        planned = step(
            "explain (plan only)",
            ["python", "-m", "stages.explain", "--split", "val"],
            stage_only=False,
            ok=(2,),
        )
        plan = re.search(r"explain val: .*?\(runs on [^)]*\)", planned["output"])
        figures["explain (plan only)"]["plan"] = plan.group(0) if plan else None
        print(f"    {figures['explain (plan only)']['plan']}", flush=True)
        formats.write_table(
            formats.CAMS_SCHEMA.empty_table(),
            project / formats.cams_path("val"),
            schema=formats.CAMS_SCHEMA,
        )
        (project / "data/cams/val-overlays").mkdir(parents=True, exist_ok=True)
        subprocess.run(["dvc", "commit", "-f", "-q", "explain@val"], cwd=project, check=True)
    else:
        step("explain", ["dvc", "repro", "-s", "explain@val"])
    for stage in ("decide", "evaluate", "review"):
        step(stage, ["dvc", "repro", "-s", f"{stage}@val"])
    step("publish", ["dvc", "repro", "-s", "publish"])
    status = step("dvc status", ["dvc", "status"], stage_only=False)
    images = project / "data/split/ILSVRC/Data/CLS-LOC/val"
    images.rename(images.with_name("val-away"))
    try:
        away = measure(["dvc", "status"], project, stage_only=False)
    finally:
        images.with_name("val-away").rename(images)
    figures["dvc status"]["without the images"] = away["output"] == status["output"]
    figures["dvc status"]["clean"] = status["output"].split() == [
        "ingest@val:",
        "always",
        "changed",
    ]
    print(
        f"    clean: {figures['dvc status']['clean']}; same answer with the image folder moved "
        f"away: {figures['dvc status']['without the images']}",
        flush=True,
    )
    noop = step("dvc repro (no change)", ["dvc", "repro"])
    ran = set(re.findall(r"Running stage '([^']+)'", noop["output"]))
    figures["dvc repro (no change)"]["ran"] = sorted(ran)
    print(f"    stages run: {sorted(ran)}", flush=True)
    size = sum(p.stat().st_size for p in (project / "data/review/val").rglob("*") if p.is_file())
    figures["review"]["report_mb"] = round(size / 1e6, 1)
    return figures


# ----------------------------------------------------------------------------- the table


def extrapolate(small: float, large: float, n_small: int, n_large: int) -> float:
    """A straight line through the two largest sizes, at TARGET rows."""
    slope = (large - small) / (n_large - n_small)
    return large + slope * (TARGET - n_large)


def table(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    """The markdown table: per step, time and peak memory at each size, the time ratio of the two
    largest sizes, and the straight line through them at 1,331,167 rows (never below the largest
    measured figure)."""
    sizes = sorted(results)
    n1, n2 = sizes[-2], sizes[-1]
    head = [f"{n // 1000}k s" for n in sizes] + [f"{n // 1000}k own / mapped GB" for n in sizes]
    ratio_head = f"time ratio {n2 // 1000}k/{n1 // 1000}k (rows x{n2 / n1:.0f})"
    lines = [
        "| step | " + " | ".join(head) + f" | {ratio_head} | at 1.33M: time | own / mapped GB |",
        "|---" * (len(head) + 4) + "|",
    ]
    for name in results[n2]:
        cells = [results[n][name] for n in sizes]
        line = {
            key: max(cells[-1][key], extrapolate(cells[-2][key], cells[-1][key], n1, n2))
            for key in ("seconds", "own_gb", "mapped_gb")
        }
        ratio = cells[-1]["seconds"] / max(cells[-2]["seconds"], 1e-9)
        lines.append(
            f"| {name} | "
            + " | ".join(f"{c['seconds']:.1f}" for c in cells)
            + " | "
            + " | ".join(f"{c['own_gb']:.2f} / {c['mapped_gb']:.2f}" for c in cells)
            + f" | {ratio:.2f} | {line['seconds'] / 60:.1f} min | "
            f"{line['own_gb']:.2f} / {line['mapped_gb']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/pipeline-scale"))
    parser.add_argument("--explain", choices=("plan", "run"), default="plan")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the projects under --work")
    args = parser.parse_args()
    if len(args.rows) < 2:
        parser.error("give at least two --rows sizes (the growth ratio needs two)")
    for model in load_params(ROOT / "params.yaml")["predict"]["models"]:
        if not (ROOT / formats.predictions_path("val", model)).is_file():
            raise SystemExit(f"{formats.predictions_path('val', model)} is missing: run make repro")
    args.work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    results = {}
    for rows in sorted(args.rows):
        results[rows] = run_size(args.work, rows, args.explain)
        if not args.keep:
            shutil.rmtree(args.work / f"rows-{rows}")
    print(f"\n{os.cpu_count()} CPUs, load average {load:.1f} at the start\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
