"""The `datasets` side of a Hub folder: features (ClassLabel labels), the card's YAML metadata
(`configs`, `dataset_info`) and parquet shards, written with public `datasets` APIs only.

The YAML metadata follows the Hub's dataset card format (what `datasets` itself writes and reads:
features as a list of `name` + `dtype`, class names keyed by their index as strings), so that
`load_dataset` gives the same features from the card alone as from the shards' own metadata.
"""

from __future__ import annotations

import collections
import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetInfo, Features, Image, Value

from stages.contracts import formats

ListFeature: Any = getattr(datasets, "List", None) or datasets.Sequence
"""`datasets.List` (4.0+) or, before it, `datasets.Sequence`: a variable or fixed-length list."""
LIST_KEY = "list" if hasattr(datasets, "List") else "sequence"
"""How the card's YAML spells a list feature in the installed `datasets` (both read `sequence`)."""
LEDGER_LABELS = ("label", "new_label", "original_label")
"""Ledger columns published as ClassLabel."""
LEDGER_LABEL_LISTS = ("secondary_labels",)
"""Ledger columns of class indices published as a list of ClassLabel."""
HEADROOM = 0.02
"""Share of a shard's row budget kept free: rows are estimated from the table's average row size
plus image bytes, and parquet adds page headers; measured excess on the demo stays under 0.5 %."""


def hub_class_names() -> list[str]:
    """The 1000 class names (`formats.class_names()`, label order) made unique for `ClassLabel`:
    a name shared by two wnids (ImageNet's two "crane" classes) gets its wnid appended."""
    names, wnids = formats.class_names(), formats.class_wnids()
    counts = collections.Counter(names)
    return [
        f"{name} ({wnid})" if counts[name] > 1 else name
        for name, wnid in zip(names, wnids, strict=True)
    ]


def default_features(names: Sequence[str], *, images: bool) -> Features:
    """Features of the `default` config (the cleaned split), with an `image` column or without."""
    return Features(
        {
            **({"image": Image()} if images else {}),
            "image_id": Value("string"),
            "path": Value("string"),
            "label": ClassLabel(names=list(names)),
            "original_label": ClassLabel(names=list(names)),
            "wnid": Value("string"),
            "action": Value("string"),
            "placeholder": Value("bool"),
            "merged": Value("bool"),
            "boxes": ListFeature(ListFeature(Value("int32"), length=4)),
            "width": Value("int32"),
            "height": Value("int32"),
            "iteration": Value("int32"),
            "secondary_labels": ListFeature(ClassLabel(names=list(names))),
            "duplicate_group": Value("int32"),
        }
    )


def ledger_features(schema: pa.Schema, names: Sequence[str]) -> Features:
    """Features of the `ledger` config: its label columns as ClassLabel (`secondary_labels` as a
    list of ClassLabel), the rest as stored."""
    stored = Features.from_arrow_schema(schema)
    return Features(
        {
            name: ClassLabel(names=list(names))
            if name in LEDGER_LABELS
            else ListFeature(ClassLabel(names=list(names)))
            if name in LEDGER_LABEL_LISTS
            else feature
            for name, feature in stored.items()
        }
    )


ClassNames = dict[tuple[str, ...], dict[str, Any]]
"""One `class_label` YAML mapping per distinct list of class names, shared by every column that
uses it: the YAML dumper writes a shared object once (an anchor) and refers to it (aliases)."""


def _feature_yaml(feature: Any, shared: ClassNames) -> dict[str, Any]:
    """One feature in the card's YAML form, e.g. {"dtype": "int32"} or {"list": "int32"}."""
    if isinstance(feature, Value):
        return {"dtype": feature.dtype}
    if isinstance(feature, ClassLabel):
        key = tuple(feature.names)
        if key not in shared:
            shared[key] = {"names": {str(i): n for i, n in enumerate(feature.names)}}
        return {"dtype": {"class_label": shared[key]}}
    if isinstance(feature, Image):
        return {"dtype": "image"}
    if isinstance(feature, ListFeature):
        inner = _feature_yaml(feature.feature, shared)
        item = inner["dtype"] if list(inner) == ["dtype"] else inner
        length = getattr(feature, "length", -1)
        return {LIST_KEY: item, **({"length": length} if length not in (-1, None) else {})}
    raise TypeError(f"feature {feature!r} has no card YAML form here; extend shards._feature_yaml")


