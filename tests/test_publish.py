"""publish stage: a Hub dataset folder that `datasets.load_dataset` reads, in both modes.

Inputs are built here on 20 real demo images (real ingest manifest; a ledger and cleaned split
written with explicit pyarrow schemas matching the contracts). Everything loads through the
installed `datasets` offline, with its cache in a tmp dir. The Hub itself cannot be reached from
tests, so the push tests replace HfApi's network methods with a recording fake (`RecordingHub`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import ClassLabel, Image, Value, load_dataset
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub import constants as hub_constants

from stages import formats
from stages.card import card_context, default_features, hub_class_names
from stages.images import open_image
from stages.hub import PushError, push
from stages.publish import HubFolder, PublishConfig, SplitInputs, build_hub_folder, main
from stages.shards import plan_shards

ROWS = 20
KEEP, FIX, REMOVE, SKIP, MERGED = range(0, 12), range(12, 15), range(15, 18), 18, 19
EXEMPTED = 5
ITERATION = 1
TOKEN = "hf_publishTestSecretToken0123456789"
CLEAN_SCHEMA = formats.CLEAN_SCHEMA
LEDGER_SCHEMA = formats.LEDGER_FULL_SCHEMA
METRICS = {
    "counts": {"keep": 13, "fix": 3, "remove": 3, "skip": 1, "merge": 1},
    "models": {  # evaluate's shape, then the other nesting (the card reads both)
        "mobilenetv1_025": {"cl_label_errors": 4, "original": {"top1": 41.5, "top5": 66.0, "rows": 19},
                            "cleaned": {"top1": 44.25, "top5": 69.75, "rows": 16}},
        "mobilenetv1_050": {"top1": {"original": 50.0, "cleaned": 52.0},
                            "top5": {"original": 70.0, "cleaned": 72.0}}},
}


def _ledger_rows(manifest: list[dict], wnids: list[str]) -> list[dict]:
    keyboard = wnids.index("n03085013")  # Table A.1: typewriter keyboard -> computer keyboard
    rows = []
    for index, item in enumerate(manifest):
        label = item["label"]
        action, new_label, reason = "keep", label, "kept: no vote against the label"
        candidates, misses, exempted = [], 0, False
        if index in FIX:
            action, new_label, reason = "fix", (label + 1) % 1000, "fixed: 3 candidates agree"
            candidates = [(label + 1) % 1000] * 3
        elif index in REMOVE:
            action, new_label, reason = "remove", None, "removed: 3 unique candidates"
            candidates, misses = [1, 2, 3], 4
        elif index == SKIP:
            action, new_label, reason = "skip", None, "skip: unreadable image: test"
        elif index == EXEMPTED:
            misses, exempted, reason = 4, True, "kept: exempted by CAMs"
        elif index == MERGED:
            new_label, reason = keyboard, "kept; merged (Table A.1)"
        rows.append({"image_id": item["image_id"], "label": label, "action": action,
                     "new_label": new_label, "cl_candidates": candidates, "top5_misses": misses,
                     "exempted": exempted, "reason": reason, "original_label": label,
                     "iteration": ITERATION, "merged": index == MERGED, "override": False,
                     "exemptions": int(exempted)})
    return rows


def _clean_rows(manifest: list[dict], ledger: list[dict], wnids: list[str]) -> list[dict]:
    rows = [{"image_id": item["image_id"], "path": item["path"], "label": decided["new_label"],
             "original_label": item["label"], "wnid": wnids[decided["new_label"]],
             "action": decided["action"], "placeholder": False, "merged": decided["merged"],
             "boxes": item["boxes"], "width": item["width"], "height": item["height"],
             "iteration": ITERATION}
            for item, decided in zip(manifest, ledger, strict=True) if decided["action"] in ("keep", "fix")]
    for wnid in ("n04505470", "n04264628"):  # classes emptied by the merges
        rows.append({"image_id": f"placeholder_{wnid}", "path": None, "label": wnids.index(wnid),
                     "original_label": None, "wnid": wnid, "action": "placeholder",
                     "placeholder": True, "merged": False, "boxes": [], "width": 224,
                     "height": 224, "iteration": ITERATION})
    return rows


@pytest.fixture
def inputs(tmp_path: Path, small_manifest, demo_root: Path) -> SplitInputs:
    """A split `val` of 20 real demo images: manifest, ledger, cleaned split and metrics."""
    manifest = [dict(row) for row in small_manifest.head(ROWS).to_dict("records")]
    for row in manifest:
        row["boxes"] = [list(map(int, box)) for box in row["boxes"]]
    manifest[SKIP]["skip_reason"] = "unreadable image: test"
    wnids = formats.class_wnids()
    ledger = _ledger_rows(manifest, wnids)
    split = SplitInputs("val", tmp_path / "manifests/val.parquet", tmp_path / "decisions/val.parquet",
                        tmp_path / "clean/val.parquet", demo_root, tmp_path / "metrics/val.json")
    formats.write_table(pa.Table.from_pylist(manifest, schema=formats.MANIFEST_SCHEMA), split.manifest)
    formats.write_table(pa.Table.from_pylist(ledger, schema=LEDGER_SCHEMA), split.ledger)
    formats.write_table(pa.Table.from_pylist(_clean_rows(manifest, ledger, wnids), schema=CLEAN_SCHEMA),
                        split.clean)
    formats.write_json(METRICS, split.metrics)
    return split


@pytest.fixture
def cache(tmp_path: Path) -> str:
    """`datasets` cache for this test only (never ~/.cache)."""
    return str(tmp_path / "hf-cache")


def _build(inputs: SplitInputs, out: Path, **options) -> HubFolder:
    options = {"mode": "labels", "include_placeholders": False, "max_shard_bytes": 500_000_000,
               **options}
    return build_hub_folder([inputs], out=out, **options)


def _front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("mode", ["labels", "images"])
def test_both_configs_load_with_classlabel_features(inputs, tmp_path, cache, mode) -> None:
    folder = _build(inputs, tmp_path / "hub", mode=mode).path
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


def test_class_names_are_imagenet_names_made_unique() -> None:
    names, plain = hub_class_names(), formats.class_names()
    assert len(names) == len(set(names)) == 1000
    assert names[0] == plain[0] == "tench, Tinca tinca"
    changed = [index for index in range(1000) if names[index] != plain[index]]
    assert [names[index] for index in changed] == ["crane (n02012849)", "crane (n03126707)"]


def test_images_mode_embeds_the_source_pixels_and_black_placeholders(inputs, tmp_path, cache) -> None:
    folder = _build(inputs, tmp_path / "hub", mode="images", include_placeholders=True).path
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


def test_card_front_matter_parses_and_declares_features(inputs, tmp_path, params) -> None:
    context = card_context(params, repo_id="someone/imagenet-clean")
    folder = _build(inputs, tmp_path / "hub", context=context).path
    data = _front_matter(folder)
    assert data["license"] == "other" and data["task_categories"] == ["image-classification"]
    assert {item["config_name"] for item in data["configs"]} == {"default", "ledger"}
    assert data["configs"][0]["data_files"] == [{"split": "val", "path": "data/default/val-*.parquet"}]
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license_name == "imagenet-terms-of-access"
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert configs.get_default_config_name() == "default"
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert infos["default"].features == default_features(hub_class_names(), images=False)
    assert infos["ledger"].splits["val"].num_examples == ROWS
    text = card.text
    assert "| val | 20 | 13 (65.00 %) | 3 (15.00 %) | 3 (15.00 %) | 1 (5.00 %) | 1 (5.00 %) | 2 | 16 |" in text
    assert ("| model | top1 original | top1 cleaned | top5 original | top5 cleaned | cl_label_errors "
            "| cleaned rows | original rows |") in text
    assert "| mobilenetv1_025 | 41.50 | 44.25 | 66.00 | 69.75 | 4 | 16 | 19 |" in text
    assert "| mobilenetv1_050 | 50.00 | 52.00 | 70.00 | 72.00 |  |  |  |" in text
    assert "`local-dir:data/demo/models/mobilenetv1_025.tf_in1k`" in text
    assert "| val | kaggle | 1.0 | M/2 (= 3) | 3 | 2M/3 (= 4) |" in text
    assert "arXiv:2103.16324" in text and 'load_dataset("someone/imagenet-clean"' in text


def test_yaml_features_alone_give_classlabels(inputs, tmp_path, cache) -> None:
    """The card's YAML is honored: shards stripped of their HF schema metadata still load with the
    1000-class ClassLabel features (and without the card they would not)."""
    folder = _build(inputs, tmp_path / "hub").path
    for shard in (folder / "data").rglob("*.parquet"):
        pq.write_table(pq.read_table(shard).replace_schema_metadata(None), shard)
        assert b"huggingface" not in (pq.read_schema(shard).metadata or {})
    ledger = load_dataset(str(folder), "ledger", split="val", cache_dir=cache)
    assert isinstance(ledger.features["new_label"], ClassLabel)
    assert ledger.features["new_label"].names == hub_class_names()
    (folder / "README.md").unlink()
    bare = load_dataset(str(folder), data_files="data/ledger/*.parquet", split="train", cache_dir=cache)
    assert bare.features["new_label"] == Value("int64")  # no names without the card


def test_card_tolerates_missing_metrics(inputs, tmp_path) -> None:
    inputs.metrics.unlink()
    text = (_build(inputs, tmp_path / "hub").path / "README.md").read_text()
    assert "| val | 20 | 13 (65.00 %) | 3 (15.00 %) | 3 (15.00 %) | 1 (5.00 %) | 1 (5.00 %) | 2 | 16 |" in text
    assert "no per-model metrics recorded" in text


def test_tiny_shard_limit_gives_several_shards_that_still_load(inputs, tmp_path, cache) -> None:
    limit = 300_000  # ~120 kB of each file is its footer (the features with 1000 class names)
    folder = _build(inputs, tmp_path / "hub", mode="images", max_shard_bytes=limit).path
    shards = sorted((folder / "data" / "default").iterdir())
    assert len(shards) >= 3
    assert [shard.name for shard in shards] == [f"val-{index:05d}-of-{len(shards):05d}.parquet"
                                                for index in range(len(shards))]
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
    first = _build(inputs, tmp_path / "a" / "hub", mode=mode, max_shard_bytes=300_000)
    second = _build(inputs, tmp_path / "b" / "hub", mode=mode, max_shard_bytes=300_000)
    assert first.files == second.files and len(first.files) >= 3
    for name in first.files:
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes(), name


def test_rebuild_replaces_the_folder_and_a_failed_build_keeps_the_old_one(inputs, tmp_path) -> None:
    out = tmp_path / "hub"
    _build(inputs, out)
    (out / "stale.txt").write_text("from an older build")
    _build(inputs, out, mode="images")
    assert not (out / "stale.txt").exists() and "image" in pq.read_schema(
        next((out / "data" / "default").iterdir())).names
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    inputs.ledger.unlink()
    with pytest.raises(FileNotFoundError,
                       match="decision ledger .* does not exist; run `imagenet-clean decide"):
        _build(inputs, out)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".hub")) == []


def test_bad_options_and_inputs_are_named(inputs, tmp_path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        _build(inputs, tmp_path / "hub", mode="pixels")
    with pytest.raises(ValueError, match="max_shard_bytes must be a positive int"):
        _build(inputs, tmp_path / "hub", max_shard_bytes=0)
    with pytest.raises(ValueError, match="max_shard_bytes=50000 leaves no room for rows: every default "
                                         "shard takes [0-9]+ bytes"):
        _build(inputs, tmp_path / "hub", max_shard_bytes=50_000)
    renamed = SplitInputs("val-v2", inputs.manifest, inputs.ledger, inputs.clean, inputs.root)
    with pytest.raises(ValueError, match="not a valid Hub split name"):
        build_hub_folder([renamed], out=tmp_path / "hub")
    pq.write_table(pq.read_table(inputs.manifest).slice(1), inputs.manifest)
    with pytest.raises(ValueError, match="does not align with manifest"):
        _build(inputs, tmp_path / "hub")
    with pytest.raises(ValueError, match="publish.mode must be one of"):
        PublishConfig(mode="pixels")
    with pytest.raises(ValueError, match="unknown keys \\['privat'\\]"):
        PublishConfig.from_params({"publish": {"splits": ["val"], "privat": True}})


def test_images_mode_names_a_missing_image(inputs, tmp_path) -> None:
    moved = SplitInputs("val", inputs.manifest, inputs.ledger, inputs.clean, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not found under .*nowhere.*splits.<split>.root"):
        build_hub_folder([moved], mode="images", out=tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


class RecordingHub:
    """Stands in for the Hub, which tests cannot reach: records HfApi's network calls."""

    def __init__(self, tags: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.tags = tags

    def install(self, monkeypatch: pytest.MonkeyPatch) -> RecordingHub:
        for name in ("create_repo", "list_repo_refs", "upload_folder", "create_tag"):
            monkeypatch.setattr(HfApi, name, getattr(self, f"fake_{name}"))
        return self

    def fake_create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def fake_list_repo_refs(self, *args, **kwargs):
        self.calls.append(("list_repo_refs", args, kwargs))
        return SimpleNamespace(tags=[SimpleNamespace(name=tag) for tag in self.tags], branches=[])

    def fake_upload_folder(self, *args, **kwargs):
        folder = Path(kwargs["folder_path"])
        kwargs["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", args, kwargs))
        return SimpleNamespace(oid="0123abcd" * 5, commit_url="https://hub.invalid/commit")

    def fake_create_tag(self, *args, **kwargs):
        self.calls.append(("create_tag", args, kwargs))


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch offline mode off (the fake stands in for the network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)


