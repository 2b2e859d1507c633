"""card: the dataset card's YAML front matter and its markdown body."""

from __future__ import annotations

import json

import pytest
from datasets import load_dataset_builder
from hub_inputs import ROWS, build, front_matter
from huggingface_hub import DatasetCard

from stages.hub.card_inputs import card_context
from stages.hub.shards import default_features, hub_class_names


def test_card_front_matter_parses_and_declares_features(inputs, tmp_path, params, cache) -> None:
    context = card_context(params, repo_id="someone/imagenet-clean")
    folder = build(inputs, tmp_path / "hub", context=context).path
    data = front_matter(folder)
    assert data["license"] == "other" and data["task_categories"] == ["image-classification"]
    assert {item["config_name"] for item in data["configs"]} == {"default", "ledger"}
    assert data["configs"][0]["data_files"] == [
        {"split": "val", "path": "data/default/val-*.parquet"}
    ]
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license_name == "imagenet-terms-of-access"
    default = load_dataset_builder(str(folder), cache_dir=cache)  # the card's default config
    assert default.config.name == "default"
    assert default.info.features == default_features(hub_class_names(), images=False)
    ledger = load_dataset_builder(str(folder), "ledger", cache_dir=cache)
    assert ledger.info.splits["val"].num_examples == ROWS
    text = card.text
    assert (
        "| val | 20 | 13 (65.00 %) | 3 (15.00 %) | 3 (15.00 %) | 1 (5.00 %) | 1 (5.00 %) "
        "| 2 (10.00 %) | 0 (0.00 %) | 2 | 16 |" in text
    )
    assert (
        "| model | top1 original | top1 cleaned | top5 original | top5 cleaned | cl_label_errors "
        "| cleaned rows | original rows |"
    ) in text
    assert "| mobilenetv1_025 | 41.50 | 44.25 | 66.00 | 69.75 | 4 | 16 | 19 |" in text
    assert "| mobilenetv1_050 | 50.00 | 52.00 | 70.00 | 72.00 |  |  |  |" in text
    assert "`local-dir:data/demo/models/mobilenetv1_025.tf_in1k`" in text
    assert "| val | kaggle | expected_benefit | 1.0 | M/2 (= 3) | 3 | 2M/3 (= 4) |" in text
    assert "arXiv:2103.16324" in text and 'load_dataset("someone/imagenet-clean"' in text


def test_card_tolerates_missing_metrics(inputs, tmp_path) -> None:
    inputs.metrics.unlink()
    text = (build(inputs, tmp_path / "hub").path / "README.md").read_text()
    assert (
        "| val | 20 | 13 (65.00 %) | 3 (15.00 %) | 3 (15.00 %) | 1 (5.00 %) | 1 (5.00 %) "
        "| 2 (10.00 %) | 0 (0.00 %) | 2 | 16 |" in text
    )
    assert "no per-model metrics recorded" in text


def test_card_headlines_human_agreement_before_and_after(inputs, tmp_path) -> None:
    text = (build(inputs, tmp_path / "hub").path / "README.md").read_text()
    assert (
        "- **Agreement with human labels** (the evaluate stage's reference labels): `val`: "
        "81.25 % before -> 87.50 % after cleanup."
    ) in text
    assert "Warning" not in text


def test_card_warns_when_cleanup_lowers_human_agreement(inputs, tmp_path) -> None:
    metrics = json.loads(inputs.metrics.read_text())
    metrics["reference"] = {"agreement_before": 84.0, "agreement_after": 79.5}
    inputs.metrics.write_text(json.dumps(metrics))
    text = (build(inputs, tmp_path / "hub").path / "README.md").read_text()
    assert "`val`: 84.00 % before -> 79.50 % after cleanup." in text
    assert (
        "**Warning**: on `val` the cleanup lowered agreement with the human reference labels "
        "(84.00 % -> 79.50 %)"
    ) in text


def test_card_has_no_agreement_line_without_a_reference(inputs, tmp_path) -> None:
    metrics = json.loads(inputs.metrics.read_text())
    del metrics["reference"]
    inputs.metrics.write_text(json.dumps(metrics))
    text = (build(inputs, tmp_path / "hub").path / "README.md").read_text()
    assert "Agreement with human labels" not in text and "Warning" not in text


def test_card_describes_secondary_labels(inputs, tmp_path) -> None:
    text = (build(inputs, tmp_path / "hub").path / "README.md").read_text()
    assert "`secondary_labels` (List)" in text or "`secondary_labels` (Sequence)" in text
    assert "`secondary_labels` are other classes the evidence supports" in text


@pytest.mark.parametrize(
    "strategy, says, never",
    [
        ("expected_benefit", "with estimated probability >= 0.8", "fewer than 3 distinct"),
        ("consensus", "mean probability is >= 0.5 and the label's < 0.15", "estimated probability"),
        ("paper", "fewer than 3 distinct candidates", "estimated probability"),
    ],
)
def test_the_card_states_the_strategy_that_ran_with_its_knobs(
    inputs, tmp_path, params, strategy: str, says: str, never: str
) -> None:
    params["decide"]["val"]["strategy"] = strategy
    context = card_context(params, repo_id="someone/imagenet-clean")
    text = (build(inputs, tmp_path / "hub", context=context).path / "README.md").read_text()
    method = text[text.index("## How it was made") : text.index("## Counts")]
    assert f"- `{strategy}`" in method and says in method and never not in method
    assert f"| val | kaggle | {strategy} |" in method


def test_the_card_says_how_strong_the_evidence_was(inputs, tmp_path) -> None:
    text = (build(inputs, tmp_path / "hub").path / "README.md").read_text()
    assert (
        "- **Evidence strength** (estimated from the models alone, no reference): `val`: label "
        "noise 10.0%, expected label accuracy 94.1% before -> 96.4% after."
    ) in text


def test_card_lists_the_class_names_once_and_every_label_column_still_has_them(
    inputs, tmp_path, cache
) -> None:
    """The 1000 names sat in the YAML seven times (282 KB on the demo): each ClassLabel column now
    refers to one anchored list, which `datasets` and `huggingface_hub` resolve."""
    folder = build(inputs, tmp_path / "hub").path
    card = (folder / "README.md").read_text()
    assert card.count("tench, Tinca tinca") == 1
    assert card.count("class_label: &class_names") == 1
    assert card.count("class_label: *class_names") == 6
    assert len(card.encode()) < 80_000
    assert DatasetCard.load(folder / "README.md").data.dataset_info[1]["config_name"] == "ledger"
    names = hub_class_names()
    default = load_dataset_builder(str(folder), cache_dir=cache).info.features
    ledger = load_dataset_builder(str(folder), "ledger", cache_dir=cache).info.features
    assert default["label"].names == default["original_label"].names == names
    assert default["secondary_labels"].feature.names == names
    for column in ("label", "new_label", "original_label"):
        assert ledger[column].names == names, column
    assert ledger["secondary_labels"].feature.names == names