def features_yaml(features: Features, shared: ClassNames | None = None) -> list[dict[str, Any]]:
    """The card's `features:` list: one {name, dtype | list} entry per column, in order; every
    ClassLabel with the same names (in these features and in those `shared` was passed with
    before) holds the same `class_label` object, so the card lists the 1000 names once."""
    shared = {} if shared is None else shared
    return [{"name": name, **_feature_yaml(feature, shared)} for name, feature in features.items()]


def metadata_yaml(
    infos: Mapping[str, DatasetInfo], splits: Sequence[str], *, default: str
) -> dict[str, list[dict[str, Any]]]:
    """The card's `configs` (data files per split, `default` marked) and `dataset_info` (features,
    split sizes, download and dataset sizes) for every config in `infos`."""
    configs = []
    for config in infos:
        entry: dict[str, Any] = {
            "config_name": config,
            "data_files": [
                {"split": split, "path": f"data/{config}/{split}-*.parquet"} for split in splits
            ],
        }
        configs.append({**entry, "default": True} if config == default else entry)
    dataset_info: list[dict[str, Any]] = []
    shared: ClassNames = {}
    for config, info in infos.items():
        dataset_info.append(
            {
                "config_name": config,
                "features": features_yaml(info.features, shared),
                "splits": [
                    {"name": name, "num_bytes": split.num_bytes, "num_examples": split.num_examples}
                    for name, split in info.splits.items()
                ],
                "download_size": info.download_size,
                "dataset_size": info.dataset_size,
            }
        )
    return {"configs": configs, "dataset_info": dataset_info}


def plan_shards(row_bytes: np.ndarray, max_shard_bytes: int) -> list[tuple[int, int]]:
    """Contiguous row ranges [start, stop) whose estimated bytes stay within `max_shard_bytes`
    (a row larger than the limit gets a shard of its own); always at least one range.

    row_bytes: (N,) estimated bytes per row.
    """
    ranges, start, total = [], 0, 0.0
    for index, size in enumerate(np.asarray(row_bytes, dtype=np.float64).tolist()):
        if index > start and total + size > max_shard_bytes:
            ranges.append((start, index))
            start, total = index, 0.0
        total += size
    ranges.append((start, len(row_bytes)))
    return ranges


def write_shard(table: pa.Table, features: Features, target: Path | io.BytesIO) -> int:
    """Write one parquet shard with `datasets`' own writer (HF features in the schema metadata,
    the Hub's row-group and page settings) -> the shard's in-memory (Arrow) bytes."""
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
    table = table.select(list(features)).cast(features.arrow_schema)
    dataset = Dataset(
        table, info=DatasetInfo(features=features), fingerprint="publish"
    )  # never transformed: skip hashing the table
    dataset.to_parquet(target if isinstance(target, io.BytesIO) else str(target))
    return int(table.nbytes)


def shard_overhead(features: Features) -> int:
    """Bytes every shard file takes besides its rows: its footer, whose schema holds the
    features (1000 class names per ClassLabel column), and one row group's per-column metadata,
    measured on a shard of one all-null row."""
    buffer = io.BytesIO()
    write_shard(pa.Table.from_pylist([{}], schema=features.arrow_schema), features, buffer)
    return len(buffer.getvalue())


@contextlib.contextmanager
def datasets_bars_off() -> Iterator[None]:
    """`datasets` draws a bar per parquet file; the stage draws its own per split."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