def test_push_uploads_one_commit_and_tags_it_without_writing_the_token(
        inputs, tmp_path, monkeypatch, online, caplog) -> None:
    hub = RecordingHub().install(monkeypatch)
    built = _build(inputs, tmp_path / "hub")
    caplog.set_level(logging.DEBUG)
    result = push(built.path, repo_id="someone/imagenet-clean", iteration=built.iteration, token=TOKEN)
    assert [call[0] for call in hub.calls] == ["create_repo", "list_repo_refs", "upload_folder", "create_tag"]
    _, args, kwargs = hub.calls[2]
    assert kwargs["repo_id"] == "someone/imagenet-clean" and kwargs["repo_type"] == "dataset"
    assert kwargs["token"] == TOKEN and kwargs["files"] == list(built.files)
    assert "README.md" in kwargs["files"] and kwargs["delete_patterns"] == ["data/**"]
    _, args, kwargs = hub.calls[3]
    assert args == ("someone/imagenet-clean",) and kwargs["tag"] == "iteration-1"
    assert kwargs["revision"] == "0123abcd" * 5 and kwargs["repo_type"] == "dataset"
    assert result.commit == "0123abcd" * 5 and result.tag == "iteration-1"
    assert TOKEN not in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_refuses_a_published_iteration_before_uploading(inputs, tmp_path, monkeypatch, online) -> None:
    hub = RecordingHub(tags=("iteration-0", "iteration-1")).install(monkeypatch)
    built = _build(inputs, tmp_path / "hub")
    with pytest.raises(PushError, match="already has tag iteration-1.*nothing was uploaded"):
        push(built.path, repo_id="someone/imagenet-clean", iteration=1, token=TOKEN)
    assert "upload_folder" not in [call[0] for call in hub.calls]


