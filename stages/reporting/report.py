"""The review report of a split: a self-contained static page of its decisions and their evidence
(docs/review.md; the layout is in `stages.review`)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.contracts import formats
from stages.contracts.actions import ACTIONS, Action
from stages.contracts.config import from_section, positive
from stages.contracts.errors import InputError, MissingInputError
from stages.contracts.splits import Params, SplitEntry
from stages.sources.thumbnails import thumb_name, write_thumbnails

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("assets")
ASSET_FILES = ("index.html", "app.js", "style.css")
WHY = {
    "fix": 1,
    "remove": 2,
    "secondary": 4,
    "exempted": 8,
    "merged": 16,
    "override": 32,
    "sample": 64,
    "pair": 128,
}
"""Why a row is shown (a bit mask in the index): its action, flags, the keep sample, a pair."""
LEDGER_COLUMNS = (
    "image_id",
    "label",
    "action",
    "new_label",
    "cl_candidates",
    "top5_misses",
    "exempted",
    "reason",
    "secondary_labels",
    "original_label",
    "merged",
    "override",
)
VOTES_COLUMNS = (
    "image_id",
    "label",
    "cl_candidates",
    "cl_models",
    "ensemble_top",
    "ensemble_probs",
    "label_prob",
    "model_top1",
)


@dataclass(frozen=True)
class ReviewOptions:
    """The `review:` params section.

    Attributes:
        keep_sample: kept rows drawn at random (seeded) for calibration.
        seed: seed of that sample.
        chunk_rows: shown rows per data chunk (the page loads only the chunks it shows).
        thumb_size: longest side of a thumbnail in pixels.
        top_pairs: confused class pairs listed.
        pair_images: images per pair (a review round), ranked by priority.
        workers: threads decoding images for thumbnails.
    """

    keep_sample: int = 200
    seed: int = 0
    chunk_rows: int = 50
    thumb_size: int = 224
    top_pairs: int = 50
    pair_images: int = 50
    workers: int = 2

    def __post_init__(self) -> None:
        for key in ("chunk_rows", "thumb_size", "pair_images", "workers"):
            positive(f"review.{key}", getattr(self, key))
        for key in ("keep_sample", "seed", "top_pairs"):
            positive(f"review.{key}", getattr(self, key), minimum=0)


@dataclass(frozen=True)
class ReviewConfig:
    """Everything review reads for one split: its models, image root and the `review:` options."""

    split: str
    models: tuple[str, ...]
    root: str
    options: ReviewOptions

    @classmethod
    def from_params(cls, params: Params, split: str) -> ReviewConfig:
        """Raises ConfigError for a bad `review:` section or split entry."""
        entry = SplitEntry.from_params(params, split)
        return cls(
            split,
            entry.models(params),
            entry.root,
            from_section(ReviewOptions, params.get("review"), where="review"),
        )


def report_dir(split: str) -> Path:
    """`data/review/<split>`: the static report folder."""
    return Path("data/review") / split


def read_data(path: str | Path) -> Any:
    """The JSON inside one `REVIEW_LOAD("<name>", <json>);` data file of a report."""
    text = Path(path).read_text(encoding="utf-8")
    start, end = text.index(",") + 1, text.rindex(")")
    return json.loads(text[start:end])


def _write_data(folder: Path, name: str, data: Any) -> int:
    """Write data/<name>.js deterministically; returns its size in bytes."""
    body = json.dumps(
        data, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
    )
    text = f'REVIEW_LOAD("{name}",{body});\n'
    (folder / "data" / f"{name}.js").write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def list_matrix(
    column: pa.ChunkedArray | pa.Array, width: int, *, fill: float = -1, dtype: Any = np.int64
) -> np.ndarray:
    """A list column -> (N, width) array; shorter, empty or null lists are padded with `fill`."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    out = np.full((len(array), width), fill, dtype=dtype)
    rows = np.repeat(np.arange(len(array)), lengths)
    cols = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = cols < width
    out[rows[keep], cols[keep]] = values[keep]
    return out


def read_table_columns(path: Path, columns: Sequence[str], what: str) -> pa.Table:
    """A parquet table that must have `columns` (MissingInputError / InputError naming it)."""
    if not path.is_file():
        raise MissingInputError(f"{what} {path} does not exist; run `dvc repro` first")
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(
            f"{what} {path} lacks columns {missing}; re-run `dvc repro` (the stage "
            "that writes it is older than the review stage)"
        )
    return table


