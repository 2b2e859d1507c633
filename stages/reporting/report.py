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
from stages.reporting.duplicates import DuplicateSource, DuplicateView, duplicate_view
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
    "review": 256,
    "duplicate": 512,
}
"""Why a row is shown (a bit mask in the index): its action, flags, the strategy's review queue,
the keep sample, a pair, a duplicate group of the Duplicates view."""
QUEUES = ("review", "fix", "remove", "secondary", "exempted", "merged", "override")
"""The queues a round holds at most `review.queue_rows` rows of."""
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
OPTIONAL_LEDGER = ("duplicate_group", "issues")
"""Ledger columns shown when the ledger has them (decide writes them since the duplicates stage)."""
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
        queue_rows: rows per queue (fix, remove, secondary, exempted, merged, override) in one
            report: a review round, lowest label quality first, rows not yet overridden before
            overridden ones; the report's size does not grow with the split.
        duplicate_groups: duplicate groups in the Duplicates view (conflicting labels first).
    """

    keep_sample: int = 200
    seed: int = 0
    chunk_rows: int = 50
    thumb_size: int = 224
    top_pairs: int = 50
    pair_images: int = 50
    workers: int = 2
    queue_rows: int = 500
    duplicate_groups: int = 200

    def __post_init__(self) -> None:
        for key in ("chunk_rows", "thumb_size", "pair_images", "workers", "queue_rows"):
            positive(f"review.{key}", getattr(self, key))
        for key in ("keep_sample", "seed", "top_pairs", "duplicate_groups"):
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


class TableSource:
    """A table of N rows that the report reads in two ways: a few columns of every row (to plan
    the report) and every column of the few rows it shows. A parquet file is read by column and
    by row group (only the groups holding the rows asked for); a table in memory is sliced.

    Raises (from `require`): MissingInputError (no file), InputError (columns missing).
    """

    def __init__(self, data: pa.Table | pd.DataFrame | str | Path, what: str) -> None:
        self.what = what
        self.path: Path | None = None
        self.table: pa.Table | None = None
        self.file: pq.ParquetFile | None = None
        if isinstance(data, (str, Path)):
            self.path = Path(data)
            if not self.path.is_file():
                raise MissingInputError(f"{what} {self.path} does not exist; run `dvc repro` first")
            self.file = pq.ParquetFile(self.path)
            sizes = [
                self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)
            ]
            self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        elif isinstance(data, pd.DataFrame):
            self.table = pa.Table.from_pandas(data, preserve_index=False)
        else:
            self.table = data

    @property
    def column_names(self) -> list[str]:
        """The table's columns."""
        if self.file is not None:
            return list(self.file.schema_arrow.names)
        return list(self.table.column_names)  # type: ignore[union-attr]

    @property
    def num_rows(self) -> int:
        """N."""
        if self.file is not None:
            return int(self.starts[-1])
        return int(self.table.num_rows)  # type: ignore[union-attr]

    def require(self, columns: Sequence[str]) -> None:
        """InputError naming the columns the table lacks (written by an older stage)."""
        missing = [c for c in columns if c not in self.column_names]
        if missing:
            raise InputError(
                f"{self.what} {self.path or ''} lacks columns {missing}; re-run `dvc repro` (the "
                "stage that writes it is older than the review stage)"
            )

    def columns(self, names: Sequence[str]) -> pa.Table:
        """These columns of every row."""
        if self.file is not None:
            return self.file.read(columns=list(names))
        return self.table.select(list(names))  # type: ignore[union-attr]

    def rows(self, positions: np.ndarray, names: Sequence[str]) -> pa.Table:
        """The rows at `positions` (in that order) of these columns."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.file is None:
            return self.table.select(list(names)).take(pa.array(positions))  # type: ignore[union-attr]
        groups = np.unique(np.searchsorted(self.starts, positions, side="right") - 1)
        if not len(groups):
            return self.file.schema_arrow.empty_table().select(list(names))
        part = pa.concat_tables(
            self.file.read_row_group(int(g), columns=list(names)) for g in groups
        )
        offsets = np.concatenate([[0], np.cumsum(np.diff(self.starts)[groups])])
        group_of = np.searchsorted(self.starts, positions, side="right") - 1
        local = positions - self.starts[group_of] + offsets[np.searchsorted(groups, group_of)]
        return part.take(pa.array(local))


def _flags(table: pa.Table, name: str) -> np.ndarray:
    """A boolean ledger column (all False where the ledger predates it)."""
    if name not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    return pc.fill_null(table.column(name), False).to_numpy(zero_copy_only=False).astype(bool)


def select_rows(
    ledger: pa.Table | pd.DataFrame, *, config: ReviewOptions, quality: np.ndarray | None = None
) -> np.ndarray:
    """Why each ledger row is shown: a WHY bit mask per row (0 = not shown), before pairs.

    Each queue (the strategy's review queue, fix, removal, secondary-labelled, CAM-exempted,
    merged, overridden) keeps its
    `config.queue_rows` rows of lowest label quality (`quality`; rows not yet overridden first),
    plus `config.keep_sample` other kept rows drawn with `config.seed`.
    """
    table = ledger if isinstance(ledger, pa.Table) else pa.Table.from_pandas(ledger)
    n = table.num_rows
    action = table.column("action").to_numpy(zero_copy_only=False).astype(object)
    why = np.zeros(n, dtype=np.int64)
    secondary = (
        pc.fill_null(pc.list_value_length(table.column("secondary_labels")), 0)
        .to_numpy(zero_copy_only=False)
        .astype(np.int64)
        > 0
    )
    overridden = _flags(table, "override")
    for name, hit in (
        ("review", _flags(table, "review") & ~overridden),
        ("fix", action == Action.FIX),
        ("remove", action == Action.REMOVE),
        ("secondary", secondary),
        ("exempted", _flags(table, "exempted")),
        ("merged", _flags(table, "merged")),
        ("override", overridden),
    ):
        why[hit] |= WHY[name]
    spare = np.flatnonzero((action == Action.KEEP) & (why == 0))
    if len(spare) and config.keep_sample:
        rng = np.random.default_rng(config.seed)
        sample = rng.choice(spare, size=min(config.keep_sample, len(spare)), replace=False)
        why[np.sort(sample)] |= WHY["sample"]
    rank = np.zeros(n) if quality is None else np.nan_to_num(quality, nan=np.inf)
    for name in QUEUES:
        members = np.flatnonzero(why & WHY[name])
        if len(members) > config.queue_rows:
            later = overridden[members] if name != "override" else np.zeros(len(members), bool)
            order = np.lexsort((members, rank[members], later))
            why[members[order[config.queue_rows :]]] &= ~WHY[name]
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
    predictions: Sequence[np.ndarray | str | Path], positions: np.ndarray, *, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Each model's top-5 for the given rows, one model at a time, read block by block (a file
    is memory-mapped only while its rows are read; an array in memory is used as it is).

    Args:
        predictions: per model, an (N, 1000) probability matrix (float16 or float32) or its .npy.
        positions: (K,) ascending row positions to read.

    Returns:
        classes (M, K, 5) and probabilities (M, K, 5), most probable first (ties: smaller class).
    """
    classes = np.zeros((len(predictions), len(positions), 5), dtype=np.int64)
    probs = np.zeros((len(predictions), len(positions), 5), dtype=np.float32)
    for m, source in enumerate(predictions):
        matrix = np.load(source, mmap_mode="r") if isinstance(source, (str, Path)) else source
        for start in range(0, len(positions), block):
            rows = np.asarray(matrix[positions[start : start + block]], dtype=np.float32)
            part = np.argpartition(-rows, 4, axis=1)[:, :5]
            p = np.take_along_axis(rows, part, axis=1)
            order = np.lexsort((part, -p), axis=1)
            classes[m, start : start + block] = np.take_along_axis(part, order, axis=1)
            probs[m, start : start + block] = np.take_along_axis(p, order, axis=1)
        del matrix
    return classes, probs


