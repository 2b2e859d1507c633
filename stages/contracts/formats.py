"""Data contracts shared by the stages: file locations, table schemas and atomic writers.

Every writer here writes to a temporary file beside the target and renames it into place, so an
interrupted stage never leaves a half-written output under its final name. Tables are written
with fixed schemas and without pandas' version-stamped metadata, so the same inputs give the same
bytes; the one piece of it kept is the dtype of nullable integer columns, written by hand, so that
`pandas.read_parquet` reads them as pandas' `Int32` (not float64 with NaN).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.contracts.errors import InputError, MissingInputError

NUM_CLASSES = 1000

CHUNK_ROWS = 16_384
"""Rows of an (N, 1000) predictions file the streaming readers read at a time (64 MB of float32)."""

BOX = pa.list_(pa.list_(pa.int32(), 4))

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.int32()),
        ("wnid", pa.string()),
        ("boxes", BOX),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("skip_reason", pa.string()),
        ("sha256", pa.string()),
    ]
)
"""`data/manifests/<split>.parquet`: one row per image file found. `skip_reason` is null for usable
rows; a skipped file keeps its row (label/wnid where known) so counts reconcile downstream.
`sha256` is the digest of the image's bytes (null when they cannot be read), so a changed image
changes the manifest and DVC re-runs the stages that read the pixels (predict, explain, review)."""

LEDGER_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.int32()),
        ("action", pa.string()),
        ("new_label", pa.int32()),
        ("cl_candidates", pa.list_(pa.int32())),
        ("top5_misses", pa.int32()),
        ("exempted", pa.bool_()),
        ("reason", pa.string()),
        ("secondary_labels", pa.list_(pa.int32())),
        ("confidence", pa.float32()),
        ("review", pa.bool_()),
        ("duplicate_group", pa.int32()),
        ("issues", pa.list_(pa.string())),
    ]
)
"""The decision ledger contract (DESIGN.md). Stages may append more columns after these; readers
ignore columns they do not know. Additive columns, each documented when it landed:
`secondary_labels` (the multi-label-aware release) lists other classes the evidence supports for an
image that shows several (empty for most rows); `confidence` (the expected-benefit release) is the
estimated probability that the decision is right (keep: the label is right; fix: the new label is;
remove: the label is wrong; 1.0 for a human override; null for skip rows and earlier removals);
`review` marks rows the strategy left as they are but queues for a person (the review page shows
them first); `duplicate_group` (the duplicates release, nullable) is the image's `group` in
`data/duplicates/<decide.<split>.duplicates.group>.parquet`; `issues` lists its image-quality
findings (dark, blurry, low_information, grayscale, odd_size, odd_aspect, outlier; empty for most
rows and when the split has no duplicates group)."""

VOTES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.int32()),
        ("original_label", pa.int32()),
        ("iteration", pa.int32()),
        ("inactive_reason", pa.string()),
        ("cl_candidates", pa.list_(pa.int32())),
        ("cl_models", pa.list_(pa.string())),
        ("top5_misses", pa.int32()),
        ("top5_hit_models", pa.list_(pa.string())),
        ("n_models", pa.int32()),
        ("ensemble_top", pa.list_(pa.int32())),
        ("ensemble_probs", pa.list_(pa.float32())),
        ("label_prob", pa.float32()),
        ("model_top1", pa.list_(pa.int32())),
        ("label_posterior", pa.float32()),
        ("best_other", pa.int32()),
        ("best_other_posterior", pa.float32()),
        ("noise_rate", pa.float32()),
    ]
)
"""`data/votes/<split>.parquet`: one row per manifest row, manifest order (contracts). From
`ensemble_top` on, the ensemble's evidence over every model x view (`stages.method.evidence`): the
five most probable classes of the ensemble's probabilities q, best first, with their
probabilities; q of the current label; each model's top-1 class (its views pooled); the posterior
probability that the label is the image's true class; the most probable other class and its
posterior; the split's label-noise rate that posterior assumes. Evidence fields are null (empty
lists) on inactive rows."""

CAMS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("model", pa.string()),
        ("gradcam", pa.float64()),
        ("gradcampp", pa.float64()),
        ("scorecam", pa.float64()),
        ("methods_passed", pa.int32()),
        ("exempted", pa.bool_()),
    ]
)
"""`data/cams/<split>.parquet`: one row per (candidate, model whose top-5 holds the label)."""

LEDGER_EXTRAS = [
    ("original_label", pa.int32()),
    ("iteration", pa.int32()),
    ("merged", pa.bool_()),
    ("override", pa.bool_()),
    ("exemptions", pa.int32()),
]
LEDGER_FULL_SCHEMA = pa.schema(list(LEDGER_SCHEMA) + [pa.field(n, t) for n, t in LEDGER_EXTRAS])
"""The ledger as written: the contract columns, then original_label, iteration, merged, override,
exemptions (number of models whose CAMs exempted the row)."""
LEDGER_NULLABLE_INTEGERS = ("new_label", "duplicate_group")
"""Ledger integer columns with nulls (`new_label` on remove and skip rows, `duplicate_group` outside
every group): the file records them as nullable, so `pandas.read_parquet` gives pandas' `Int32`
(`<NA>` for null) and `datasets` gives `Value("int32")` with None, never float64."""

CLEAN_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.int32()),
        ("original_label", pa.int32()),
        ("secondary_labels", pa.list_(pa.int32())),
        ("wnid", pa.string()),
        ("action", pa.string()),
        ("placeholder", pa.bool_()),
        ("merged", pa.bool_()),
        ("boxes", BOX),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("iteration", pa.int32()),
    ]
)
"""`data/clean/<split>.parquet`: kept and fixed rows, then a placeholder per emptied merge class."""

PLACEHOLDER_SIZE = 224
"""Side of the black RGB placeholder image of a class emptied by the merges."""


_UMASK = os.umask(0)
os.umask(_UMASK)


def manifest_path(split: str) -> Path:
    """Where `ingest` writes a split's manifest."""
    return Path("data/manifests") / f"{split}.parquet"


