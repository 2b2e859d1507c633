"""shards: the `datasets` side of the Hub folder (features, YAML metadata, parquet shards)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Value, load_dataset
from hub_inputs import (
    EXEMPTED,
    FIX,
    ROWS,
    SECONDARY,
    build,
)

from stages.contracts import formats
from stages.hub.shards import ListFeature, hub_class_names, plan_shards


def test_class_names_are_imagenet_names_made_unique() -> None:
    names, plain = hub_class_names(), formats.class_names()
    assert len(names) == len(set(names)) == 1000
    assert names[0] == plain[0] == "tench, Tinca tinca"
    changed = [index for index in range(1000) if names[index] != plain[index]]
    assert [names[index] for index in changed] == ["crane (n02012849)", "crane (n03126707)"]


def test_yaml_features_alone_give_classlabels(inputs, tmp_path, cache) -> None:
    """The card's YAML is honored: shards stripped of their HF schema metadata still load with the
    1000-class ClassLabel features (and without the card they would not)."""
    folder = build(inputs, tmp_path / "hub").path
    for shard in (folder / "data").rglob("*.parquet"):
        pq.write_table(pq.read_table(shard).replace_schema_metadata(None), shard)
        assert b"huggingface" not in (pq.read_schema(shard).metadata or {})
    ledger = load_dataset(str(folder), "ledger", split="val", cache_dir=cache)
    assert isinstance(ledger.features["new_label"], ClassLabel)
    assert ledger.features["new_label"].names == hub_class_names()
    (folder / "README.md").unlink()
    bare = load_dataset(
        str(folder), data_files="data/ledger/*.parquet", split="train", cache_dir=cache
    )
    assert bare.features["new_label"] == Value("int64")  # no names without the card


def test_tiny_shard_limit_gives_several_shards_that_still_load(inputs, tmp_path, cache) -> None:
    limit = 300_000  # ~120 kB of each file is its footer (the features with 1000 class names)
    folder = build(inputs, tmp_path / "hub", mode="images", max_shard_bytes=limit).path
    shards = sorted((folder / "data" / "default").iterdir())
    assert len(shards) >= 3
    assert [shard.name for shard in shards] == [
        f"val-{index:05d}-of-{len(shards):05d}.parquet" for index in range(len(shards))
    ]
    for shard in shards:
        assert shard.stat().st_size <= limit, shard
        meta = pq.read_schema(shard).metadata
        assert b"ClassLabel" in meta[b"huggingface"]
    clean = load_dataset(str(folder), split="val", cache_dir=cache)
    assert clean["image_id"] == pq.read_table(inputs.clean).column("image_id").to_pylist()[:16]


def test_plan_shards_respects_the_limit() -> None:
    assert plan_shards(np.array([4, 4, 4, 4, 4.0]), 8) == [(0, 2), (2, 4), (4, 5)]
    assert plan_shards(np.array([20, 1, 1.0]), 8) == [(0, 1), (1, 3)]
    assert plan_shards(np.zeros(0), 8) == [(0, 0)]


@pytest.mark.parametrize("mode", ["labels", "images"])
def test_same_inputs_give_the_same_bytes(inputs, tmp_path, mode) -> None:
    first = build(inputs, tmp_path / "a" / "hub", mode=mode, max_shard_bytes=300_000)
    second = build(inputs, tmp_path / "b" / "hub", mode=mode, max_shard_bytes=300_000)
    assert first.files == second.files and len(first.files) >= 3
    for name in first.files:
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes(), name


@pytest.mark.parametrize("mode", ["labels", "images"])
def test_both_configs_load_with_classlabel_features(inputs, tmp_path, cache, mode) -> None:
    folder = build(inputs, tmp_path / "hub", mode=mode).path
    clean = load_dataset(str(folder), cache_dir=cache)
    ledger = load_dataset(str(folder), "ledger", cache_dir=cache)
    assert set(clean) == {"val"} and set(ledger) == {"val"}
    assert clean["val"].num_rows == 16  # 12 keep + 3 fix + 1 merged keep; placeholders left out
    assert ledger["val"].num_rows == ROWS
    names = hub_class_names()
    for features, column in [
        (clean["val"].features, "label"),
        (clean["val"].features, "original_label"),
        (ledger["val"].features, "label"),
        (ledger["val"].features, "new_label"),
    ]:
        assert isinstance(features[column], ClassLabel) and features[column].names == names
    assert ("image" in clean["val"].features) == (mode == "images")
    assert "image" not in ledger["val"].features
    source = pq.read_table(inputs.clean).to_pylist()[:16]
    assert clean["val"]["image_id"] == [row["image_id"] for row in source]
    assert clean["val"]["label"] == [row["label"] for row in source]
    assert clean["val"]["path"] == [row["path"] for row in source]
    manifest = pq.read_table(inputs.manifest).to_pylist()
    assert ledger["val"]["path"] == [row["path"] for row in manifest]
    groups = dict(zip(ledger["val"]["image_id"], ledger["val"]["duplicate_group"], strict=True))
    assert clean["val"].features["duplicate_group"] == Value("int32")
    assert clean["val"]["duplicate_group"] == [groups[i] for i in clean["val"]["image_id"]]
    assert sorted(g for g in clean["val"]["duplicate_group"] if g is not None) == [4, 4]
    assert ledger["val"]["action"].count("remove") == 3
    assert ledger["val"][FIX[0]]["cl_candidates"] == [(manifest[FIX[0]]["label"] + 1) % 1000] * 3
    assert ledger["val"][EXEMPTED]["exempted"] is True


def test_secondary_labels_published_in_both_configs(inputs, tmp_path, cache) -> None:
    folder = build(inputs, tmp_path / "hub").path
    clean = load_dataset(str(folder), split="val", cache_dir=cache)
    ledger = load_dataset(str(folder), "ledger", split="val", cache_dir=cache)
    for features in (clean.features, ledger.features):
        feature = features["secondary_labels"]
        assert isinstance(feature, ListFeature) and isinstance(feature.feature, ClassLabel)
        assert feature.feature.names == hub_class_names()
    assert ledger["secondary_labels"] == [SECONDARY.get(index, []) for index in range(ROWS)]
    by_id = dict(zip(clean["image_id"], clean["secondary_labels"]))
    ids = pq.read_table(inputs.ledger).column("image_id").to_pylist()
    assert by_id[ids[3]] == [5, 7] and by_id[ids[12]] == [2] and sum(map(len, by_id.values())) == 3
    assert ledger.features["secondary_labels"].feature.int2str(7) == "cock"