def predictions_shape(source: np.ndarray | str | Path) -> tuple[int, ...]:
    """The shape of a predictions matrix or .npy file (its header only)."""
    if isinstance(source, (str, Path)):
        return tuple(np.load(source, mmap_mode="r").shape)
    return tuple(source.shape)


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _strings(values: Any) -> list[str]:
    """A list column's value (None, a list or an array) as a list of strings."""
    return [] if values is None else [str(v) for v in values]


def _records(
    ledger: pd.DataFrame,
    votes: pa.Table,
    shown: np.ndarray,
    why: np.ndarray,
    top5: tuple[np.ndarray, np.ndarray],
    models: Sequence[str],
    cams: dict[int, list],
    no_thumb: set[int],
    *,
    thumb: Any = thumb_name,
) -> list[dict[str, Any]]:
    """One evidence record per shown row: `ledger` and `votes` hold the shown rows (row k =
    ledger position shown[k]), `why` the bit masks of shown rows; `thumb(pos)` names the
    thumbnail."""
    sub = votes.select(
        ["cl_models", "ensemble_top", "ensemble_probs", "label_prob", "model_top1"]
    ).to_pylist()
    # pandas-stubs types a row's fields as any scalar; they are the ledger's columns
    rows: Iterable[Any] = ledger.itertuples(index=False)
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
                "why": [n for n, bit in WHY.items() if why[k] & bit],
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
                "thumb": None if pos in no_thumb else thumb(int(pos)),
                "issues": _strings(getattr(row, "issues", None)),
                "dup": _int(getattr(row, "duplicate_group", None)),
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


