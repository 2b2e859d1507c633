"""stages.reporting.plots: per-class and per-iteration pictures, byte-stable, saying why empty."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from test_scoring import ledger_frame, probs_a, probs_b, votes_frame

from stages.contracts import formats
from stages.method.scoring import evaluate_split
from stages.reporting.plots import (
    classes_axis,
    empty_note,
    plot_classes,
    rounds_form,
    write_rounds,
)


def test_empty_class_plot_says_what_was_carried(tmp_path: Path) -> None:
    predictions = {"a": tmp_path / "a.npy", "b": tmp_path / "b.npy"}
    formats.write_npy(probs_a(), predictions["a"])
    formats.write_npy(probs_b(), predictions["b"])
    ledger = ledger_frame()
    ledger.loc[1, ["action", "new_label"]] = ["keep", 2]
    ledger.loc[2, ["label"]] = [None]  # removed in an earlier iteration
    metrics, table = evaluate_split(ledger, votes_frame(), predictions)
    assert table["count"].sum() == 0
    assert metrics["counts"]["remove_carried"] == 1 and metrics["counts"]["remove_new"] == 0
    assert empty_note(metrics) == (
        "no new fixes or removals in iteration 2 (1 removed in earlier iterations)"
    )


def test_plots_are_the_same_bytes_every_time(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"class": ["n01440764 tench"] * 2, "action": ["fix", "remove"], "count": [2, 1]}
    )
    for name in ("a.png", "b.png"):
        plot_classes(table, tmp_path / name, title="classes", empty="nothing")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    rounds = pd.DataFrame(
        {
            "iteration": [0, 1],
            "fix": [3, 1],
            "remove_new": [2, 0],
            "secondary": [1, 1],
            "agreement_before": [90.0, 91.0],
            "agreement_after": [91.0, 91.5],
        }
    )
    write_rounds(rounds, tmp_path, "val")
    counts = pd.read_csv(tmp_path / "val-rounds-counts.csv")
    assert set(counts["series"]) == {"fix", "remove_new", "secondary"} and len(counts) == 6
    assert (tmp_path / "val-rounds.png").stat().st_size > 0


def test_one_iteration_is_drawn_as_labelled_bars_not_a_line_of_one_dot(tmp_path: Path) -> None:
    one = pd.DataFrame(
        {
            "iteration": [0],
            "fix": [20],
            "remove_new": [20],
            "secondary": [17],
            "agreement_before": [92.5],
            "agreement_after": [94.0],
        }
    )
    assert rounds_form(one) == "bars"
    assert rounds_form(pd.concat([one, one.assign(iteration=1)])) == "lines"
    write_rounds(one, tmp_path, "val")
    assert (tmp_path / "val-rounds.png").read_bytes()[:4] == b"\x89PNG"


def test_class_plot_of_ties_says_no_class_stands_out() -> None:
    """All ties at 1 (the demo): the chart says the classes shown are only the first by index."""
    ties = pd.DataFrame(
        {"class": ["a", "a", "b", "b"], "action": ["fix", "remove"] * 2, "count": [1, 0, 0, 1]}
    )
    assert "no class stands out" in classes_axis(ties)
    ties.loc[1, "count"] = 1
    assert "no class stands out" not in classes_axis(ties)