def select_rows(ledger: pd.DataFrame, *, config: ReviewOptions) -> np.ndarray:
    """Why each ledger row is shown: a WHY bit mask per row (0 = not shown), before pairs.

    Every fix, removal, secondary-labelled, CAM-exempted, merged and overridden row is shown, plus
    `config.keep_sample` other kept rows drawn with `config.seed`.
    """
    action = ledger["action"].to_numpy(dtype=object)
    why = np.zeros(len(ledger), dtype=np.int64)
    secondary = np.fromiter(
        (s is not None and len(s) > 0 for s in ledger["secondary_labels"]), bool, len(ledger)
    )
    for name, hit in (
        ("fix", action == Action.FIX),
        ("remove", action == Action.REMOVE),
        ("secondary", secondary),
        ("exempted", ledger["exempted"].to_numpy(bool)),
        ("merged", ledger["merged"].to_numpy(bool)),
        ("override", ledger["override"].to_numpy(bool)),
    ):
        why[hit] |= WHY[name]
    spare = np.flatnonzero((action == Action.KEEP) & (why == 0))
    if len(spare) and config.keep_sample:
        rng = np.random.default_rng(config.seed)
        sample = rng.choice(spare, size=min(config.keep_sample, len(spare)), replace=False)
        why[np.sort(sample)] |= WHY["sample"]
    return why


def confused_pairs(
    labels: np.ndarray, predicted: np.ndarray, quality: np.ndarray, *, top: int, per_pair: int
) -> list[dict[str, Any]]:
    """The most confused unordered class pairs {a, b}: rows labelled a that the ensemble's top-1
    calls b, plus the reverse.

    Args:
        labels: (N,) current labels, -1 for inactive rows.
        predicted: (N,) ensemble top-1, -1 where unknown.
        quality: (N,) label quality (lower = reviewed first), NaN last.
        top: pairs returned, most confused first (ties: the pair with the lowest label quality
            first, then smaller a, then b).
        per_pair: rows kept per pair, best priority first (ties: ledger order).

    Returns:
        [{"a", "b", "ab" (label a, predicted b), "ba", "rows" (ledger positions)}, ...].
    """
    ok = (labels >= 0) & (predicted >= 0) & (labels != predicted)
    positions = np.flatnonzero(ok)
    low, high = np.minimum(labels[ok], predicted[ok]), np.maximum(labels[ok], predicted[ok])
    keys = low * formats.NUM_CLASSES + high
    rank = np.nan_to_num(quality, nan=np.inf)
    by_key = np.argsort(keys, kind="stable")
    unique, starts, counts = np.unique(keys[by_key], return_index=True, return_counts=True)
    best = np.minimum.reduceat(rank[positions][by_key], starts) if len(starts) else rank[:0]
    order = np.lexsort((unique, best, -counts))[:top]
    pairs = []
    for key in unique[order]:
        members = positions[keys == key]
        members = members[np.lexsort((members, rank[members]))]
        a, b = divmod(int(key), formats.NUM_CLASSES)
        pairs.append(
            {
                "a": a,
                "b": b,
                "ab": int((labels[members] == a).sum()),
                "ba": int((labels[members] == b).sum()),
                "rows": [int(p) for p in members[:per_pair]],
            }
        )
    return pairs


