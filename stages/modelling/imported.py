"""Predictions made elsewhere -> the predictions contract: checked row by row against the manifest
(ids, shape, dtype, probabilities), streamed into manifest order (docs/import-predictions.md).
Torch-free, so importing starts in seconds."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.contracts import formats
from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.contracts.params import section
from stages.contracts.probabilities import SUM_TOLERANCE, check_probabilities
from stages.contracts.sidecars import topk_hits
from stages.contracts.splits import Params, SplitEntry

logger = logging.getLogger(__name__)

PROBABILITY_KEYS = ("probabilities", "probs")
STORAGE = {"float32": np.float32, "float16": np.float16}
EXAMPLES = 5


@dataclass(frozen=True)
class Table:
    """A predictions file opened for streaming: its ids and a reader of probability chunks."""

    path: Path
    image_ids: np.ndarray
    dtype: np.dtype
    chunks: Any  # () -> Iterator[(start row, (k, 1000) array)]


def _check_shape(path: Path, shape: tuple[int, ...], n_ids: int) -> None:
    if len(shape) != 2 or shape[1] != formats.NUM_CLASSES:
        raise InputError(
            f"{path}: probabilities have shape {shape}; expected (N, "
            f"{formats.NUM_CLASSES}), one row of the 1000 ImageNet classes per image"
        )
    if shape[0] != n_ids:
        raise InputError(
            f"{path}: {shape[0]} probability rows but {n_ids} image ids; they must "
            "pair up row by row"
        )


def _check_dtype(path: Path, dtype: np.dtype) -> np.dtype:
    if dtype not in SUM_TOLERANCE:  # the dtypes whose rounding the probability check knows
        raise InputError(f"{path}: probabilities are {dtype}; expected float16, float32 or float64")
    return np.dtype(dtype)


def _ids(values: Any, where: str) -> np.ndarray:
    ids = np.asarray(values)
    if ids.ndim != 1 or not (ids.dtype.kind in "UO" or ids.dtype.kind == "S"):
        raise InputError(
            f"{where}: image_id must be a 1-D array of strings, got {ids.dtype} {ids.shape}"
        )
    return np.asarray(
        [i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()], dtype=object
    )


def _npz_array(path: Path, key: str) -> tuple[zipfile.ZipFile, Any, tuple[int, ...], np.dtype]:
    """One array of an .npz opened as a stream positioned at its data: (archive, member, shape,
    dtype). Compressed or not, the rows are then read in chunks, never all at once."""
    archive = zipfile.ZipFile(path)
    member = archive.open(f"{key}.npy")
    version = np.lib.format.read_magic(member)
    reader = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = reader(member)
    if fortran:
        archive.close()
        raise InputError(
            f"{path}: {key} is stored in Fortran order; save a C-ordered array "
            "(np.ascontiguousarray)"
        )
    return archive, member, tuple(shape), np.dtype(dtype)


def _open_npz(path: Path) -> Table:
    with zipfile.ZipFile(path) as archive:
        names = {name.removesuffix(".npy") for name in archive.namelist()}
    key = next((k for k in PROBABILITY_KEYS if k in names), None)
    if "image_id" not in names or key is None:
        raise InputError(
            f"{path}: an .npz needs arrays `image_id` and `probabilities` (or `probs`); "
            f"it has {sorted(names)}. Save it with np.savez(path, image_id=ids, "
            "probabilities=probs)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = _ids(data["image_id"], f"{path}: image_id")
    except ValueError as error:  # an object array needs pickle, which is never loaded
        raise InputError(
            f"{path}: image_id could not be read without pickle ({error}); save the "
            "ids as a string array (np.asarray(ids, dtype=str))"
        ) from error
    archive, _, shape, dtype = _npz_array(path, key)
    archive.close()
    _check_shape(path, shape, len(ids))
    dtype = _check_dtype(path, dtype)

    def chunks() -> Iterator[tuple[int, np.ndarray]]:
        archive, member, _, _ = _npz_array(path, key)
        with archive, member:
            for start in range(0, shape[0], formats.CHUNK_ROWS):
                rows = min(formats.CHUNK_ROWS, shape[0] - start)
                data = member.read(rows * formats.NUM_CLASSES * dtype.itemsize)
                yield start, np.frombuffer(data, dtype=dtype).reshape(rows, formats.NUM_CLASSES)

    return Table(path, ids, dtype, chunks)


def _open_npy(path: Path, image_ids: Path | None) -> Table:
    if image_ids is None:
        raise InputError(
            f"{path}: a .npy holds no image ids, so its rows cannot be matched to the "
            "manifest; pass --image-ids <file with one id per line, same order>, or "
            "save an .npz with `image_id` and `probabilities` arrays"
        )
    if not image_ids.is_file():
        raise MissingInputError(f"image id file {image_ids} does not exist")
    ids = np.asarray(
        [line.strip() for line in image_ids.read_text().splitlines() if line.strip()], dtype=object
    )
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    _check_shape(path, array.shape, len(ids))
    dtype = _check_dtype(path, array.dtype)

    def chunks() -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(array), formats.CHUNK_ROWS):
            yield start, np.asarray(array[start : start + formats.CHUNK_ROWS])

    return Table(path, ids, dtype, chunks)


def _open_parquet(path: Path) -> Table:
    schema = pq.read_schema(path)
    key = next((k for k in PROBABILITY_KEYS if k in schema.names), None)
    if "image_id" not in schema.names or key is None:
        raise InputError(
            f"{path}: a parquet file needs columns `image_id` and `probabilities` (a "
            f"list of {formats.NUM_CLASSES} floats per row); it has {schema.names}"
        )
    kind = schema.field(key).type
    if not (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ) or not pa.types.is_floating(kind.value_type):
        raise InputError(f"{path}: column `{key}` is {kind}; expected a list of floats")
    ids = _ids(
        pq.read_table(path, columns=["image_id"]).column("image_id").to_numpy(zero_copy_only=False),
        f"{path}: image_id",
    )
    dtype = _check_dtype(path, np.dtype(kind.value_type.to_pandas_dtype()))

    def chunks() -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        for batch in pq.ParquetFile(path).iter_batches(
            batch_size=formats.CHUNK_ROWS, columns=[key]
        ):
            column = batch.column(0)
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(lengths != formats.NUM_CLASSES)
            if len(bad):
                raise InputError(
                    f"{path}: row {start + bad[0]} ({ids[start + bad[0]]}) has "
                    f"{lengths[bad[0]]} probabilities; expected {formats.NUM_CLASSES}"
                )
            values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
            yield start, values.reshape(len(batch), formats.NUM_CLASSES)
            start += len(batch)

    return Table(path, ids, dtype, chunks)


def open_predictions(path: str | Path, *, image_ids: str | Path | None = None) -> Table:
    """Open a predictions file (see the module doc) for streaming.

    Raises:
        MissingInputError: the file does not exist. InputError: unsupported type or layout.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"predictions file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _open_npz(path)
    if suffix == ".npy":
        return _open_npy(path, Path(image_ids) if image_ids else None)
    if suffix == ".parquet":
        return _open_parquet(path)
    raise InputError(
        f"{path}: unsupported file type {suffix!r}; give an .npz (image_id + "
        "probabilities arrays), a .parquet (image_id + probabilities columns) or an "
        ".npy with --image-ids"
    )


