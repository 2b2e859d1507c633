"""`imagenet-clean promote`: ledger -> the next iteration's labels file (hand-built ledgers)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import formats
from stages.cli import main as cli_main
from stages.formats import LEDGER_FULL_SCHEMA
from stages.labels import LABELS_SCHEMA
from stages.promote import promote, promote_labels

ROWS = [  # image_id, label, action, new_label, reason
    ("k", 1, "keep", 1, "keep"),
    ("f", 2, "fix", 3, "fix: 3 of 5 models flagged it, candidates {3: 3} (h1=3) -> 3"),
    ("m", 5, "keep", 6, "keep; merged a -> b"),
    ("r", 4, "remove", None, "remove: top-5 missed by 4 of 5 models (h3=4), no CAM exemption"),
    ("s", None, "skip", None, "skip: truncated file"),
    ("old", None, "remove", None, "removed in iteration 0: remove: 3 unique candidates"),
]


def ledger(iteration: int = 1) -> pd.DataFrame:
    return pa.Table.from_pylist([{
        "image_id": i, "label": label, "action": action, "new_label": new, "cl_candidates": [],
        "top5_misses": 0, "exempted": False, "reason": reason, "original_label": label or 0,
        "iteration": iteration, "merged": i == "m", "override": False, "exemptions": 0,
    } for i, label, action, new, reason in ROWS], schema=LEDGER_FULL_SCHEMA).to_pandas()


def test_labels_are_the_new_labels_of_active_rows_and_the_next_iteration() -> None:
    labels = promote_labels(ledger(iteration=1))
    assert list(labels["image_id"]) == [r[0] for r in ROWS]
    assert labels["label"].tolist()[:3] == [1, 3, 6] and labels["label"][3:].isna().all()
    assert set(labels["iteration"]) == {2}
    assert labels["reason"][:3].isna().all()
    assert labels["reason"].tolist()[3:] == [
        "removed in iteration 1: remove: top-5 missed by 4 of 5 models (h3=4), no CAM exemption",
        "skip: truncated file", "removed in iteration 0: remove: 3 unique candidates"]


def test_promote_writes_the_params_labels_file_through_the_cli(tmp_path: Path, params: dict,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    formats.write_table(ledger(iteration=0), tmp_path / formats.ledger_path("val"),
                        schema=LEDGER_FULL_SCHEMA)
    params["splits"]["val"]["labels"] = "iterations/val.parquet"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["promote", "--split", "val"]) == 0
    written = pq.read_table(tmp_path / "iterations/val.parquet")
    assert written.schema.equals(LABELS_SCHEMA)
    assert written.column("iteration").to_pylist() == [1] * len(ROWS)
    assert written.column("label").to_pylist() == [1, 3, 6, None, None, None]
    first = (tmp_path / "iterations/val.parquet").read_bytes()
    assert promote("val", params, root=tmp_path).read_bytes() == first  # promoting twice: no-op


def test_a_stale_ledger_is_not_promoted_over_newer_labels(tmp_path: Path, params: dict) -> None:
    formats.write_table(ledger(iteration=0), tmp_path / formats.ledger_path("val"),
                        schema=LEDGER_FULL_SCHEMA)
    formats.write_table(promote_labels(ledger(iteration=3)), tmp_path / "iterations/val.parquet",
                        schema=LABELS_SCHEMA)
    with pytest.raises(ValueError, match=r"at iteration \[4\] but the ledger is from iteration 0"):
        promote("val", params, root=tmp_path)


def test_a_ledger_mixing_iterations_is_refused() -> None:
    mixed = ledger().assign(iteration=[0, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"mixes iterations \[0, 1\]"):
        promote_labels(mixed)
