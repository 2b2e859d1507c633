"""The evaluate stage on a hand-built six-row ledger and hand-built predictions files.

Predictions are written by hand (not by models) so that every top-1/top-5 hit is known exactly;
the ReaL reference is hand-built for the same reason (the real ReaL file is not shipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from test_scoring import (
    IDS,
    REFERENCE,
    ledger_frame,
    probs_a,
    votes_frame,
)

from stages.contracts import formats
from stages.contracts.formats import CLEAN_SCHEMA, LEDGER_FULL_SCHEMA
from stages.evaluate import run_evaluate


def test_run_evaluate_writes_metrics_plot_data_and_png(tmp_path: Path, params: dict) -> None:
    formats.write_table(
        ledger_frame(), tmp_path / formats.ledger_path("val"), schema=LEDGER_FULL_SCHEMA
    )
    votes = votes_frame()
    formats.write_table(votes, tmp_path / formats.votes_path("val"))
    formats.write_table(
        pd.DataFrame({"image_id": [IDS[5]], "model": ["a"], "exempted": [True]}),
        tmp_path / formats.cams_path("val"),
    )
    formats.write_table(
        CLEAN_SCHEMA.empty_table(), tmp_path / formats.clean_path("val"), schema=CLEAN_SCHEMA
    )
    formats.write_npy(probs_a(), tmp_path / formats.predictions_path("val", "a"))
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs/real.json").write_text(json.dumps(dict(zip(IDS[:2], REFERENCE[:2]))))
    params["models"]["a"] = {"spec": "local-dir:a"}
    params["predict"]["models"] = ["a"]
    params["evaluate"].update(
        references="refs", reference_labels={"val": "real.json"}, top_classes=5
    )
    run_evaluate("val", params, root=tmp_path)
    text = (tmp_path / "metrics/val.json").read_text()
    metrics = json.loads(text)
    assert metrics["counts"]["fix"] == 1 and metrics["cam"] == {"vetoed": 1}
    assert metrics["reference"]["removal_precision"] is None and "NaN" not in text
    assert metrics["reference"]["agreement_after"] == 100.0
    assert sorted(metrics) == ["cam", "counts", "iteration", "models", "reference", "rows"]
    assert metrics["models"] == {"a": {"original": {"top1": 60.0}, "cleaned": {"top1": 75.0}}}
    detail = json.loads((tmp_path / "metrics/val-detail.json").read_text())
    assert detail["cam"]["images_examined"] == 1 and "percent" in detail
    assert detail["reference"]["agreement_after"] == 100.0 and "fixes" in detail["reference"]
    models = pd.read_csv(tmp_path / "metrics/val-models.csv")
    assert models["model"].tolist() == ["a"]
    assert models.loc[0, "original_top5"] == detail["models"]["a"]["original"]["top5"]
    classes = pd.read_csv(tmp_path / "metrics/val-classes.csv")
    assert list(classes.columns) == ["class", "action", "count"] and classes["count"].sum() == 2
    png = tmp_path / "metrics/val-classes.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = (text, png.read_bytes())
    run_evaluate("val", params, root=tmp_path)
    assert ((tmp_path / "metrics/val.json").read_text(), png.read_bytes()) == first


def test_rounds_plot_earlier_iterations_from_the_history_and_this_one(tmp_path: Path) -> None:
    from stages.contracts.labels import rounds_table
    from stages.reporting.plots import write_rounds

    history = tmp_path / "iterations/val-rounds.csv"
    history.parent.mkdir()
    history.write_text(
        "iteration,keep,fix,remove_new,remove,secondary,agreement_before,"
        "agreement_after\n0,90,5,5,5,3,92.0,93.0\n1,93,2,1,6,3,93.0,93.5\n"
        "2,1,1,1,1,1,1.0,1.0\n"
    )
    metrics = {
        "iteration": 2,
        "counts": {"keep": 94, "fix": 1, "remove_new": 0, "remove": 6, "secondary": 4},
        "reference": {"agreement_before": 93.5, "agreement_after": 93.6},
    }
    table = rounds_table(history, metrics)
    assert table["iteration"].tolist() == [0, 1, 2] and table["keep"].tolist() == [90, 93, 94]
    write_rounds(table, tmp_path, "val")
    counts = pd.read_csv(tmp_path / "val-rounds-counts.csv")
    assert list(counts.columns) == ["iteration", "series", "value"]
    assert counts[counts["series"] == "fix"]["value"].tolist() == [5, 2, 1]
    agreement = pd.read_csv(tmp_path / "val-rounds-agreement.csv")
    assert agreement[agreement["series"] == "agreement_after"]["value"].tolist() == [
        93.0,
        93.5,
        93.6,
    ]
    assert (tmp_path / "val-rounds.png").read_bytes()[:4] == b"\x89PNG"


def test_a_split_left_out_of_reference_labels_is_evaluated_without_a_reference(
    tmp_path: Path, params: dict
) -> None:
    """References are per split: a file for another split (none of this split's ids) is not
    applied to this one (it used to stop evaluate@train with "none of the split's image ids")."""
    formats.write_table(
        ledger_frame(), tmp_path / formats.ledger_path("val"), schema=LEDGER_FULL_SCHEMA
    )
    formats.write_table(votes_frame(), tmp_path / formats.votes_path("val"))
    formats.write_table(
        pd.DataFrame({"image_id": [IDS[5]], "model": ["a"], "exempted": [True]}),
        tmp_path / formats.cams_path("val"),
    )
    formats.write_table(
        CLEAN_SCHEMA.empty_table(), tmp_path / formats.clean_path("val"), schema=CLEAN_SCHEMA
    )
    formats.write_npy(probs_a(), tmp_path / formats.predictions_path("val", "a"))
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs/train.json").write_text(json.dumps({"n01440764_10026": [0]}))
    params["models"]["a"] = {"spec": "local-dir:a"}
    params["predict"]["models"] = ["a"]
    params["evaluate"].update(references="refs", reference_labels={"train_demo": "train.json"})
    metrics = run_evaluate("val", params, root=tmp_path)
    assert "reference" not in metrics and "multi_label_top1" not in metrics["models"]["a"]