def _examples(values: Collection[Any]) -> str:
    """Up to EXAMPLES values as quoted plain strings (never numpy reprs), then how many more."""
    shown = ", ".join(repr(str(v)) for v in list(values)[:EXAMPLES])
    return shown + (f" and {len(values) - EXAMPLES} more" if len(values) > EXAMPLES else "")


def match_rows(image_ids: np.ndarray, manifest: pd.DataFrame, *, where: str) -> np.ndarray:
    """File row -> manifest row, refusing unknown, duplicate and missing ids.

    image_ids: (N,) the file's ids. Returns (N,) int64 manifest positions.

    Raises:
        InputError: naming some unknown, duplicate or missing (usable) ids and the fix.
    """
    index = pd.Index(manifest["image_id"])
    positions = index.get_indexer(pd.Index(image_ids))
    unknown = image_ids[positions < 0]
    if len(unknown):
        raise InputError(
            f"{where}: {len(unknown)} image ids are not in the manifest, e.g. "
            f"{_examples(unknown)}; the predictions belong to another split or "
            "another ingest of it"
        )
    counts = np.bincount(positions, minlength=len(manifest))
    if (counts > 1).any():
        twice = manifest["image_id"].to_numpy()[counts > 1]
        raise InputError(
            f"{where}: {len(twice)} image ids appear more than once, e.g. "
            f"{_examples(twice)}; keep one row per image"
        )
    usable = manifest["skip_reason"].isna().to_numpy()
    missing = manifest["image_id"].to_numpy()[(counts == 0) & usable]
    if len(missing):
        raise InputError(
            f"{where}: {len(missing)} of the manifest's {int(usable.sum())} usable "
            f"images have no row, e.g. {_examples(missing)}; predict every usable "
            "image (skip rows may be left out)"
        )
    return positions.astype(np.int64)


