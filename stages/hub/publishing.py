"""A Hub dataset repository folder from the cleaned splits and ledgers: parquet shards of two
configs (`default`: the cleaned split; `ledger`: every decision) and the dataset card, written
atomically (docs/publish.md)."""

from __future__ import annotations

import functools
import io
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from PIL import Image as PILImage
from tqdm import tqdm

from stages.contracts import formats
from stages.contracts.actions import KEPT
from stages.contracts.config import from_section, positive, require
from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.contracts.params import section
from stages.contracts.splits import Params, SplitEntry
from stages.hub.card import render_card
from stages.hub.card_inputs import CardContext, SplitSummary, card_context, summarize_split
from stages.hub.repo import REPO_ID, exclusive_build
from stages.hub.shards import (
    HEADROOM,
    LEDGER_LABEL_LISTS,
    datasets_bars_off,
    default_features,
    hub_class_names,
    ledger_features,
    plan_shards,
    shard_overhead,
    write_shard,
)
from stages.sources import images

logger = logging.getLogger(__name__)

CLEAN_COLUMNS = (
    "image_id",
    "path",
    "label",
    "original_label",
    "wnid",
    "action",
    "placeholder",
    "merged",
    "boxes",
    "width",
    "height",
    "iteration",
)
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")


@dataclass(frozen=True)
class PublishOptions:
    """Options of the publish stage (params.yaml `publish:`)."""

    splits: tuple[str, ...] = ("val",)
    mode: str = "labels"
    include_placeholders: bool = False
    max_shard_bytes: int = 500_000_000
    repo_id: str = "imagenet-clean/imagenet-clean"
    push: bool = False
    dry_run: bool = False
    private: bool = True

    def __post_init__(self) -> None:
        require(
            bool(self.splits) and len(set(self.splits)) == len(self.splits),
            "publish.splits",
            "a non-empty list of distinct split names",
            list(self.splits),
        )
        require(self.mode in MODES, "publish.mode", f"one of {', '.join(MODES)}", self.mode)
        positive("publish.max_shard_bytes", self.max_shard_bytes)
        require(
            bool(REPO_ID.match(str(self.repo_id))), "publish.repo_id", "'owner/name'", self.repo_id
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PublishOptions:
        """From params.yaml `publish:` (ConfigError for unknown keys, with close matches)."""
        return from_section(cls, section(dict(params), "publish"), where="publish")


@dataclass(frozen=True)
class SplitInputs:
    """Where one published split's tables come from."""

    name: str
    manifest: Path
    ledger: Path
    clean: Path
    root: Path
    metrics: Path | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any], split: str) -> SplitInputs:
        """The split's files at their contract paths; its root from `splits.<split>.root`."""
        root = Path(SplitEntry.from_params(params, split).root)
        return cls(
            split,
            formats.manifest_path(split),
            formats.ledger_path(split),
            formats.clean_path(split),
            root,
            formats.metrics_path(split),
        )


@dataclass(frozen=True)
class PublishConfig:
    """Everything publish reads: the `publish:` options, each published split's inputs and the
    card's provenance."""

    options: PublishOptions
    inputs: tuple[SplitInputs, ...]
    context: CardContext

    @classmethod
    def from_params(cls, params: Params) -> PublishConfig:
        """Raises ConfigError for a bad `publish:` section or a published split's entry."""
        options = PublishOptions.from_params(params)
        return cls(
            options,
            tuple(SplitInputs.from_params(params, s) for s in options.splits),
            card_context(params, repo_id=options.repo_id),
        )


@dataclass(frozen=True)
class HubFolder:
    """A built repository folder: its files (relative, sorted) and rows per config and split."""

    path: Path
    iteration: int
    files: tuple[str, ...]
    rows: Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class Mode:
    """How a mode publishes the `default` config's pixels."""

    images: bool
    row_bytes: Callable[[pa.Table, Path], np.ndarray]
    attach: Callable[[pa.Table, Path], pa.Table]


