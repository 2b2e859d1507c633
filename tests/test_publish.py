"""publish stage: a Hub dataset folder that `datasets.load_dataset` reads, in both modes, built
atomically from the cleaned splits and ledgers (inputs: tests/hub_inputs.py)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, run_in
from datasets import ClassLabel, Image, load_dataset
from hub_inputs import (
    EXEMPTED,
    FIX,
    METRICS,
    ROWS,
    SECONDARY,
    TOKEN,
    RecordingHub,
    SplitInputs,
    build,
    project_dir,
)

from stages.contracts.errors import ConfigError, InputError, MissingInputError, UserError
from stages.hub.publishing import PublishOptions, build_hub_folder
from stages.hub.repo import PushError
from stages.hub.shards import ListFeature, hub_class_names
from stages.publish import main
from stages.sources.images import open_image


def child_env() -> dict[str, str]:
    """A subprocess that imports this checkout's `stages`."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


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
    assert ledger["val"]["action"].count("remove") == 3
    assert ledger["val"][FIX[0]]["cl_candidates"] == [(manifest[FIX[0]]["label"] + 1) % 1000] * 3
    assert ledger["val"][EXEMPTED]["exempted"] is True


def test_images_mode_embeds_the_source_pixels_and_black_placeholders(
    inputs, tmp_path, cache
) -> None:
    folder = build(inputs, tmp_path / "hub", mode="images", include_placeholders=True).path
    clean = load_dataset(str(folder), split="val", cache_dir=cache)
    assert clean.num_rows == 18 and clean.features["image"] == Image()
    for index in (0, FIX[0], 15):
        row = clean[index]
        expected = np.asarray(open_image(inputs.root, row["path"]))
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), expected)
    placeholders = [row for row in clean if row["placeholder"]]
    assert [row["image_id"] for row in placeholders] == [
        "placeholder_n04505470",
        "placeholder_n04264628",
    ]
    for row in placeholders:
        pixels = np.asarray(row["image"].convert("RGB"))
        assert pixels.shape == (224, 224, 3) and not pixels.any()
        assert row["path"] is None and row["original_label"] is None


def test_rebuild_replaces_the_folder_and_a_failed_build_keeps_the_old_one(inputs, tmp_path) -> None:
    out = tmp_path / "hub"
    build(inputs, out)
    (out / "stale.txt").write_text("from an older build")
    build(inputs, out, mode="images")
    assert (
        not (out / "stale.txt").exists()
        and "image" in pq.read_schema(next((out / "data" / "default").iterdir())).names
    )
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    inputs.ledger.unlink()
    with pytest.raises(
        FileNotFoundError, match="decision ledger .* does not exist; run `imagenet-clean decide"
    ):
        build(inputs, out)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".hub")) == []


def test_bad_options_and_inputs_are_named(inputs, tmp_path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        build(inputs, tmp_path / "hub", mode="pixels")
    with pytest.raises(ValueError, match="max_shard_bytes must be a positive int"):
        build(inputs, tmp_path / "hub", max_shard_bytes=0)
    with pytest.raises(
        ConfigError,
        match="max_shard_bytes=50000 leaves no room for rows: every "
        "default shard takes [0-9]+ bytes",
    ):
        build(inputs, tmp_path / "hub", max_shard_bytes=50_000)
    renamed = SplitInputs("val-v2", inputs.manifest, inputs.ledger, inputs.clean, inputs.root)
    with pytest.raises(ConfigError, match="not a valid Hub split name"):
        build_hub_folder([renamed], out=tmp_path / "hub")
    pq.write_table(pq.read_table(inputs.manifest).slice(1), inputs.manifest)
    with pytest.raises(InputError, match="does not align with manifest"):
        build(inputs, tmp_path / "hub")
    with pytest.raises(
        ConfigError, match="`publish.mode` must be one of labels, images, got 'pixels'"
    ):
        PublishOptions(mode="pixels")


def test_images_mode_names_a_missing_image(inputs, tmp_path) -> None:
    moved = SplitInputs("val", inputs.manifest, inputs.ledger, inputs.clean, tmp_path / "nowhere")
    with pytest.raises(MissingInputError, match="not found under .*nowhere.*splits.<split>.root"):
        build_hub_folder([moved], mode="images", out=tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_main_builds_data_hub_and_dry_runs(
    inputs, tmp_path, params, monkeypatch, cache, caplog
) -> None:
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.chdir(project_dir(tmp_path, inputs, params, push=True, dry_run=True))
    caplog.set_level(logging.INFO, logger="stages")
    assert main([]) == 0
    assert hub.calls == [] and "tagged iteration-1; nothing uploaded" in caplog.text
    assert load_dataset("data/hub", "ledger", split="val", cache_dir=cache).num_rows == ROWS


def test_refused_push_keeps_the_built_folder(inputs, tmp_path, params, monkeypatch, cache) -> None:
    """Building and pushing are separate steps: offline, the push is refused (a one-line user
    error, exit 2 from the CLI) but data/hub is built and stays."""
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(project_dir(tmp_path, inputs, params))
    with pytest.raises(
        PushError,
        match="cannot push to the Hub: offline mode is on .* data/hub is "
        "built and kept; push it with `imagenet-clean publish --push`",
    ) as error:
        main(["--push"])
    assert isinstance(error.value, UserError) and TOKEN not in str(error.value)
    assert hub.calls == [] and load_dataset("data/hub", split="val", cache_dir=cache).num_rows == 16
    assert json.loads(Path("metrics/val.json").read_text()) == METRICS


def test_empty_cleaned_split_is_a_clear_error_and_data_hub_stays(inputs, tmp_path) -> None:
    out = tmp_path / "hub"
    build(inputs, out)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    ledger = pq.read_table(inputs.ledger)  # every image removed or skipped
    ledger = ledger.set_column(
        ledger.schema.get_field_index("action"),
        "action",
        pa.array(["remove"] * (ROWS - 1) + ["skip"]),
    )
    pq.write_table(ledger, inputs.ledger)
    placeholders_only = pq.read_table(inputs.clean).filter(pc.field("placeholder"))
    pq.write_table(placeholders_only, inputs.clean)
    with pytest.raises(
        InputError,
        match="the cleaned split `val` has no rows to publish .*0 of 20 "
        "images kept or fixed.*include_placeholders",
    ):
        build(inputs, out)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".hub")) == []
    build(inputs, out, include_placeholders=True)  # the placeholders alone can be published