def _check_aligned(ledger: TableSource, votes: TableSource, manifest: TableSource) -> None:
    ids = ledger.columns(["image_id"]).column("image_id").cast(pa.large_string())
    for what, other in (("votes", votes), ("manifest", manifest)):
        theirs = other.columns(["image_id"]).column("image_id").cast(pa.large_string())
        if len(theirs) != len(ids) or not ids.equals(theirs):
            raise InputError(
                f"the ledger ({len(ids)} rows) and the {what} ({len(theirs)} rows) do "
                "not list the same images in the same order; re-run `dvc repro`"
            )


def plan_rows(
    ledger: pa.Table | pd.DataFrame,
    votes: pa.Table,
    *,
    config: ReviewOptions,
    duplicates: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """What the report shows, in review order, from a few columns of every row (ledger: action,
    label, secondary_labels, exempted, merged, override; votes: label_prob, ensemble_top), plus
    the `duplicates` rows (ledger positions of the Duplicates view's members).

    Returns:
        shown: ledger positions, the strategy's review queue first, then lowest label quality
            first (no quality last; ties: ledger order);
        why: (N,) WHY bit masks; pairs: `confused_pairs` of the split (rows = ledger positions).
    """
    table = ledger if isinstance(ledger, pa.Table) else pa.Table.from_pandas(ledger)
    labels = pc.fill_null(pc.cast(table.column("label"), pa.int64()), -1).to_numpy(
        zero_copy_only=False
    )
    quality = pc.fill_null(pc.cast(votes.column("label_prob"), pa.float64()), np.nan).to_numpy(
        zero_copy_only=False
    )
    predicted = list_matrix(votes.column("ensemble_top"), 1)[:, 0]
    why = select_rows(table, config=config, quality=quality)
    pairs = confused_pairs(
        labels, predicted, quality, top=config.top_pairs, per_pair=config.pair_images
    )
    for pair in pairs:
        why[pair["rows"]] |= WHY["pair"]
    if duplicates is not None:
        why[duplicates] |= WHY["duplicate"]
    positions = np.flatnonzero(why)
    later = (why[positions] & WHY["review"]) == 0
    rank = np.nan_to_num(quality[positions], nan=np.inf)
    shown = positions[np.lexsort((positions, rank, later))]
    return shown, why, pairs


PLAN_LEDGER = ("action", "label", "secondary_labels", "exempted", "merged", "override", "review")
PLAN_VOTES = ("label_prob", "ensemble_top")
EVIDENCE_VOTES = ("cl_models", "ensemble_top", "ensemble_probs", "label_prob", "model_top1")


def build_report(
    ledger: pd.DataFrame | pa.Table | Path,
    votes: pa.Table | pd.DataFrame | Path,
    manifest: pd.DataFrame | pa.Table | Path,
    *,
    split: str,
    models: Sequence[str],
    predictions: Sequence[np.ndarray | Path],
    image_root: str | Path,
    out: str | Path,
    overlay_dir: Path | None = None,
    config: ReviewOptions = ReviewOptions(),
    duplicates: DuplicateSource | None = None,
) -> dict[str, Any]:
    """Write the static report of one split into `out` (atomically) and return its figures.

    Memory grows with the rows the report shows, not with the split: the plan reads a few columns
    of every row, then only the shown rows' evidence is read (parquet row groups holding them),
    and each model's predictions are mapped one at a time for those rows only.

    Args:
        ledger: the decision ledger (LEDGER_COLUMNS), N rows (a table or its parquet file).
        votes: the votes table (VOTES_COLUMNS), same rows.
        manifest: the split's manifest, same rows (paths and boxes).
        models: the split's models; predictions: their (N, 1000) probabilities (.npy files or
            arrays).
        image_root: the split's root (manifest paths are relative to it).
        overlay_dir: explain's overlay folder (None: no CAM overlays).
        duplicates: the duplicates table of the split's `decide.<split>.duplicates.group` (None:
            no group configured; the Duplicates view says so).
    """
    started = time.perf_counter()
    ledger_src = TableSource(ledger, f"ledger of {split!r}")
    votes_src = TableSource(votes, f"votes of {split!r}")
    manifest_src = TableSource(manifest, f"manifest of {split!r}")
    ledger_src.require(LEDGER_COLUMNS)
    votes_src.require(VOTES_COLUMNS)
    manifest_src.require(("image_id", "path", "boxes"))
    _check_aligned(ledger_src, votes_src, manifest_src)
    n = ledger_src.num_rows
    for model, source in zip(models, predictions, strict=True):
        shape = predictions_shape(source)
        if len(shape) != 2 or shape != (n, formats.NUM_CLASSES):
            raise InputError(
                f"predictions of {model} have shape {shape}, expected "
                f"({n}, 1000) in ledger order; re-run `dvc repro predict`"
            )
    ids = ledger_src.columns(["image_id"]).column("image_id").to_numpy(zero_copy_only=False)
    view = duplicate_view(
        duplicates, split=split, ids=ids.astype(object), limit=config.duplicate_groups
    )
    light = ledger_src.columns(PLAN_LEDGER)
    shown, why, pairs = plan_rows(
        light, votes_src.columns(PLAN_VOTES), config=config, duplicates=view.rows
    )
    slot = {int(p): k for k, p in enumerate(shown)}
    ascending = np.sort(shown)
    classes, probs = model_top5(predictions, ascending)
    back = np.searchsorted(ascending, shown)
    top5 = (classes[:, back], probs[:, back])
    shown_ledger = ledger_src.rows(shown, evidence_columns(ledger_src)).to_pandas()
    shown_votes = votes_src.rows(shown, EVIDENCE_VOTES)
    thumbs = manifest_src.rows(ascending, ("path", "boxes")).to_pandas()
    with formats.atomic_folder(out) as tmp:
        (tmp / "data").mkdir()
        for name in ASSET_FILES:
            shutil.copyfile(ASSETS / name, tmp / name)
        no_thumb = write_thumbnails(
            tmp,
            thumbs,
            ascending,
            image_root,
            size=config.thumb_size,
            workers=config.workers,
            aligned=True,
        )
        cams = _copy_cams(
            tmp,
            overlay_dir,
            {str(i): int(p) for i, p in zip(shown_ledger["image_id"], shown)},
            models,
        )
        records = _records(
            shown_ledger, shown_votes, shown, why[shown], top5, models, cams, no_thumb
        )
        sizes, index_bytes = _write_rows(tmp, records, why, config.chunk_rows)
        counts = pd.Series(light.column("action").to_numpy(zero_copy_only=False)).value_counts()
        _write_data(
            tmp,
            "meta",
            {
                "split": split,
                "models": list(models),
                "classes": formats.class_names(),
                "wnids": formats.class_wnids(),
                "rows": n,
                "shown": len(records),
                "chunk_rows": config.chunk_rows,
                "chunks": len(sizes),
                "counts": {str(a): int(counts.get(a, 0)) for a in ACTIONS},
                "secondary": int((why & WHY["secondary"] > 0).sum()),
                "queue_rows": config.queue_rows,
                "queues": _queue_sizes(light, why),
                "why": WHY,
                "pairs": [{**p, "rows": [slot[r] for r in p["rows"]]} for p in pairs],
                "duplicates": _duplicates_meta(view, slot),
            },
        )
    figures = {
        "rows": n,
        "shown": len(records),
        "chunks": len(sizes),
        "max_chunk_bytes": max(sizes, default=0),
        "index_bytes": index_bytes,
        "pairs": len(pairs),
        "duplicate_groups": len(view.groups),
        "no_thumbnail": len(no_thumb),
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info("review %s: %s", split, figures)
    return figures


def evidence_columns(ledger: TableSource) -> tuple[str, ...]:
    """The ledger columns of an evidence record: LEDGER_COLUMNS and those of OPTIONAL_LEDGER
    the ledger has."""
    present = set(ledger.column_names)
    return LEDGER_COLUMNS + tuple(c for c in OPTIONAL_LEDGER if c in present)


def _duplicates_meta(view: DuplicateView, slot: dict[int, int]) -> dict[str, Any]:
    """The Duplicates view in meta.js: the group name (None: not configured), the groups shown
    of all groups holding the split's images, each member's `slot` (its record's index in the
    report; None for other splits' members)."""
    groups = [
        {
            **g,
            "members": [
                {**m, "slot": None if m["pos"] is None else slot[m["pos"]]} for m in g["members"]
            ],
        }
        for g in view.groups
    ]
    return {"group": view.group, "total": view.total, "groups": groups}


def _queue_sizes(ledger: pa.Table, why: np.ndarray) -> dict[str, list[int]]:
    """Queue -> [rows shown, rows in the split] (fix, remove, secondary, exempted, merged,
    override), so the page says how much of each queue a round covers."""
    full = select_rows(ledger, config=ReviewOptions(keep_sample=0, queue_rows=len(why) + 1))
    return {q: [int((why & WHY[q] > 0).sum()), int((full & WHY[q] > 0).sum())] for q in QUEUES}


def record_on_demand(
    position: int,
    *,
    ledger: Path,
    votes: Path,
    models: Sequence[str],
    predictions: Sequence[np.ndarray | Path],
    thumb: Any,
) -> dict[str, Any]:
    """The evidence record of any ledger row, read now (the review server's lookup of an image
    that the report's round does not hold): its ledger and votes rows, each model's top-5 (one
    row of each predictions file), no CAM overlays; `thumb(pos)` names its thumbnail URL."""
    shown = np.array([position], dtype=np.int64)
    top5 = model_top5(predictions, shown)
    source = TableSource(ledger, "ledger")
    return _records(
        source.rows(shown, evidence_columns(source)).to_pandas(),
        TableSource(votes, "votes").rows(shown, EVIDENCE_VOTES),
        shown,
        np.zeros(1, dtype=np.int64),
        top5,
        models,
        {},
        set(),
        thumb=thumb,
    )[0]
