"""stages.method.scoring: moved from test_evaluate.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from stages.contracts import formats
from stages.contracts.errors import InputError
from stages.contracts.formats import LEDGER_FULL_SCHEMA
from stages.method.scoring import class_table, evaluate_split, scan_model

IDS = [f"ILSVRC2012_val_{i:08d}" for i in range(1, 7)]


#        keep      fix       remove     skip       keep+merge  keep(exempted)
ACTION = ["keep", "fix", "remove", "skip", "keep", "keep"]


LABEL = [1, 2, 4, None, 5, 7]


NEW = [1, 3, None, None, 6, 7]


# Model "a": top-1 per row and the rest of its top-5; row 4 (skip) is NaN.
TOP_A = [
    (1, [2, 3, 4, 5]),
    (3, [2, 10, 11, 12]),
    (9, [10, 11, 12, 13]),
    None,
    (5, [6, 10, 11, 12]),
    (7, [10, 11, 12, 13]),
]


# Reference: r1 label ok, r2 fix ok, r3 nothing fits, r4 skip, r5 nothing fits, r6 label ok.
REFERENCE = [[1], [3], [], [0], [], [7, 8]]


def ledger_frame() -> pd.DataFrame:
    return pa.Table.from_pylist(
        [
            {
                "image_id": IDS[i],
                "label": LABEL[i],
                "action": ACTION[i],
                "new_label": NEW[i],
                "cl_candidates": {1: [3, 3], 2: [8, 9, 10]}.get(i, []),
                "top5_misses": 0,
                "exempted": i == 5,
                "reason": "hand-built",
                "original_label": LABEL[i] or 0,
                "iteration": 2,
                "merged": i == 4,
                "override": False,
                "exemptions": 2 if i == 5 else 0,
                "secondary_labels": [8] if i == 5 else [],
            }
            for i in range(6)
        ],
        schema=LEDGER_FULL_SCHEMA,
    ).to_pandas()


def entries(reference: list[list[int]]) -> list[frozenset[int] | None]:
    return [frozenset(r) for r in reference] + [None] * (6 - len(reference))


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
        probs[row] /= probs[row].sum()
    return probs


def probs_b() -> np.ndarray:
    """Stored as float16: top-5 = classes 0..4 in order on every row."""
    probs = np.full((6, formats.NUM_CLASSES), 1e-4, dtype=np.float16)
    probs[:, :5] = [0.5, 0.2, 0.1, 0.05, 0.02]
    probs[:, 5:10] = 0.006
    probs[3] = np.nan
    return probs


@pytest.fixture
def predictions(tmp_path: Path) -> dict[str, Path]:
    paths = {"a": tmp_path / "a.npy", "b": tmp_path / "b.npy"}
    formats.write_npy(probs_a(), paths["a"])
    formats.write_npy(probs_b(), paths["b"])
    return paths


def test_scan_model_reads_chunks_and_finds_top1_and_top5() -> None:
    top1, top5 = scan_model(probs_a(), chunk_rows=4, usable=np.array(ACTION) != "skip")
    assert [top1[i] for i in (0, 1, 2, 4, 5)] == [1, 3, 9, 5, 7]
    assert set(top5[1]) == {3, 2, 10, 11, 12}


def test_counts_percentages_and_table1_accuracies(predictions: dict[str, Path]) -> None:
    metrics, _ = evaluate_split(ledger_frame(), votes_frame(), predictions)
    assert metrics["rows"] == 6 and metrics["iteration"] == 2
    assert metrics["counts"] == {
        "keep": 3,
        "fix": 1,
        "remove": 1,
        "skip": 1,
        "merge": 1,
        "override": 0,
        "exempted": 1,
        "placeholders": 0,
        "secondary": 1,
        "remove_new": 1,
        "remove_carried": 0,
    }
    assert metrics["percent"]["keep"] == 50.0 and metrics["percent"]["fix"] == 16.6667
    a, b = metrics["models"]["a"], metrics["models"]["b"]
    assert (a["cl_label_errors"], b["cl_label_errors"]) == (2, 1)
    # original: rows 1,2,3,5,6 with labels 1,2,4,5,7; cleaned: rows 1,2,5,6 with labels 1,3,6,7
    assert a["original"] == {"top1": 60.0, "top5": 80.0, "rows": 5}
    assert a["cleaned"] == {"top1": 75.0, "top5": 100.0, "rows": 4}
    assert b["original"] == {"top1": 0.0, "top5": 60.0, "rows": 5}
    assert b["cleaned"] == {"top1": 0.0, "top5": 50.0, "rows": 4}
    assert metrics["cam"] == {
        "vetoed": 1,
        "by_exempting_models": {"2": 1},
        "images_examined": 0,
        "model_rows": 0,
    }
    assert "reference" not in metrics and "multi_label_top1" not in a


def test_reference_block_and_multi_label_top1(predictions: dict[str, Path]) -> None:
    metrics, _ = evaluate_split(
        ledger_frame(), votes_frame(), predictions, entries=entries(REFERENCE)
    )
    real = metrics["reference"]
    # judged before: rows 1, 2, 6 (rows 3 and 5 accept nothing, row 4 is a skip): labels 1, 2, 7
    assert (real["agreement_before"], real["judged_before"]) == (66.6667, 3)
    # after: kept/fixed judged rows 1, 2, 6 with new labels 1, 3, 7
    assert (real["agreement_after"], real["judged_after"]) == (100.0, 3)
    assert real["fixes"] == {"corrected": 1, "neutral": 0, "broken": 0, "total": 1}
    assert (real["removal_precision"], real["removals"]) == (100.0, 1)
    assert real["secondary_precision"] == 100.0 and real["secondary_labels"] == 1
    assert real["worse"] is False and real["multi_label_share"] == 20.0
    assert metrics["models"]["a"]["multi_label_top1"] == 100.0
    assert metrics["models"]["b"]["multi_label_top1"] == 0.0


def test_agreement_drop_is_flagged_and_logged(
    predictions: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    ledger = ledger_frame()
    ledger.loc[0, ["action", "new_label"]] = ["fix", 9]  # breaks a right label
    with caplog.at_level("WARNING"):
        metrics, _ = evaluate_split(
            ledger, votes_frame(), predictions, entries=entries(REFERENCE), split="val"
        )
    assert metrics["reference"]["worse"] is False  # 66.7 -> 66.7: not worse
    ledger.loc[5, ["action", "new_label"]] = ["fix", 9]
    with caplog.at_level("WARNING"):
        metrics, _ = evaluate_split(
            ledger, votes_frame(), predictions, entries=entries(REFERENCE), split="val"
        )
    assert metrics["reference"]["agreement_after"] == 33.3333
    assert metrics["reference"]["worse"] is True
    assert "agree LESS with the human reference" in caplog.text


def test_logits_or_nan_on_a_usable_row_are_refused(tmp_path: Path) -> None:
    logits = np.log(probs_a())
    logits[3] = np.nan
    formats.write_npy(logits, tmp_path / "a.npy")
    with pytest.raises(
        InputError, match=r"a.npy: row 0 has values outside \[0, 1\] .*these look like logits"
    ):
        evaluate_split(ledger_frame(), votes_frame(), {"a": tmp_path / "a.npy"})
    nan_row = probs_a()
    nan_row[2] = np.nan
    formats.write_npy(nan_row, tmp_path / "a.npy")
    with pytest.raises(InputError, match=r"row 2 has NaN or infinite values.*\(1 such rows"):
        evaluate_split(ledger_frame(), votes_frame(), {"a": tmp_path / "a.npy"})


def test_class_table_ranks_classes_by_fixes_and_removals() -> None:
    ledger = ledger_frame()
    table = class_table(ledger, top=1)
    wnid, name = formats.class_wnids()[2], formats.class_names()[2].split(",")[0]
    assert table.to_dict("records") == [
        {"class": f"{wnid} {name}", "action": "fix", "count": 1},
        {"class": f"{wnid} {name}", "action": "remove", "count": 0},
    ]
    assert len(class_table(ledger, top=20)) == 4


def test_predictions_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    formats.write_npy(probs_a()[:5], tmp_path / "a.npy")
    with pytest.raises(ValueError, match=r"shape \(5, 1000\), expected \(6, 1000\)"):
        evaluate_split(ledger_frame(), votes_frame(), {"a": tmp_path / "a.npy"})
