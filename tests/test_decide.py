"""The decide stage's rules on hand-built votes tables (the votes contract, an explicit schema).

The votes and CAM tables are built by hand because each rule needs an exact count of candidates or
top-5 misses at its threshold; real votes on the demo cannot be steered to each boundary.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from test_ledger import (
    CAMS_SCHEMA,
    MERGE_TABLE,
    MODELS,
    TYPEWRITER,
    VOTES_SCHEMA,
    tables,
    vote,
)

from stages.contracts import formats
from stages.contracts.formats import CLEAN_SCHEMA, LEDGER_FULL_SCHEMA
from stages.decide import run_decide


def _project(tmp_path: Path, params: dict, *rows: dict, overrides: str = "") -> list[str]:
    """A project folder in `tmp_path` whose split `val` has these votes rows, no CAM rows, the
    paper's merge table and these overrides rows (CSV lines); `params` set for the test models.
    Returns the split's image ids."""
    votes, manifest = tables(*rows)
    formats.write_table(
        manifest, tmp_path / formats.manifest_path("val"), schema=formats.MANIFEST_SCHEMA
    )
    formats.write_table(votes, tmp_path / formats.votes_path("val"), schema=VOTES_SCHEMA)
    formats.write_table(
        pa.Table.from_pylist([], schema=CAMS_SCHEMA), tmp_path / formats.cams_path("val")
    )
    (tmp_path / "data/table_a1_merges.csv").write_text(MERGE_TABLE.read_text())
    (tmp_path / "data/overrides").mkdir()
    (tmp_path / "data/overrides/val.csv").write_text("image_id,action,new_label,note\n" + overrides)
    params["models"].update({m: {"spec": f"local-dir:{m}"} for m in MODELS})
    params["predict"]["models"] = MODELS
    return list(manifest["image_id"])


def test_run_decide_writes_the_ledger_and_clean_split_deterministically(
    tmp_path: Path, params: dict
) -> None:
    _project(
        tmp_path,
        params,
        vote("ILSVRC2012_val_00000001", 10, (7, 7, 7)),
        vote("ILSVRC2012_val_00000002", 10, misses=5),
        vote("ILSVRC2012_val_00000003", TYPEWRITER),
    )
    params["decide"]["val"]["strategy"] = "paper"
    params["decide"]["val"]["duplicates"]["group"] = None  # see test_run_decide_applies_...
    counts = run_decide("val", params, root=tmp_path)
    assert counts == {
        "keep": 1,
        "fix": 1,
        "remove": 1,
        "skip": 0,
        "merged": 1,
        "override": 0,
        "exempted": 0,
        "secondary": 0,
        "placeholders": 21,
        "duplicates": 0,
        "with_issues": 0,
    }
    ledger_file = tmp_path / formats.ledger_path("val")
    first = ledger_file.read_bytes()
    assert pq.read_schema(ledger_file).names == LEDGER_FULL_SCHEMA.names
    assert LEDGER_FULL_SCHEMA.names[: len(formats.LEDGER_SCHEMA)] == formats.LEDGER_SCHEMA.names
    # additive contract changes only: the later releases' columns come after the first eight
    assert formats.LEDGER_SCHEMA.names[8:] == [
        "secondary_labels",
        "confidence",
        "review",
        "duplicate_group",
        "issues",
    ]
    assert pq.read_schema(tmp_path / formats.clean_path("val")).equals(CLEAN_SCHEMA)
    run_decide("val", params, root=tmp_path)
    assert ledger_file.read_bytes() == first


def test_the_ledger_s_nullable_integers_read_as_integers_in_pandas_and_datasets(
    tmp_path: Path, params: dict
) -> None:
    """`new_label` is null on removals and `duplicate_group` outside groups: pandas must not turn
    them into float64 (pandas' `Int32` with <NA>), and `datasets` reads int32 with None."""
    _project(
        tmp_path,
        params,
        vote("ILSVRC2012_val_00000001", 10, (7, 7, 7)),
        vote("ILSVRC2012_val_00000002", 10, misses=5),
    )
    params["decide"]["val"]["strategy"] = "paper"
    params["decide"]["val"]["duplicates"]["group"] = None
    run_decide("val", params, root=tmp_path)
    ledger_file = tmp_path / formats.ledger_path("val")

    frame = pd.read_parquet(ledger_file).set_index("image_id")
    for column in formats.LEDGER_NULLABLE_INTEGERS:
        assert frame[column].dtype == pd.Int32Dtype(), column
    assert frame.loc["ILSVRC2012_val_00000001", "new_label"] == 7
    assert frame.loc["ILSVRC2012_val_00000002", "new_label"] is pd.NA
    assert frame["label"].dtype == "int32"  # never null: stays a plain integer

    import datasets

    rows = datasets.Dataset.from_parquet(str(ledger_file), cache_dir=str(tmp_path / "hf"))
    assert rows.features["new_label"] == datasets.Value("int32")
    assert rows.features["duplicate_group"] == datasets.Value("int32")
    assert rows["new_label"] == [7, None]


