"""`imagenet-clean promote`: ledger -> the next iteration's labels file (hand-built ledgers)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from test_labels import ROWS, ledger

from stages.cli import main as cli_main
from stages.contracts import formats
from stages.contracts.formats import LEDGER_FULL_SCHEMA
from stages.contracts.labels import LABELS_SCHEMA, promote_labels
from stages.promote import promote


def write_metrics(root: Path, iteration: int, agreement: tuple[float, float] | None) -> None:
    counts = {"keep": 2, "fix": 1, "remove": 2, "remove_new": 1, "secondary": 1}
    metrics = {"iteration": iteration, "counts": counts}
    if agreement:
        metrics["reference"] = {"agreement_before": agreement[0], "agreement_after": agreement[1]}
    formats.write_json(metrics, root / formats.metrics_path("val"))


def test_promote_writes_the_params_labels_file_through_the_cli(
    tmp_path: Path, params: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    formats.write_table(
        ledger(iteration=0), tmp_path / formats.ledger_path("val"), schema=LEDGER_FULL_SCHEMA
    )
    params["splits"]["val"]["labels"] = "iterations/val.parquet"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["promote", "--split", "val"]) == 2  # no metrics of the iteration yet
    write_metrics(tmp_path, 0, (92.5, 93.9))
    assert cli_main(["promote", "--split", "val"]) == 0
    written = pq.read_table(tmp_path / "iterations/val.parquet")
    assert written.schema.equals(LABELS_SCHEMA)
    assert written.column("iteration").to_pylist() == [1] * len(ROWS)
    assert written.column("label").to_pylist() == [1, 3, 6, None, None, None]
    first = (tmp_path / "iterations/val.parquet").read_bytes()
    rounds = (tmp_path / "iterations/val-rounds.csv").read_text()
    assert rounds.splitlines() == [
        "iteration,keep,fix,remove_new,remove,secondary,agreement_before,agreement_after",
        "0,2,1,1,2,1,92.5,93.9",
    ]
    assert promote("val", params, root=tmp_path).read_bytes() == first  # promoting twice: no-op
    assert (tmp_path / "iterations/val-rounds.csv").read_text() == rounds


def test_each_promotion_adds_its_round_to_the_history(tmp_path: Path, params: dict) -> None:
    for iteration, agreement in ((0, (92.5, 93.9)), (1, None), (2, (95.0, 95.2))):
        formats.write_table(
            ledger(iteration), tmp_path / formats.ledger_path("val"), schema=LEDGER_FULL_SCHEMA
        )
        write_metrics(tmp_path, iteration, agreement)
        promote("val", params, root=tmp_path)
    rounds = pd.read_csv(tmp_path / "iterations/val-rounds.csv")
    assert rounds["iteration"].tolist() == [0, 1, 2]
    assert rounds["agreement_after"].tolist()[::2] == [93.9, 95.2]
    assert pd.isna(rounds["agreement_after"][1])
    write_metrics(tmp_path, 1, None)
    with pytest.raises(ValueError, match=r"is from iteration 1 but the ledger from iteration 2"):
        promote("val", params, root=tmp_path)


def test_a_stale_ledger_is_not_promoted_over_newer_labels(tmp_path: Path, params: dict) -> None:
    formats.write_table(
        ledger(iteration=0), tmp_path / formats.ledger_path("val"), schema=LEDGER_FULL_SCHEMA
    )
    formats.write_table(
        promote_labels(ledger(iteration=3)),
        tmp_path / "iterations/val.parquet",
        schema=LABELS_SCHEMA,
    )
    with pytest.raises(ValueError, match=r"at iteration \[4\] but the ledger is from iteration 0"):
        promote("val", params, root=tmp_path)