def test_push_names_the_commit_when_tagging_fails(inputs, tmp_path, monkeypatch, online) -> None:
    hub = RecordingHub().install(monkeypatch)

    def refuse(*args, **kwargs):
        raise OSError("tagging refused")

    monkeypatch.setattr(HfApi, "create_tag", refuse)
    built = _build(inputs, tmp_path / "hub")
    with pytest.raises(PushError, match=f"uploaded commit {'0123abcd' * 5} .* could not tag it "
                                        f"iteration-1 \\(OSError\\); tag it with HfApi"):
        push(built.path, repo_id="someone/imagenet-clean", iteration=1, token=TOKEN)
    assert [call[0] for call in hub.calls] == ["create_repo", "list_repo_refs", "upload_folder"]


def test_push_offline_fails_cleanly(inputs, tmp_path, monkeypatch) -> None:
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    built = _build(inputs, tmp_path / "hub")
    with pytest.raises(PushError, match="offline mode is on \\(HF_HUB_OFFLINE=1\\).*nothing was uploaded"):
        push(built.path, repo_id="someone/imagenet-clean", iteration=1, token=TOKEN)
    assert hub.calls == []


def test_push_without_token_fails_cleanly(inputs, tmp_path, monkeypatch, online) -> None:
    hub = RecordingHub().install(monkeypatch)
    built = _build(inputs, tmp_path / "hub")
    with pytest.raises(PushError, match="no token. Export HF_TOKEN"):
        push(built.path, repo_id="someone/imagenet-clean", iteration=1, token=None)
    assert hub.calls == []