def test_each_split_reads_only_its_own_overrides_file(tmp_path: Path, params: dict) -> None:
    """A valid override of a val image neither breaks another split that shares image ids nor
    applies to it (one overrides file per split, `splits.<split>.overrides`)."""
    rows = (vote("ILSVRC2012_val_00000001", 10, (7, 7, 7)), vote("ILSVRC2012_val_00000002", 10))
    (tmp_path / "data/table_a1_merges.csv").parent.mkdir(parents=True)
    (tmp_path / "data/table_a1_merges.csv").write_text(MERGE_TABLE.read_text())
    (tmp_path / "data/overrides").mkdir()
    (tmp_path / "data/overrides/val.csv").write_text(
        "image_id,action,new_label,note\nILSVRC2012_val_00000002,remove,,blurry\n"
    )
    (tmp_path / "data/overrides/v2.csv").write_text("image_id,action,new_label,note\n")
    params["models"].update({m: {"spec": f"local-dir:{m}"} for m in MODELS})
    params["predict"]["models"] = MODELS
    params["splits"]["v2"] = {**params["splits"]["val"], "overrides": "data/overrides/v2.csv"}
    params["decide"]["val"]["duplicates"]["group"] = None
    params["decide"]["v2"] = params["decide"]["val"]
    for split in ("val", "v2"):
        votes, manifest = tables(*rows)
        formats.write_table(
            manifest, tmp_path / formats.manifest_path(split), schema=formats.MANIFEST_SCHEMA
        )
        formats.write_table(votes, tmp_path / formats.votes_path(split), schema=VOTES_SCHEMA)
        formats.write_table(
            pa.Table.from_pylist([], schema=CAMS_SCHEMA), tmp_path / formats.cams_path(split)
        )
    assert run_decide("val", params, root=tmp_path)["override"] == 1
    assert run_decide("v2", params, root=tmp_path)["override"] == 0
    v2 = pd.read_parquet(tmp_path / formats.ledger_path("v2")).set_index("image_id")
    assert v2.loc["ILSVRC2012_val_00000002", "action"] == "keep"


def test_run_decide_applies_the_duplicates_policy(tmp_path: Path, params: dict) -> None:
    """A val image in a duplicates group with a train image is removed as a leak, with a reason
    naming the copy; the issues table fills `issues`; overrides still win over the policy."""
    ids = _project(
        tmp_path,
        params,
        vote("ILSVRC2012_val_00000001", 10, (7, 7, 7)),
        vote("ILSVRC2012_val_00000002", 10),
        vote("ILSVRC2012_val_00000003", TYPEWRITER),
        overrides="ILSVRC2012_val_00000002,keep,,a person checked it\n",
    )
    member = {"kind": "exact", "similarity": 1.0, "size": 2, "conflicting": True}
    table = pd.DataFrame(
        [
            {**member, "image_id": ids[k], "split": "val", "row": k, "group": k, "label": 10}
            for k in (1, 2)
        ]
        + [
            {**member, "image_id": f"n0_{k}", "split": "train", "row": k, "group": k, "label": 3}
            for k in (1, 2)
        ]
    )
    formats.write_table(table, tmp_path / formats.duplicates_path("vt"))
    issues = pd.DataFrame({"image_id": ids, "split": "val", "issues": [[], ["dark"], []]})
    formats.write_table(issues, tmp_path / formats.duplicate_issues_path("vt"))
    params["splits"]["train"] = params["splits"]["val"]
    params["duplicates"]["groups"] = {"vt": ["val", "train"]}
    params["decide"]["val"]["duplicates"].update(group="vt", leak_from=["train"])
    counts = run_decide("val", params, root=tmp_path)
    ledger = pd.read_parquet(tmp_path / formats.ledger_path("val"))
    assert ledger["action"][2] == "remove" and counts["duplicates"] == 2
    assert "duplicate leak: exact copy of train image n0_2 labelled 3 (" in ledger["reason"][2]
    assert ledger["action"][1] == "keep" and ledger["override"][1]  # the override wins
    assert ledger["duplicate_group"].tolist()[1:] == [1, 2]
    assert [list(i) for i in ledger["issues"]] == [[], ["dark"], []]
