"""Duplicates at ImageNet scale (ILSVRC2012 train + val, 1,331,167 images) on this machine.

1. Fingerprints: decode + pixel sha256 + pHash + quality scores per image (what the embed stage
   adds beside its forward pass), and file sha256, in `--workers` processes over the demo images;
   images per second and the straight line to 1.33M. Demo JPEGs are small (227 px); real ImageNet
   files (~110 KB, ~400x350) decode ~3-4x slower: the line says so.
2. Near duplicates on synthetic embeddings, `--rows` x `--dim` float16 (default 1.33M x 512, the
   demo model's D), with `--pairs` planted near copies (cosine ~0.9-0.99): faiss IVF index build
   (k-means on a sample + add), k-NN search of `--query-rows` rows (time extrapolated to every row),
   peak RSS, and the recall of the planted pairs among the queried rows. Then on a `--subset`
   (100k) slice: exact `IndexFlatIP` vs the IVF index: recall of the pairs the exact search
   finds at cosine >= 0.82 (what the stage keeps), and of all 16 nearest neighbours (low on iid
   Gaussian vectors, whose neighbours are all nearly equidistant: not what duplicates need).

    PYTHONPATH=. .venv/bin/python bench/duplicates.py                  # full size (a few minutes)
    PYTHONPATH=. .venv/bin/python bench/duplicates.py --rows 200000    # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from stages.contracts.formats import file_sha256
from stages.dedup.fingerprints import PILLOW_VERSION, fingerprint
from stages.dedup.neighbours import IndexOptions, build_index, normalised
from stages.sources.images import open_rgb

FULL = 1_331_167
DEMO = Path(__file__).resolve().parents[2] / "shared/demo/imagenet-val-1300"


def peak_gb() -> float:
    """Peak RSS of this process so far, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _one(path: str) -> str:
    return fingerprint(open_rgb(path)).phash + file_sha256(path)


def bench_fingerprints(root: Path, workers: int) -> dict[str, float]:
    """Images per second of fingerprint + file sha256 over the demo images."""
    files = sorted(str(p) for p in root.rglob("*.JPEG"))
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_one, files, chunksize=32))
    seconds = time.perf_counter() - start
    rate = len(files) / seconds
    return {
        "images": len(files),
        "workers": workers,
        "images_per_s": round(rate, 1),
        "minutes_at_1.33M_demo_size": round(FULL / rate / 60, 1),
        "minutes_at_1.33M_real_files_x4": round(4 * FULL / rate / 60, 1),
        "pillow": PILLOW_VERSION,
    }


def synthetic(rows: int, dim: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit float32 rows (stored float16 like the embed stage) with `pairs` planted copies:
    row 2k+1 = row 2k + noise for k < pairs. Returns (x, the planted rows 2k)."""
    rng = np.random.default_rng(seed)
    x = np.empty((rows, dim), dtype=np.float16)
    for start in range(0, rows, 100_000):
        end = min(rows, start + 100_000)
        x[start:end] = rng.standard_normal((end - start, dim), dtype=np.float32)
    sources = np.arange(pairs) * 2
    noise = rng.uniform(0.1, 0.45, size=(pairs, 1)).astype(np.float32)
    x[sources + 1] = (
        x[sources].astype(np.float32) + noise * rng.standard_normal((pairs, dim), dtype=np.float32)
    ).astype(np.float16)
    return x, sources


def bench_search(args: argparse.Namespace) -> dict[str, object]:
    """IVF build and search at full size, planted-pair recall, flat vs IVF on a subset."""
    x16, sources = synthetic(args.rows, args.dim, args.pairs)
    x = normalised(x16)
    del x16
    options = IndexOptions(index="ivf", neighbours=16, ivf_lists=args.lists, nprobe=args.nprobe)
    start = time.perf_counter()
    index = build_index(x, options)
    built = time.perf_counter() - start
    queries = np.concatenate(
        [sources, np.arange(args.query_rows - len(sources)) + 2 * len(sources)]
    )
    queries = queries[: args.query_rows]
    start = time.perf_counter()
    _, ids = index.search(x[queries], 16)
    searched = time.perf_counter() - start
    planted = np.isin(queries, sources)
    found = (ids[planted] == (queries[planted] + 1)[:, None]).any(axis=1)
    cos = np.einsum("ij,ij->i", x[sources], x[sources + 1])
    wanted = cos >= 0.876
    del index
    sub = x[: args.subset]
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(sub)
    start = time.perf_counter()
    exact_sims, exact = flat.search(sub[: args.subset_queries], 16)
    flat_s = time.perf_counter() - start
    ivf = build_index(
        sub, IndexOptions(index="ivf", neighbours=16, ivf_lists=args.lists // 4, nprobe=args.nprobe)
    )
    _, approx = ivf.search(sub[: args.subset_queries], 16)
    hits = np.mean([len(set(a) & set(e)) / 16 for a, e in zip(approx, exact)])
    close = [set(e[(s >= 0.82) & (e != q)]) for q, (e, s) in enumerate(zip(exact, exact_sims))]
    kept = sum(len(c & set(a)) for c, a in zip(close, approx))
    pair_recall = kept / max(1, sum(len(c) for c in close))
    return {
        "rows": args.rows,
        "dim": args.dim,
        "threads": faiss.omp_get_max_threads(),
        "ivf_lists": args.lists,
        "nprobe": args.nprobe,
        "build_s": round(built, 1),
        "query_rows": len(queries),
        "query_s": round(searched, 1),
        "query_min_all_rows_extrapolated": round(searched / len(queries) * args.rows / 60, 1),
        "planted_pairs_cos_ge_0.876": int(wanted.sum()),
        "planted_recall": round(float(found[wanted[: planted.sum()]].mean()), 4),
        "subset_rows": args.subset,
        "subset_flat_query_s_per_1k": round(flat_s / args.subset_queries * 1000, 2),
        "subset_pairs_cos_ge_0.82": sum(len(c) for c in close),
        "subset_ivf_recall_of_those_pairs_vs_exact": round(pair_recall, 4),
        "subset_ivf_recall_at_16_vs_exact": round(float(hits), 4),
        "peak_rss_gb": round(peak_gb(), 2),
    }


def main() -> None:
    """Run both benches and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--lists", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, default=48)
    parser.add_argument("--query-rows", type=int, default=20_000)
    parser.add_argument("--subset", type=int, default=100_000)
    parser.add_argument("--subset-queries", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--demo-root", type=Path, default=DEMO)
    args = parser.parse_args()
    out = {"search": bench_search(args)}
    if args.demo_root.is_dir():
        out["fingerprints"] = bench_fingerprints(args.demo_root, args.workers)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