def predictions_path(split: str, model: str, view: str = "full") -> Path:
    """Where `predict` writes a model's (N, 1000) probabilities for a split through one view
    (`predict.views`): `data/predictions/<split>/<model>.<view>.npy`."""
    return Path("data/predictions") / split / f"{model}.{view}.npy"


def sidecar_path(split: str, model: str, view: str = "full") -> Path:
    """The JSON sidecar describing a predictions file."""
    return predictions_path(split, model, view).with_suffix(".json")


def embeddings_path(split: str, model: str) -> Path:
    """Where `embed` writes a model's (N, D) float16 pooled features (sidecar `<model>.json`)."""
    return Path("data/embeddings") / split / f"{model}.npy"


def features_path(split: str, model: str, view: str = "full") -> Path:
    """Where `predict` writes a model's (N, D) float16 features through one view when
    `predict.embeddings` is on (else a (N, 0) placeholder):
    `data/embeddings/<split>/<model>.<view>.npy` (sidecar `<model>.<view>.json`)."""
    return Path("data/embeddings") / split / f"{model}.{view}.npy"


def fingerprints_path(split: str) -> Path:
    """Where `embed` writes a split's image fingerprints (pixel hash, pHash, quality scores)."""
    return Path("data/fingerprints") / f"{split}.parquet"


def duplicates_path(group: str) -> Path:
    """Where `duplicates` writes a group's members table."""
    return Path("data/duplicates") / f"{group}.parquet"


def duplicate_issues_path(group: str) -> Path:
    """Where `duplicates` writes the quality issues and nearest neighbour of a group's images."""
    return Path("data/duplicates") / f"{group}.issues.parquet"


def votes_path(split: str) -> Path:
    """Where `vote` writes a split's votes table."""
    return Path("data/votes") / f"{split}.parquet"


def cams_path(split: str) -> Path:
    """Where `explain` writes a split's CAM rows."""
    return Path("data/cams") / f"{split}.parquet"


def ledger_path(split: str) -> Path:
    """Where `decide` writes a split's decision ledger."""
    return Path("data/decisions") / f"{split}.parquet"


def clean_path(split: str) -> Path:
    """Where `decide` writes a split's clean label table."""
    return Path("data/clean") / f"{split}.parquet"