KILL_DURING_BUILD = """
import os, signal, sys
from pathlib import Path
import stages.hub.publishing as publishing
from stages.hub.publishing import SplitInputs, build_hub_folder
real = publishing.write_shard
def write_then_die(table, features, target):
    size = real(table, features, target)
    os.kill(os.getpid(), signal.SIGKILL)  # a kill -9 in the middle of the build
publishing.write_shard = write_then_die
paths = [Path(p) for p in sys.argv[1:6]]
build_hub_folder([SplitInputs("val", *paths[:4], paths[4])], mode="images", out=sys.argv[6])
"""


def test_leftovers_of_a_killed_build_are_removed_by_the_next_build(inputs, tmp_path) -> None:
    out = tmp_path / "data" / "hub"
    out.parent.mkdir()
    args = [
        str(p) for p in (inputs.manifest, inputs.ledger, inputs.clean, inputs.root, inputs.metrics)
    ]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_BUILD, *args[:3], args[3], args[4], str(out)],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = [path for path in out.parent.iterdir() if path.name.startswith(".hub.")]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
    assert any(path.suffix == ".parquet" for path in leftovers[0].rglob("*"))  # image bytes inside
    others = [out.parent / ".hub.old", out.parent / ".hub2.abcd1234.tmp", out.parent / "hub.tmp"]
    for other in others:  # not this output's leftovers: kept
        other.mkdir()
    (out.parent / ".hub.zz_99xyz.old").mkdir()  # a killed swap's previous folder: removed
    build(inputs, out)
    names = sorted(path.name for path in out.parent.iterdir())
    assert names == sorted(["hub"] + [other.name for other in others])


def test_leftovers_stay_while_another_build_of_the_folder_runs(inputs, tmp_path) -> None:
    out = tmp_path / "hub"
    running = tmp_path / ".hub.abcd1234.tmp"
    running.mkdir()
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what a concurrent build holds
        build(inputs, out)
    finally:
        os.close(fd)
    assert running.is_dir() and (out / "README.md").is_file()


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


def test_secondary_labels_of_an_older_cleaned_split_come_from_the_ledger(
    inputs, tmp_path, cache
) -> None:
    pq.write_table(pq.read_table(inputs.clean).drop_columns(["secondary_labels"]), inputs.clean)
    clean = load_dataset(str(build(inputs, tmp_path / "hub").path), split="val", cache_dir=cache)
    ids = pq.read_table(inputs.manifest).column("image_id").to_pylist()
    expected = {ids[index]: labels for index, labels in SECONDARY.items()}
    assert clean["secondary_labels"] == [expected.get(i, []) for i in clean["image_id"]]


def test_publish_config_is_checked_like_every_stage() -> None:
    with pytest.raises(
        ConfigError, match="`publish` has an unknown key 'privat'; did you mean 'private'"
    ):
        PublishOptions.from_params({"publish": {"splits": ["val"], "privat": True}})
    with pytest.raises(ConfigError, match="`publish.push` must be true or false, got 'yes'"):
        PublishOptions.from_params({"publish": {"push": "yes"}})
    with pytest.raises(ConfigError, match="`publish.splits` must be a non-empty list of distinct"):
        PublishOptions.from_params({"publish": {"splits": ["val", "val"]}})


@pytest.mark.slow
def test_dvc_repro_with_a_refused_push_keeps_data_hub(
    inputs, tmp_path, params, cache, monkeypatch
) -> None:
    """Under `dvc repro` (which deletes a stage's outputs before running it) a refused push fails
    the stage with the one-line error, and the data/hub it built stays on disk."""
    project = project_dir(tmp_path, inputs, params, push=True)
    shutil.copytree(
        ROOT / "stages", project / "stages", ignore=shutil.ignore_patterns("__pycache__")
    )
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["publish"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"publish": stage}}))
    run_in(project, "git", "init", "-q")
    run_in(project, "dvc", "init", "-q")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = run_in(project, "dvc", "repro", "publish", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output and TOKEN not in output
    assert "error: cannot push to the Hub: offline mode is on" in output
    assert "data/hub is built and kept" in output
    assert load_dataset(str(project / "data/hub"), split="val", cache_dir=cache).num_rows == 16