def import_predictions(
    table: Table, manifest: pd.DataFrame, out: str | Path, *, dtype: str = "float32"
) -> tuple[int, int, int, int]:
    """Write `out` (N, 1000) in manifest row order from an opened predictions file.

    Returns:
        (top-1 hits, top-5 hits, rows scored, n_skipped) over the usable rows with a label.
    """
    where = str(table.path)
    positions = match_rows(table.image_ids, manifest, where=where)
    usable = manifest["skip_reason"].isna().to_numpy()
    labels = pd.to_numeric(manifest["label"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    hits, scored = np.zeros(2, dtype=np.int64), 0
    with formats.atomic_path(out) as tmp:
        array = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=STORAGE[dtype], shape=(len(manifest), formats.NUM_CLASSES)
        )
        array[~usable] = np.nan
        for start, probs in table.chunks():
            targets = positions[start : start + len(probs)]
            keep = usable[targets]
            rows = np.arange(start, start + len(probs))[keep]
            kept, destination = probs[keep], targets[keep]
            check_probabilities(
                kept, rows=rows, where=where, dtype=table.dtype, ids=table.image_ids[rows]
            )
            array[destination] = kept
            chunk_hits, chunk_scored = topk_hits(
                kept, labels[destination], np.ones(len(kept), dtype=bool)
            )
            hits, scored = hits + chunk_hits, scored + chunk_scored
        array.flush()
        del array
    return int(hits[0]), int(hits[1]), scored, int((~usable).sum())


@dataclass(frozen=True)
class ImportConfig:
    """What `import-predictions` reads: the split, the model (its `models:` spec for the sidecar),
    the storage dtype (`predict.dtype`) and whether DVC's predict matrix owns the result."""

    split: str
    model: str
    spec: str | None
    dtype: str
    in_matrix: bool

    @classmethod
    def from_params(cls, params: Params, split: str, model: str) -> ImportConfig:
        """Raises ConfigError for an unknown split or model or a bad `predict.dtype`."""
        SplitEntry.from_params(params, split)
        entry = (params.get("models") or {}).get(model)
        if not isinstance(entry, dict):
            raise ConfigError(
                f"model {model!r} is not defined under `models:` in params.yaml; add "
                f"`models.{model}.spec` (the timm spec, or where the predictions "
                "came from) so the sidecar and vote can name it"
            )
        predict = section(params, "predict")
        dtype = predict.get("dtype", "float32")
        if dtype not in STORAGE:
            raise ConfigError(
                f"params.yaml `predict.dtype` must be one of {sorted(STORAGE)}, got {dtype!r}"
            )
        in_matrix = split in (predict.get("splits") or []) and model in (
            predict.get("models") or []
        )
        return cls(split, model, entry.get("spec"), dtype, in_matrix)


def dvc_commit(stage: str) -> None:
    """Record the imported outputs as `stage`'s with DVC's CLI (`dvc commit -f <stage>`).

    Raises:
        InputError: DVC refused (its message is included); the files stay in place.
    """
    dvc = shutil.which("dvc")
    command = (
        [dvc, "commit", "-f", stage]
        if dvc
        else [sys.executable, "-m", "dvc", "commit", "-f", stage]
    )
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise InputError(
            f"the predictions are in place, but `dvc commit -f {stage}` failed: "
            f"{message[-1] if message else result.returncode}; run it yourself once "
            "that is fixed, or `dvc repro` will predict again"
        )
    logger.info("recorded the import as DVC stage %s (dvc commit -f %s)", stage, stage)