@functools.lru_cache(maxsize=1)
def placeholder_png() -> bytes:
    """The image of a placeholder row: a black 224x224 RGB PNG (same bytes every call)."""
    buffer = io.BytesIO()
    PILImage.new("RGB", (formats.PLACEHOLDER_SIZE, formats.PLACEHOLDER_SIZE)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def _locate(root: Path, path: str) -> Path | tuple[Path, int]:
    where = images.resolve(root, path)
    missing = where[0] if isinstance(where, tuple) else where
    if not missing.is_file():
        raise MissingInputError(
            f"image {path!r} not found under {root}; `images` mode reads the "
            f"files from splits.<split>.root: point it at the ingested source"
        )
    return where


def _image_bytes(root: Path, path: str) -> bytes:
    where = _locate(root, path)
    if isinstance(where, tuple):  # a row of a Hub parquet shard (hf-parquet layout)
        return images.shard_image_bytes(where[0], where[1])
    return where.read_bytes()


def _image_size(root: Path, path: str) -> int:
    where = _locate(root, path)
    return len(_image_bytes(root, path)) if isinstance(where, tuple) else where.stat().st_size


def _table_row_bytes(table: pa.Table, root: Path) -> np.ndarray:
    """(N,) estimated bytes per row: the table's in-memory size spread evenly over its rows."""
    rows = table.num_rows
    return np.full(rows, table.nbytes / rows if rows else 0.0)


def _image_row_bytes(table: pa.Table, root: Path) -> np.ndarray:
    """(N,) the table's per-row size plus each row's image file size (placeholders: the PNG)."""
    sizes = [
        len(placeholder_png()) if path is None else _image_size(root, path)
        for path in table.column("path").to_pylist()
    ]
    return _table_row_bytes(table, root) + np.asarray(sizes, dtype=np.float64)


def _no_pixels(table: pa.Table, root: Path) -> pa.Table:
    return table


def _embed_images(table: pa.Table, root: Path) -> pa.Table:
    """Prepend an `image` column (struct of bytes and file name) with each row's original bytes;
    rows without a path (placeholders) get the black PNG."""
    column = []
    ids, paths = table.column("image_id").to_pylist(), table.column("path").to_pylist()
    for image_id, path in zip(ids, paths, strict=True):
        if path is None:
            column.append({"bytes": placeholder_png(), "path": f"{image_id}.png"})
        else:
            name = PurePosixPath(path).name if "#" not in path else str(image_id)
            column.append({"bytes": _image_bytes(root, path), "path": name})
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return table.add_column(0, "image", pa.array(column, type=kind))


MODES: dict[str, Mode] = {
    "labels": Mode(images=False, row_bytes=_table_row_bytes, attach=_no_pixels),
    "images": Mode(images=True, row_bytes=_image_row_bytes, attach=_embed_images),
}


def _read(path: Path, what: str, stage: str, split: str) -> pa.Table:
    if not Path(path).is_file():
        raise MissingInputError(
            f"{what} {path} does not exist; run `imagenet-clean {stage} "
            f"--split {split}` (or `dvc repro`) first"
        )
    return pq.read_table(path)


def default_table(
    inputs: SplitInputs, *, include_placeholders: bool, ledger: pa.Table | None = None
) -> pa.Table:
    """The cleaned split's published rows (contract columns, in order, then `secondary_labels`
    from the cleaned split, else from the ledger by image_id, else empty, then the ledger's
    `duplicate_group` by image_id, null outside groups), placeholders optional."""
    table = _read(inputs.clean, "cleaned split", "decide", inputs.name)
    missing = [name for name in CLEAN_COLUMNS if name not in table.column_names]
    if missing:
        raise InputError(
            f"cleaned split {inputs.clean} lacks columns {missing}; re-run "
            f"`imagenet-clean decide --split {inputs.name}`"
        )
    if not include_placeholders:
        table = table.filter(pc.invert(pc.fill_null(table.column("placeholder"), False)))
    return (
        table.select(list(CLEAN_COLUMNS))
        .append_column("secondary_labels", _secondary_labels(table, ledger))
        .append_column("duplicate_group", _duplicate_groups(table, ledger))
    )


def _duplicate_groups(table: pa.Table, ledger: pa.Table | None) -> pa.ChunkedArray:
    """(N,) int32 for the rows of `table`: the ledger's `duplicate_group` by image_id; null for
    rows in no group, placeholders, and a ledger written before the duplicates release."""
    if ledger is None or "duplicate_group" not in ledger.column_names:
        return pa.chunked_array([pa.nulls(table.num_rows, pa.int32())])
    positions = pc.index_in(table.column("image_id"), value_set=ledger.column("image_id"))
    return ledger.column("duplicate_group").cast(pa.int32()).take(positions)


def _secondary_labels(table: pa.Table, ledger: pa.Table | None) -> pa.ChunkedArray:
    """(N,) list<int32> for the rows of `table`: its own column, else the ledger's by image_id
    (a cleaned split written before secondary labels); rows without any (placeholders) get []."""
    kind = pa.list_(pa.int32())
    (name,) = LEDGER_LABEL_LISTS
    if name in table.column_names or ledger is None:
        column = (
            table.column(name)
            if name in table.column_names
            else pa.chunked_array([pa.nulls(table.num_rows)])
        )
    else:
        positions = pc.index_in(table.column("image_id"), value_set=ledger.column("image_id"))
        column = ledger.column(name).take(positions)
    return pc.if_else(pc.is_null(column.cast(kind)), pa.scalar([], type=kind), column.cast(kind))


def ledger_table(inputs: SplitInputs) -> pa.Table:
    """Every ledger row with its evidence, plus the manifest's `path` (rows align by contract)."""
    ledger = _read(inputs.ledger, "decision ledger", "decide", inputs.name)
    manifest = _read(inputs.manifest, "manifest", "ingest", inputs.name)
    missing = [name for name in formats.LEDGER_SCHEMA.names if name not in ledger.column_names]
    if missing:
        raise InputError(f"decision ledger {inputs.ledger} lacks columns {missing}; re-run decide")
    if ledger.num_rows != manifest.num_rows or not ledger.column("image_id").equals(
        manifest.column("image_id")
    ):
        raise InputError(
            f"decision ledger {inputs.ledger} ({ledger.num_rows} rows) does not align "
            f"with manifest {inputs.manifest} ({manifest.num_rows} rows) by image_id; "
            f"re-run `imagenet-clean decide --split {inputs.name}`"
        )
    if "path" in ledger.column_names:
        return ledger
    return ledger.append_column("path", manifest.column("path"))


def _write_split(
    folder: Path,
    config: str,
    split: str,
    table: pa.Table,
    features: Features,
    mode: Mode,
    root: Path,
    max_shard_bytes: int,
) -> SplitInfo:
    overhead = shard_overhead(features)
    if max_shard_bytes <= overhead:
        raise ConfigError(
            f"max_shard_bytes={max_shard_bytes} leaves no room for rows: every "
            f"{config} shard takes {overhead} bytes of schema and footer; raise it"
        )
    ranges = plan_shards(
        mode.row_bytes(table, root), int((max_shard_bytes - overhead) * (1 - HEADROOM))
    )
    num_bytes = 0
    with tqdm(total=table.num_rows, desc=f"publish {config}/{split}", unit="row") as bar:
        for index, (start, stop) in enumerate(ranges):
            shard = mode.attach(table.slice(start, stop - start), root)
            name = f"{split}-{index:05d}-of-{len(ranges):05d}.parquet"
            num_bytes += write_shard(shard, features, folder / "data" / config / name)
            bar.update(stop - start)
    logger.info("%s/%s: %d rows in %d shard(s)", config, split, table.num_rows, len(ranges))
    return SplitInfo(name=split, num_bytes=num_bytes, num_examples=table.num_rows)


def _check_build(
    splits: Sequence[SplitInputs], mode: str, include_placeholders: bool, max_shard_bytes: int
) -> None:
    if not splits or not all(isinstance(item, SplitInputs) for item in splits):
        raise TypeError(f"splits must be a non-empty sequence of SplitInputs, got {splits!r}")
    names = [item.name for item in splits]
    if len(set(names)) != len(names):
        raise ValueError(f"split names must be unique, got {names}")
    for name in names:
        if not SPLIT_NAME.match(name):
            raise ConfigError(
                f"split name {name!r} is not a valid Hub split name (letters, digits, "
                f"underscores, dots: {SPLIT_NAME.pattern}); rename it in params.yaml"
            )
    if mode not in MODES or not isinstance(include_placeholders, bool):
        raise ValueError(
            f"mode must be one of {sorted(MODES)} and include_placeholders a bool, "
            f"got {mode!r}, {include_placeholders!r}"
        )
    if (
        isinstance(max_shard_bytes, bool)
        or not isinstance(max_shard_bytes, int)
        or max_shard_bytes < 1
    ):
        raise ValueError(
            f"max_shard_bytes must be a positive int (bytes, e.g. 500000000), "
            f"got {max_shard_bytes!r}"
        )


def build_hub_folder(
    splits: Sequence[SplitInputs],
    *,
    mode: str = "labels",
    include_placeholders: bool = False,
    max_shard_bytes: int = 500_000_000,
    out: str | os.PathLike[str] = "data/hub",
    context: CardContext | None = None,
) -> HubFolder:
    """Write a complete Hub dataset repository folder for `splits` (atomically, as a folder).

    Args:
        splits: the splits to publish, each with its manifest, ledger, cleaned split and root.
        mode: `labels` (no pixels) or `images` (original image bytes embedded).
        include_placeholders: publish the black placeholder rows of emptied classes.
        max_shard_bytes: the most estimated data bytes per parquet shard.
        out: the folder to (re)place.
        context: provenance for the card (models, thresholds, repo id); default: none recorded.

    Raises:
        MissingInputError: an input (or, in `images` mode, an image) is missing.
        InputError: inputs that break the data contracts, or a split with nothing to publish.
        ConfigError / ValueError / TypeError: bad options.
    """
    _check_build(splits, mode, include_placeholders, max_shard_bytes)
    names = hub_class_names()
    infos = {
        "default": DatasetInfo(
            features=default_features(names, images=MODES[mode].images), splits=SplitDict()
        )
    }
    with datasets_bars_off(), exclusive_build(out), formats.atomic_folder(out) as folder:
        summaries = [
            _publish_split(
                folder,
                inputs,
                infos,
                names,
                mode=mode,
                include_placeholders=include_placeholders,
                max_shard_bytes=max_shard_bytes,
            )
            for inputs in splits
        ]
        for config, info in infos.items():
            shards = (folder / "data" / config).iterdir()
            info.download_size = sum(path.stat().st_size for path in shards)
            info.dataset_size = sum(split.num_bytes for split in info.splits.values())
        card = render_card(
            context=context or CardContext(),
            splits=summaries,
            infos=infos,
            mode=mode,
            include_placeholders=include_placeholders,
        )
        (folder / "README.md").write_text(card, encoding="utf-8")
        files = tuple(
            sorted(
                path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
            )
        )
    iterations = sorted({summary.iteration for summary in summaries})
    if len(iterations) > 1:
        logger.warning(
            "published splits are at different iterations %s; the tag uses the latest",
            {summary.name: summary.iteration for summary in summaries},
        )
    logger.info("wrote %s: %d files, mode %s, iteration %d", out, len(files), mode, iterations[-1])
    rows = {
        config: {name: split.num_examples for name, split in info.splits.items()}
        for config, info in infos.items()
    }
    return HubFolder(Path(out), iterations[-1], files, rows)


def _publish_split(
    folder: Path,
    inputs: SplitInputs,
    infos: dict[str, DatasetInfo],
    names: Sequence[str],
    *,
    mode: str,
    include_placeholders: bool,
    max_shard_bytes: int,
) -> SplitSummary:
    """Write one split of both configs (recording it in `infos`) -> its summary for the card."""
    ledger = ledger_table(inputs)
    default = default_table(inputs, include_placeholders=include_placeholders, ledger=ledger)
    _check_rows(inputs, default, ledger, include_placeholders)
    features = ledger_features(ledger.schema, names)
    info = infos.setdefault("ledger", DatasetInfo(features=features, splits=SplitDict()))
    if info.features != features:
        raise InputError(
            f"the ledger of split {inputs.name!r} has columns {list(features)}, unlike "
            f"the other splits' {list(info.features)}; re-run decide for every split"
        )
    for config, table, how in (
        ("default", default, MODES[mode]),
        ("ledger", ledger, MODES["labels"]),
    ):
        infos[config].splits.add(
            _write_split(
                folder,
                config,
                inputs.name,
                table,
                infos[config].features,
                how,
                inputs.root,
                max_shard_bytes,
            )
        )
    sources = {"manifest": inputs.manifest, "ledger": inputs.ledger, "cleaned split": inputs.clean}
    return summarize_split(
        inputs.name, default, ledger, clean=inputs.clean, metrics=inputs.metrics, sources=sources
    )


def _check_rows(
    inputs: SplitInputs, default: pa.Table, ledger: pa.Table, include_placeholders: bool
) -> None:
    """InputError for a split with nothing to publish (`datasets` cannot load an empty split)."""
    if ledger.num_rows == 0:
        raise InputError(
            f"the ledger of split `{inputs.name}` ({inputs.ledger}) has no rows: its "
            f"manifest is empty; check splits.{inputs.name}.root and re-run ingest"
        )
    if default.num_rows == 0:
        kept = int(
            pc.sum(pc.is_in(ledger.column("action"), pa.array([str(a) for a in KEPT]))).as_py() or 0
        )
        hint = "" if include_placeholders else "; publish.include_placeholders: true would publish "
        hint += "" if include_placeholders else "the placeholder rows of emptied classes"
        raise InputError(
            f"the cleaned split `{inputs.name}` has no rows to publish ({kept} of "
            f"{ledger.num_rows} images kept or fixed; see {inputs.ledger}): leave "
            f"`{inputs.name}` out of publish.splits{hint}"
        )
