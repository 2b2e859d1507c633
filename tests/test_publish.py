"""publish stage: a Hub dataset folder that `datasets.load_dataset` reads, in both modes, built
atomically from the cleaned splits and ledgers (inputs: tests/hub_inputs.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Image, load_dataset

from hub_inputs import (EXEMPTED, FIX, METRICS, ROWS, TOKEN, RecordingHub, SplitInputs,  # noqa: F401
                        build, cache, inputs, project_dir)
from stages.images import open_image
from stages.publish import PublishConfig, build_hub_folder, main
from stages.shards import hub_class_names

@pytest.mark.parametrize("mode", ["labels", "images"])
def test_both_configs_load_with_classlabel_features(inputs, tmp_path, cache, mode) -> None:
    folder = build(inputs, tmp_path / "hub", mode=mode).path
    clean = load_dataset(str(folder), cache_dir=cache)
    ledger = load_dataset(str(folder), "ledger", cache_dir=cache)
    assert set(clean) == {"val"} and set(ledger) == {"val"}
    assert clean["val"].num_rows == 16  # 12 keep + 3 fix + 1 merged keep; placeholders left out
    assert ledger["val"].num_rows == ROWS
    names = hub_class_names()
    for features, column in [(clean["val"].features, "label"), (clean["val"].features, "original_label"),
                             (ledger["val"].features, "label"), (ledger["val"].features, "new_label")]:
        assert isinstance(features[column], ClassLabel) and features[column].names == names
    assert ("image" in clean["val"].features) == (mode == "images")
    assert "image" not in ledger["val"].features
    source = pq.read_table(inputs.clean).to_pylist()[:16]
    assert clean["val"]["image_id"] == [row["image_id"] for row in source]
    assert clean["val"]["label"] == [row["label"] for row in source]
    assert clean["val"]["path"] == [row["path"] for row in source]
    manifest = pq.read_table(inputs.manifest).to_pylist()
    assert ledger["val"]["path"] == [row["path"] for row in manifest]
    assert ledger["val"]["action"].count("remove") == 3
    assert ledger["val"][FIX[0]]["cl_candidates"] == [(manifest[FIX[0]]["label"] + 1) % 1000] * 3
    assert ledger["val"][EXEMPTED]["exempted"] is True


def test_images_mode_embeds_the_source_pixels_and_black_placeholders(inputs, tmp_path, cache) -> None:
    folder = build(inputs, tmp_path / "hub", mode="images", include_placeholders=True).path
    clean = load_dataset(str(folder), split="val", cache_dir=cache)
    assert clean.num_rows == 18 and clean.features["image"] == Image()
    for index in (0, FIX[0], 15):
        row = clean[index]
        expected = np.asarray(open_image(inputs.root, row["path"]))
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), expected)
    placeholders = [row for row in clean if row["placeholder"]]
    assert [row["image_id"] for row in placeholders] == ["placeholder_n04505470", "placeholder_n04264628"]
    for row in placeholders:
        pixels = np.asarray(row["image"].convert("RGB"))
        assert pixels.shape == (224, 224, 3) and not pixels.any()
        assert row["path"] is None and row["original_label"] is None


def test_rebuild_replaces_the_folder_and_a_failed_build_keeps_the_old_one(inputs, tmp_path) -> None:
    out = tmp_path / "hub"
    build(inputs, out)
    (out / "stale.txt").write_text("from an older build")
    build(inputs, out, mode="images")
    assert not (out / "stale.txt").exists() and "image" in pq.read_schema(
        next((out / "data" / "default").iterdir())).names
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    inputs.ledger.unlink()
    with pytest.raises(FileNotFoundError,
                       match="decision ledger .* does not exist; run `imagenet-clean decide"):
        build(inputs, out)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".hub")) == []


def test_bad_options_and_inputs_are_named(inputs, tmp_path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        build(inputs, tmp_path / "hub", mode="pixels")
    with pytest.raises(ValueError, match="max_shard_bytes must be a positive int"):
        build(inputs, tmp_path / "hub", max_shard_bytes=0)
    with pytest.raises(ValueError, match="max_shard_bytes=50000 leaves no room for rows: every default "
                                         "shard takes [0-9]+ bytes"):
        build(inputs, tmp_path / "hub", max_shard_bytes=50_000)
    renamed = SplitInputs("val-v2", inputs.manifest, inputs.ledger, inputs.clean, inputs.root)
    with pytest.raises(ValueError, match="not a valid Hub split name"):
        build_hub_folder([renamed], out=tmp_path / "hub")
    pq.write_table(pq.read_table(inputs.manifest).slice(1), inputs.manifest)
    with pytest.raises(ValueError, match="does not align with manifest"):
        build(inputs, tmp_path / "hub")
    with pytest.raises(ValueError, match="publish.mode must be one of"):
        PublishConfig(mode="pixels")
    with pytest.raises(ValueError, match="unknown keys \\['privat'\\]"):
        PublishConfig.from_params({"publish": {"splits": ["val"], "privat": True}})


def test_images_mode_names_a_missing_image(inputs, tmp_path) -> None:
    moved = SplitInputs("val", inputs.manifest, inputs.ledger, inputs.clean, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not found under .*nowhere.*splits.<split>.root"):
        build_hub_folder([moved], mode="images", out=tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_main_builds_data_hub_and_dry_runs(inputs, tmp_path, params, monkeypatch, cache, caplog) -> None:
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.chdir(project_dir(tmp_path, inputs, params, push=True, dry_run=True))
    caplog.set_level(logging.INFO, logger="stages")
    assert main([]) == 0
    assert hub.calls == [] and "tagged iteration-1; nothing uploaded" in caplog.text
    assert load_dataset("data/hub", "ledger", split="val", cache_dir=cache).num_rows == ROWS


def test_main_push_offline_fails_before_building(inputs, tmp_path, params, monkeypatch,
                                                 caplog) -> None:
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(project_dir(tmp_path, inputs, params))
    assert main(["--push"]) == 1
    assert "cannot push to the Hub: offline mode is on" in caplog.text and TOKEN not in caplog.text
    assert hub.calls == [] and not Path("data/hub").exists()
    assert json.loads(Path("metrics/val.json").read_text()) == METRICS