def test_dry_run_lists_the_upload_and_touches_nothing(inputs, tmp_path, monkeypatch, caplog) -> None:
    hub = RecordingHub().install(monkeypatch)
    built = _build(inputs, tmp_path / "hub")
    caplog.set_level(logging.INFO, logger="stages.hub")
    result = push(built.path, repo_id="someone/imagenet-clean", iteration=1, token=None, dry_run=True)
    assert hub.calls == [] and result.commit is None and result.dry_run
    assert dict(result.files)["README.md"] == (built.path / "README.md").stat().st_size
    assert "would upload README.md" in caplog.text
    assert "to dataset someone/imagenet-clean, tagged iteration-1; nothing uploaded" in caplog.text


def _project(tmp_path: Path, inputs: SplitInputs, params: dict, **publish) -> Path:
    """A project folder laid out as the stage expects (data/..., metrics/, params.yaml)."""
    project = tmp_path / "project"
    for source, target in [(inputs.manifest, formats.manifest_path("val")),
                           (inputs.ledger, formats.ledger_path("val")),
                           (inputs.clean, formats.clean_path("val")),
                           (inputs.metrics, formats.metrics_path("val"))]:
        (project / target).parent.mkdir(parents=True, exist_ok=True)
        (project / target).write_bytes(source.read_bytes())
    params["splits"]["val"]["root"] = str(inputs.root)
    params["publish"].update(publish)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def test_main_builds_data_hub_and_dry_runs(inputs, tmp_path, params, monkeypatch, cache, caplog) -> None:
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.chdir(_project(tmp_path, inputs, params, push=True, dry_run=True))
    caplog.set_level(logging.INFO, logger="stages")
    assert main([]) == 0
    assert hub.calls == [] and "tagged iteration-1; nothing uploaded" in caplog.text
    assert load_dataset("data/hub", "ledger", split="val", cache_dir=cache).num_rows == ROWS


def test_main_push_offline_fails_before_building(inputs, tmp_path, params, monkeypatch,
                                                 caplog) -> None:
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(_project(tmp_path, inputs, params))
    assert main(["--push"]) == 1
    assert "cannot push to the Hub: offline mode is on" in caplog.text and TOKEN not in caplog.text
    assert hub.calls == [] and not Path("data/hub").exists()
    assert json.loads(Path("metrics/val.json").read_text()) == METRICS
