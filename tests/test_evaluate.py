"""The evaluate stage on a hand-built six-row ledger and hand-built predictions files.

Predictions are written by hand (not by models) so that every top-1/top-5 hit is known exactly;
the ReaL reference is hand-built for the same reason (the real ReaL file is not shipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from stages import formats
from stages.formats import CLEAN_SCHEMA, LEDGER_FULL_SCHEMA
from stages.evaluate import (class_table, evaluate_split, load_reference, reference_metrics,
                             run_evaluate, scan_model)

IDS = [f"ILSVRC2012_val_{i:08d}" for i in range(1, 7)]
#        keep      fix       remove     skip       keep+merge  keep(exempted)
ACTION = ["keep", "fix", "remove", "skip", "keep", "keep"]
LABEL = [1, 2, 4, None, 5, 7]
NEW = [1, 3, None, None, 6, 7]
# Model "a": top-1 per row and the rest of its top-5; row 4 (skip) is NaN.
TOP_A = [(1, [2, 3, 4, 5]), (3, [2, 10, 11, 12]), (9, [10, 11, 12, 13]), None, (5, [6, 10, 11, 12]),
         (7, [10, 11, 12, 13])]
# Reference: r1 label ok, r2 fix ok, r3 nothing fits, r4 skip, r5 nothing fits, r6 label ok.
REFERENCE = [[1], [3], [], [0], [], [7, 8]]


def ledger_frame() -> pd.DataFrame:
    return pa.Table.from_pylist([{
        "image_id": IDS[i], "label": LABEL[i], "action": ACTION[i], "new_label": NEW[i],
        "cl_candidates": {1: [3, 3], 2: [8, 9, 10]}.get(i, []), "top5_misses": 0,
        "exempted": i == 5, "reason": "hand-built", "original_label": LABEL[i] or 0, "iteration": 2,
        "merged": i == 4, "override": False, "exemptions": 2 if i == 5 else 0,
    } for i in range(6)], schema=LEDGER_FULL_SCHEMA).to_pandas()


def votes_frame() -> pd.DataFrame:
    models = {1: ["a", "b"], 2: ["a"]}
    return pd.DataFrame({"image_id": IDS, "cl_models": [models.get(i, []) for i in range(6)]})


def probs_a() -> np.ndarray:
    probs = np.full((6, formats.NUM_CLASSES), 1e-5, dtype=np.float32)
    for row, top in enumerate(TOP_A):
        if top is None:
            probs[row] = np.nan
            continue
        probs[row, top[0]] = 0.5
        for rank, cls in enumerate(top[1]):
            probs[row, cls] = 0.1 - 0.01 * rank
    return probs


def probs_b() -> np.ndarray:
    """Stored as float16: top-5 = classes 0..4 in order on every row."""
    probs = np.full((6, formats.NUM_CLASSES), 1e-4, dtype=np.float16)
    probs[:, :5] = [0.5, 0.2, 0.1, 0.05, 0.02]
    probs[3] = np.nan
    return probs


@pytest.fixture
def predictions(tmp_path: Path) -> dict[str, Path]:
    paths = {"a": tmp_path / "a.npy", "b": tmp_path / "b.npy"}
    formats.write_npy(probs_a(), paths["a"])
    formats.write_npy(probs_b(), paths["b"])
    return paths


def test_scan_model_reads_chunks_and_finds_top1_and_top5() -> None:
    top1, top5 = scan_model(probs_a(), chunk_rows=4)
    assert [top1[i] for i in (0, 1, 2, 4, 5)] == [1, 3, 9, 5, 7]
    assert set(top5[1]) == {3, 2, 10, 11, 12}


def test_counts_percentages_and_table1_accuracies(predictions: dict[str, Path]) -> None:
    metrics, _ = evaluate_split(ledger_frame(), votes_frame(), predictions)
    assert metrics["rows"] == 6 and metrics["iteration"] == 2
    assert metrics["counts"] == {"keep": 3, "fix": 1, "remove": 1, "skip": 1, "merge": 1,
                                 "override": 0, "exempted": 1, "placeholders": 0}
    assert metrics["percent"]["keep"] == 50.0 and metrics["percent"]["fix"] == 16.6667
    a, b = metrics["models"]["a"], metrics["models"]["b"]
    assert (a["cl_label_errors"], b["cl_label_errors"]) == (2, 1)
    # original: rows 1,2,3,5,6 with labels 1,2,4,5,7; cleaned: rows 1,2,5,6 with labels 1,3,6,7
    assert a["original"] == {"top1": 60.0, "top5": 80.0, "rows": 5}
    assert a["cleaned"] == {"top1": 75.0, "top5": 100.0, "rows": 4}
    assert b["original"] == {"top1": 0.0, "top5": 60.0, "rows": 5}
    assert b["cleaned"] == {"top1": 0.0, "top5": 50.0, "rows": 4}
    assert metrics["cam"] == {"vetoed": 1, "by_exempting_models": {"2": 1}, "images_examined": 0,
                              "model_rows": 0}
    assert "reference" not in metrics and "real_top1" not in a


def test_reference_metrics_count_only_images_with_an_entry(predictions: dict[str, Path]) -> None:
    metrics, _ = evaluate_split(ledger_frame(), votes_frame(), predictions, reference=REFERENCE)
    real = metrics["reference"]
    assert real["images"] == 6
    assert (real["fix_precision"], real["removal_precision"]) == (100.0, 100.0)
    assert real["keep_accuracy"] == 66.6667 and real["keep_accuracy_rows"] == 3
    assert (real["label_accuracy_original"], real["label_accuracy_cleaned"]) == (40.0, 75.0)
    assert metrics["models"]["a"]["real_top1"] == 100.0
    assert metrics["models"]["b"]["real_top1"] == 0.0
    shorter = reference_metrics(ledger_frame(), [[1], [2]])  # only rows 1-2 have entries
    assert shorter["images"] == 2 and shorter["fix_precision"] == 0.0
    assert shorter["removal_precision"] is None and shorter["removal_precision_rows"] == 0


def test_class_table_ranks_classes_by_fixes_and_removals() -> None:
    ledger = ledger_frame()
    table = class_table(ledger, top=1)
    wnid, name = formats.class_wnids()[2], formats.class_names()[2].split(",")[0]
    assert table.to_dict("records") == [{"class": f"{wnid} {name}", "action": "fix", "count": 1},
                                        {"class": f"{wnid} {name}", "action": "remove", "count": 0}]
    assert len(class_table(ledger, top=20)) == 4


def test_bad_reference_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real.json").write_text(json.dumps([[1], [1000]]))
    with pytest.raises(ValueError, match="lists of class indices 0..999"):
        load_reference(tmp_path / "real.json")


def test_run_evaluate_writes_metrics_plot_data_and_png(tmp_path: Path, params: dict) -> None:
    formats.write_table(ledger_frame(), tmp_path / formats.ledger_path("val"),
                        schema=LEDGER_FULL_SCHEMA)
    votes = votes_frame()
    formats.write_table(votes, tmp_path / formats.votes_path("val"))
    formats.write_table(pd.DataFrame({"image_id": [IDS[5]], "model": ["a"], "exempted": [True]}),
                        tmp_path / formats.cams_path("val"))
    formats.write_table(CLEAN_SCHEMA.empty_table(), tmp_path / formats.clean_path("val"), schema=CLEAN_SCHEMA)
    formats.write_npy(probs_a(), tmp_path / formats.predictions_path("val", "a"))
    (tmp_path / "real.json").write_text(json.dumps(REFERENCE[:2]))
    params["predict"]["models"] = ["a"]
    params["evaluate"].update(reference_labels="real.json", top_classes=5)
    run_evaluate("val", params, root=tmp_path)
    text = (tmp_path / "metrics/val.json").read_text()
    metrics = json.loads(text)
    assert metrics["counts"]["fix"] == 1 and metrics["cam"]["images_examined"] == 1
    assert metrics["reference"]["removal_precision"] is None and "NaN" not in text
    classes = pd.read_csv(tmp_path / "metrics/val-classes.csv")
    assert list(classes.columns) == ["class", "action", "count"] and classes["count"].sum() == 2
    png = tmp_path / "metrics/val-classes.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = (text, png.read_bytes())
    run_evaluate("val", params, root=tmp_path)
    assert ((tmp_path / "metrics/val.json").read_text(), png.read_bytes()) == first


def test_predictions_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    formats.write_npy(probs_a()[:5], tmp_path / "a.npy")
    with pytest.raises(ValueError, match=r"shape \(5, 1000\), expected \(6, 1000\)"):
        evaluate_split(ledger_frame(), votes_frame(), {"a": tmp_path / "a.npy"})