def metrics_path(split: str) -> Path:
    """Where `evaluate` writes a split's metrics JSON."""
    return Path("metrics") / f"{split}.json"


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside `target` (or in the folder `within`, on the same file
    system: a kill then leaves nothing in target's folder); it becomes `target` only if the block
    succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.",
        suffix=".tmp",
        dir=within if within is not None else target.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def nullable_integer_metadata(schema: pa.Schema, columns: Sequence[str]) -> dict[bytes, bytes]:
    """The part of pandas' parquet metadata that makes `pandas.read_parquet` read `columns` as
    nullable integers (`Int32` for int32, ...), with nothing version-specific in it.

    Raises:
        ValueError: a column that is not in `schema`, or not of an integer type.
    """
    entries = []
    for name in columns:
        if name not in schema.names or not pa.types.is_integer(schema.field(name).type):
            raise ValueError(
                f"nullable integer column {name!r} is not an integer column of the table "
                f"({schema}); name only integer columns"
            )
        kind = schema.field(name).type
        dtype = f"{'U' if pa.types.is_unsigned_integer(kind) else ''}Int{kind.bit_width}"
        entries.append(
            {
                "name": name,
                "field_name": name,
                "pandas_type": str(kind),
                "numpy_type": dtype,
                "metadata": None,
            }
        )
    if not entries:
        return {}
    meta = {"index_columns": [], "column_indexes": [], "columns": entries}
    return {b"pandas": json.dumps(meta, sort_keys=True).encode()}


def write_table(
    table: pa.Table | pd.DataFrame,
    target: str | os.PathLike[str],
    *,
    schema: pa.Schema | None = None,
    nullable_integers: Sequence[str] = (),
) -> None:
    """Atomically write a parquet file with a fixed schema and no pandas index metadata;
    `nullable_integers` name integer columns with nulls that pandas should read as `Int32`."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    elif schema is not None:
        table = table.cast(schema)
    table = table.replace_schema_metadata(
        nullable_integer_metadata(table.schema, nullable_integers) or None
    )
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | os.PathLike[str], *, what: str = "table") -> pd.DataFrame:
    """Read a parquet file, with an error that names the stage that should have written it."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{what} {path} does not exist; run the stage that writes it first")
    frame: pd.DataFrame = pq.read_table(path).to_pandas()
    return frame


def read_manifest(split: str, *, path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read a split's manifest (every file found; `skip_reason` marks unusable ones), checked
    against the manifest contract, so a hand-edited file fails here, naming the problem.

    Raises:
        MissingInputError: no manifest (run ingest).
        InputError: a column missing or of another type, an empty `skip_reason` (use null for
            usable rows), a usable row without a label, or repeated image ids.
    """
    path = Path(path or manifest_path(split))
    if not path.is_file():
        raise MissingInputError(
            f"manifest of split {split!r} {path} does not exist; run "
            f"`dvc repro ingest@{split}` first"
        )
    schema = pq.read_schema(path)
    for field in MANIFEST_SCHEMA:
        if field.name not in schema.names:
            raise InputError(f"{path}: lacks the manifest column {field.name!r}; re-run ingest")
        if not _compatible(schema.field(field.name).type, field.type):
            raise InputError(
                f"{path}: column {field.name!r} is {schema.field(field.name).type}, "
                f"the manifest contract says {field.type}; re-run ingest instead of "
                "editing the file"
            )
    manifest: pd.DataFrame = pq.read_table(path).to_pandas()
    problems = {
        "an empty skip_reason (usable rows have null)": manifest["skip_reason"].eq(""),
        "a usable row without a label": manifest["skip_reason"].isna() & manifest["label"].isna(),
        "a repeated image_id": manifest["image_id"].duplicated(),
    }
    for what, rows in problems.items():
        if rows.any():
            first = manifest["image_id"].iloc[int(rows.to_numpy().argmax())]
            raise InputError(
                f"{path}: {what} ({int(rows.sum())} rows, e.g. image_id {first!r}); "
                "re-run ingest instead of editing the file"
            )
    return manifest


def _compatible(found: pa.DataType, wanted: pa.DataType) -> bool:
    """Whether a column type can hold the contract's values (string/large_string, any integer
    width, any list flavour, and all-null columns are alike)."""
    if pa.types.is_null(found):
        return True
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if any(is_list(wanted) for is_list in lists):
        return any(is_list(found) for is_list in lists) and _compatible(
            found.value_type, wanted.value_type
        )
    for family in ((pa.types.is_string, pa.types.is_large_string), (pa.types.is_integer,)):
        if any(test(wanted) for test in family):
            return any(test(found) for test in family)
    return bool(found.equals(wanted))


def check_votes(votes: pd.DataFrame, manifest: pd.DataFrame) -> None:
    """Raise ValueError unless `votes` has the votes contract's columns and one row per manifest
    row in the manifest's image_id order (both are read by explain and decide)."""
    missing = [c for c in VOTES_SCHEMA.names if c not in votes.columns]
    if missing:
        raise InputError(f"votes table lacks columns {missing}; re-run `dvc repro vote`")
    if len(votes) != len(manifest) or not np.array_equal(
        votes["image_id"].to_numpy(), manifest["image_id"].to_numpy()
    ):
        raise InputError(
            f"votes ({len(votes)} rows) do not align with the manifest "
            f"({len(manifest)} rows, same image_id order); re-run `dvc repro vote`"
        )