def model_top5(
    predictions: Sequence[np.ndarray], positions: np.ndarray, *, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Each model's top-5 for the given rows, read block by block (memory-mapped inputs stay so).

    Args:
        predictions: one (N, 1000) probability matrix per model (float16 or float32).
        positions: (K,) ascending row positions to read.

    Returns:
        classes (M, K, 5) and probabilities (M, K, 5), most probable first (ties: smaller class).
    """
    classes = np.zeros((len(predictions), len(positions), 5), dtype=np.int64)
    probs = np.zeros((len(predictions), len(positions), 5), dtype=np.float32)
    for m, matrix in enumerate(predictions):
        for start in range(0, len(positions), block):
            rows = np.asarray(matrix[positions[start : start + block]], dtype=np.float32)
            part = np.argpartition(-rows, 4, axis=1)[:, :5]
            p = np.take_along_axis(rows, part, axis=1)
            order = np.lexsort((part, -p), axis=1)
            classes[m, start : start + block] = np.take_along_axis(part, order, axis=1)
            probs[m, start : start + block] = np.take_along_axis(p, order, axis=1)
    return classes, probs


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _records(
    ledger: pd.DataFrame,
    votes: pa.Table,
    shown: np.ndarray,
    why: np.ndarray,
    top5: tuple[np.ndarray, np.ndarray],
    models: Sequence[str],
    cams: dict[int, list],
    no_thumb: set[int],
) -> list[dict[str, Any]]:
    """One evidence record per shown row (shown = ledger positions in display order)."""
    take = pa.array(shown, type=pa.int64())
    sub = (
        votes.select(["cl_models", "ensemble_top", "ensemble_probs", "label_prob", "model_top1"])
        .take(take)
        .to_pylist()
    )
    # pandas-stubs types a row's fields as any scalar; they are the ledger's columns
    rows: Iterable[Any] = ledger.iloc[shown].itertuples(index=False)
    records = []
    for k, (pos, row, evidence) in enumerate(zip(shown, rows, sub)):
        candidates = [] if row.cl_candidates is None else [int(c) for c in row.cl_candidates]
        label = _int(row.label)
        records.append(
            {
                "pos": int(pos),
                "id": row.image_id,
                "action": row.action,
                "label": label,
                "new": _int(row.new_label),
                "orig": _int(row.original_label),
                "sec": [
                    int(s)
                    for s in (row.secondary_labels if row.secondary_labels is not None else [])
                ],
                "reason": row.reason,
                "misses": int(row.top5_misses),
                "exempted": bool(row.exempted),
                "merged": bool(row.merged),
                "override": bool(row.override),
                "why": [n for n, bit in WHY.items() if why[pos] & bit],
                "cl": [[c, m] for c, m in zip(candidates, evidence["cl_models"] or [])],
                "q": None
                if evidence["label_prob"] is None
                else float(f"{evidence['label_prob']:.4g}"),
                "agree": None
                if label is None
                else sum(t == label for t in evidence["model_top1"] or []),
                "ens": [
                    [int(c), round(float(p), 4)]
                    for c, p in zip(
                        evidence["ensemble_top"] or [], evidence["ensemble_probs"] or []
                    )
                ],
                "top5": [
                    [[int(c), round(float(p), 4)] for c, p in zip(top5[0][m, k], top5[1][m, k])]
                    for m in range(len(models))
                ],
                "thumb": None if pos in no_thumb else thumb_name(int(pos)),
                "cams": cams.get(int(pos), []),
            }
        )
    return records


def _copy_cams(
    out: Path, overlay_dir: Path | None, ids: dict[str, int], models: Sequence[str]
) -> dict[int, list[list[str]]]:
    """Copy explain's overlays `<image_id>__<model>.png` of shown rows -> {pos: [[model, file]]}."""
    found: dict[int, list[list[str]]] = {}
    if overlay_dir is None or not overlay_dir.is_dir():
        return found
    for image_id, pos in ids.items():
        for model in models:
            source = overlay_dir / f"{image_id}__{model}.png"
            if source.is_file():
                name = f"cams/{pos}__{model}.png"
                (out / "cams").mkdir(exist_ok=True)
                shutil.copyfile(source, out / name)
                found.setdefault(pos, []).append([model, name])
    return found


def _write_rows(
    folder: Path, records: list[dict[str, Any]], why: np.ndarray, chunk_rows: int
) -> tuple[list[int], int]:
    """The evidence chunks and the compact index -> (chunk sizes, index size) in bytes."""
    sizes = [
        _write_data(folder, f"chunk-{k // chunk_rows:05d}", records[k : k + chunk_rows])
        for k in range(0, len(records), chunk_rows)
    ]
    index = {
        key: [r[key] for r in records]
        for key in ("pos", "action", "label", "new", "sec", "agree", "q")
    }
    index["why"] = [int(why[r["pos"]]) for r in records]
    return sizes, _write_data(folder, "index", index)


def _check_aligned(ledger: pd.DataFrame, votes: pa.Table, manifest: pd.DataFrame) -> None:
    ids = ledger["image_id"].to_numpy(dtype=object)
    for what, other in (
        ("votes", votes.column("image_id").to_numpy(zero_copy_only=False)),
        ("manifest", manifest["image_id"].to_numpy(dtype=object)),
    ):
        if len(other) != len(ids) or not np.array_equal(other, ids):
            raise InputError(
                f"the ledger ({len(ids)} rows) and the {what} ({len(other)} rows) do "
                "not list the same images in the same order; re-run `dvc repro`"
            )


def plan_rows(
    ledger: pd.DataFrame, votes: pa.Table, *, config: ReviewOptions
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """What the report shows, in review order.

    Returns:
        shown: ledger positions, lowest label quality first (no quality last; ties: ledger order);
        why: (N,) WHY bit masks; pairs: `confused_pairs` of the split (rows = ledger positions).
    """
    labels = ledger["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    labels = np.where(np.isnan(labels), -1, labels).astype(np.int64)
    quality = votes.column("label_prob").to_numpy(zero_copy_only=False).astype(np.float64)
    predicted = list_matrix(votes.column("ensemble_top"), 1)[:, 0]
    why = select_rows(ledger, config=config)
    pairs = confused_pairs(
        labels, predicted, quality, top=config.top_pairs, per_pair=config.pair_images
    )
    for pair in pairs:
        why[pair["rows"]] |= WHY["pair"]
    positions = np.flatnonzero(why)
    shown = positions[np.lexsort((positions, np.nan_to_num(quality[positions], nan=np.inf)))]
    return shown, why, pairs


def build_report(
    ledger: pd.DataFrame,
    votes: pa.Table,
    manifest: pd.DataFrame,
    *,
    split: str,
    models: Sequence[str],
    predictions: Sequence[np.ndarray],
    image_root: str | Path,
    out: str | Path,
    overlay_dir: Path | None = None,
    config: ReviewOptions = ReviewOptions(),
) -> dict[str, Any]:
    """Write the static report of one split into `out` (atomically) and return its figures.

    Args:
        ledger: the decision ledger (LEDGER_COLUMNS), N rows.
        votes: the votes table (VOTES_COLUMNS), same rows.
        manifest: the split's manifest, same rows (paths and boxes).
        models: the split's models; predictions: their (N, 1000) probabilities (memory-mapped).
        image_root: the split's root (manifest paths are relative to it).
        overlay_dir: explain's overlay folder (None: no CAM overlays).
    """
    started = time.perf_counter()
    _check_aligned(ledger, votes, manifest)
    for model, matrix in zip(models, predictions, strict=True):
        if matrix.ndim != 2 or matrix.shape != (len(ledger), formats.NUM_CLASSES):
            raise InputError(
                f"predictions of {model} have shape {matrix.shape}, expected "
                f"({len(ledger)}, 1000) in ledger order; re-run `dvc repro predict`"
            )
    shown, why, pairs = plan_rows(ledger, votes, config=config)
    slot = {int(p): k for k, p in enumerate(shown)}
    ascending = np.sort(shown)
    classes, probs = model_top5(predictions, ascending)
    back = np.searchsorted(ascending, shown)
    top5 = (classes[:, back], probs[:, back])
    with formats.atomic_folder(out) as tmp:
        (tmp / "data").mkdir()
        for name in ASSET_FILES:
            shutil.copyfile(ASSETS / name, tmp / name)
        no_thumb = write_thumbnails(
            tmp, manifest, ascending, image_root, size=config.thumb_size, workers=config.workers
        )
        cams = _copy_cams(
            tmp, overlay_dir, {str(ledger["image_id"].iat[p]): int(p) for p in shown}, models
        )
        records = _records(ledger, votes, shown, why, top5, models, cams, no_thumb)
        sizes, index_bytes = _write_rows(tmp, records, why, config.chunk_rows)
        counts = ledger["action"].value_counts()
        _write_data(
            tmp,
            "meta",
            {
                "split": split,
                "models": list(models),
                "classes": formats.class_names(),
                "wnids": formats.class_wnids(),
                "rows": len(ledger),
                "shown": len(records),
                "chunk_rows": config.chunk_rows,
                "chunks": len(sizes),
                "counts": {str(a): int(counts.get(a, 0)) for a in ACTIONS},
                "secondary": int((why & WHY["secondary"] > 0).sum()),
                "why": WHY,
                "pairs": [{**p, "rows": [slot[r] for r in p["rows"]]} for p in pairs],
            },
        )
    figures = {
        "rows": len(ledger),
        "shown": len(records),
        "chunks": len(sizes),
        "max_chunk_bytes": max(sizes, default=0),
        "index_bytes": index_bytes,
        "pairs": len(pairs),
        "no_thumbnail": len(no_thumb),
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info("review %s: %s", split, figures)
    return figures
