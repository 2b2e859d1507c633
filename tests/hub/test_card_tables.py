"""card_tables: the card's counts table and the paper's Table 1, from either metrics nesting."""

from __future__ import annotations

from stages.hub.card_inputs import SplitSummary
from stages.hub.card_tables import counts_table, flatten, table1


def summary(metrics: dict, counts: dict | None = None) -> SplitSummary:
    return SplitSummary(
        name="val",
        iteration=0,
        manifest_rows=10,
        ledger_counts=counts or {"keep": 7, "fix": 1, "remove": 2},
        default_rows=8,
        placeholders=0,
        metrics=metrics,
        sha256={},
    )


def test_counts_come_from_metrics_where_present_else_from_the_ledger() -> None:
    from_ledger = counts_table([summary({})])
    assert "| val | 10 | 7 (70.00 %) | 1 (10.00 %) | 2 (20.00 %) | 0 (0.00 %) |" in from_ledger
    from_metrics = counts_table([summary({"counts": {"keep": 6, "fix": {"count": 2}}})])
    assert "| val | 10 | 6 (60.00 %) | 2 (20.00 %) | 2 (20.00 %) |" in from_metrics


def test_table1_reads_both_nestings_of_the_per_model_metrics() -> None:
    metrics = {
        "models": {
            "a": {"original": {"top1": 41.5, "top5": 66.0}, "cleaned": {"top1": 44.25}},
            "b": {"top1": {"original": 50.0, "cleaned": 52.0}},
        }
    }
    text = table1([summary(metrics)])
    assert "| a | 41.50 | 44.25 | 66.00 |" in text
    assert "| b | 50.00 | 52.00 |  |" in text
    assert "no per-model metrics recorded" in table1([summary({})])


def test_flatten_keeps_finite_numbers_only() -> None:
    nested = {"a": {"b": 1, "c": float("nan"), "d": True, "e": "x"}, "f": 2.5}
    assert flatten(nested) == {"a.b": 1, "f": 2.5}