def image_ids_sha256(image_ids: Any) -> str:
    """The digest of a split's row order, recorded in every predictions sidecar as
    `image_ids_sha256` so that readers can refuse predictions whose rows are not the manifest's."""
    digest = hashlib.sha256()
    for image_id in image_ids:
        digest.update(str(image_id).encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def percent(hits: int, total: int) -> float | None:
    """Hits / total in percent, rounded to 4 places (None when nothing was counted)."""
    return None if total == 0 else round(100.0 * hits / total, 4)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB blocks (weights and inputs can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(
    data: Any, target: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None
) -> None:
    """Atomically write deterministic, human-readable JSON (temporary file: see `atomic_path`)."""
    with atomic_path(target, within=within) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_npy(array: np.ndarray, target: str | os.PathLike[str]) -> None:
    """Atomically write a .npy file."""
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def load_predictions(
    split: str, model: str, *, view: str = "full", path: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """Memory-map a model's predictions for a split (one view): (N, 1000), float32 or float16."""
    path = Path(path or predictions_path(split, model, view))
    if not path.is_file():
        raise MissingInputError(
            f"predictions {path} do not exist; run `imagenet-clean predict "
            f"--split {split} --model {model} --view {view}` first"
        )
    predictions: np.ndarray = np.load(path, mmap_mode="r")
    return predictions


def read_synsets(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Read `LOC_synset_mapping.txt`-style lines ("wnid name, name") -> (wnids, names)."""
    wnids, names = [], []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            wnids.append(wnid)
            names.append(name)
    return wnids, names


def class_names() -> list[str]:
    """The 1000 ILSVRC2012 class names in sorted-wnid order (class index order)."""
    return read_synsets(Path(__file__).with_name("synsets.txt"))[1]


def class_wnids() -> list[str]:
    """The 1000 ILSVRC2012 wnids in sorted order: index = class label."""
    return read_synsets(Path(__file__).with_name("synsets.txt"))[0]


@functools.lru_cache(maxsize=1)
def _short_names() -> tuple[str, ...]:
    return tuple(name.split(",")[0].strip() for name in class_names())


@functools.lru_cache(maxsize=1)
def wnid_index() -> dict[str, int]:
    """Wnid -> class index."""
    return {wnid: i for i, wnid in enumerate(class_wnids())}


def parse_class(value: Any) -> int | None:
    """A class index from an int 0..999, a string of plain digits ("123") or a wnid
    ("n01440764"); None for anything else (booleans, floats, "1_0", "+3", " 1e2")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < NUM_CLASSES else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text in wnid_index():
        return wnid_index()[text]
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if 0 <= number < NUM_CLASSES else None


def nullable_ints(values: np.ndarray) -> pd.arrays.IntegerArray:
    """float64 with NaN for null -> a nullable Int32 array (for label columns)."""
    return pd.arrays.IntegerArray(np.nan_to_num(values, nan=0).astype(np.int32), np.isnan(values))


def class_label(index: int) -> str:
    """`396 (lionfish)`: a class index with the first of its names, for reasons people read."""
    return f"{int(index)} ({_short_names()[int(index)]})"


def atomic_leftovers(target: str | os.PathLike[str]) -> list[Path]:
    """The folders killed `atomic_folder(target)` runs left beside `target` (sorted): their work
    folders `.<name>.XXXXXXXX.tmp` and previous folders mid-swap `.<name>.XXXXXXXX.old`
    (tempfile.mkdtemp's names). Only safe to remove while no other build of `target` runs."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.(tmp|old)$")
    return [
        path
        for path in sorted(target.parent.iterdir())
        if pattern.match(path.name) and path.is_dir() and not path.is_symlink()
    ]


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; swap it into place only if the block succeeds
    (the previous folder stays untouched on failure)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(
            f"output {target} exists and is not a folder; remove it or pass another --out"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if old.exists():
                os.replace(old, target)
            raise
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)
