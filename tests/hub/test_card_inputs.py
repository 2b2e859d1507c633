"""card_inputs: what the dataset card reads (provenance from params.yaml, a split's figures)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from hub_inputs import ROWS

from stages.hub.card_inputs import card_context, read_metrics, summarize_split
from stages.hub.publishing import default_table, ledger_table


def test_card_context_reads_the_models_thresholds_and_strategy_from_params(params) -> None:
    params["decide"]["val"].update(strategy="consensus", h2="M/2")
    context = card_context(params, repo_id="someone/imagenet-clean")
    assert context.repo_id == "someone/imagenet-clean"
    assert dict(context.models)["mobilenetv1_025"].startswith("local-dir:")
    assert context.strategies["val"] == "consensus"
    assert context.methods["val"]["layout"] == "kaggle"
    assert context.methods["val"]["h2"].startswith("M/2 (= ")


def test_card_context_tolerates_absent_sections() -> None:
    context = card_context({}, repo_id="x/y")
    assert context.models == () and context.methods == {} and context.merges is None


def test_unreadable_or_absent_metrics_read_as_empty(tmp_path: Path) -> None:
    assert read_metrics(None) == {} and read_metrics(tmp_path / "none.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_metrics(tmp_path / "bad.json") == {} and read_metrics(tmp_path / "list.json") == {}


def test_a_split_summary_counts_from_the_ledger_and_checksums_its_inputs(inputs) -> None:
    ledger = ledger_table(inputs)
    default = default_table(inputs, include_placeholders=False, ledger=ledger)
    summary = summarize_split(
        "val", default, ledger, clean=inputs.clean, metrics=None, sources={"ledger": inputs.ledger}
    )
    assert summary.manifest_rows == ROWS and summary.default_rows == default.num_rows
    assert summary.ledger_counts["keep"] == 13 and summary.ledger_counts["fix"] == 3
    assert summary.ledger_counts["secondary"] == 2 and summary.metrics == {}
    placeholders = pq.read_table(inputs.clean).column("placeholder").to_pylist()
    assert summary.placeholders == sum(placeholders)
    assert len(summary.sha256["ledger"]) == 64
