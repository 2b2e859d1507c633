"""Human overrides: keep / fix / remove rows, and `secondary` rows that set secondary labels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_ledger import CONSENSUS_SPLIT, PAPER, overrides, tables, vote

from stages.contracts.errors import InputError
from stages.method.ledger import decide_split
from stages.method.overrides import load_overrides


def decided(*rows: dict, table: pd.DataFrame, config=PAPER) -> pd.DataFrame:
    votes, manifest = tables(*rows)
    ledger, clean = decide_split(
        votes, manifest, config=config, overrides=table, overrides_source="data/overrides/val.csv"
    )
    return ledger.set_index("image_id"), clean


def test_secondary_rows_set_exactly_the_listed_classes() -> None:
    ledger, clean = decided(
        vote("a", 10),
        vote("b", 526, ensemble={526: 0.45, 664: 0.4}),
        vote("c", 10),
        table=overrides(
            ("a", "secondary", "11", "also a goldfinch"),
            ("a", "secondary", "n01532829", "and a house finch"),
            ("b", "secondary", "", "no monitor after all"),
            ("c", "fix", "12", "a house finch"),
            ("c", "secondary", "13", ""),
        ),
        config=CONSENSUS_SPLIT,
    )
    assert list(ledger.loc["a", "secondary_labels"]) == [11, 12]
    assert list(ledger.loc["b", "secondary_labels"]) == []
    assert ledger.loc["c", ["action", "new_label"]].tolist() == ["fix", 12]
    assert list(ledger.loc["c", "secondary_labels"]) == [13]
    assert ledger["override"].all()
    assert "secondary labels set by override" in ledger.loc["a", "reason"]
    assert list(clean.set_index("image_id").loc["c", "secondary_labels"]) == [13]


@pytest.mark.parametrize(
    "rows, match",
    [
        (
            (("a", "remove", "", ""), ("a", "secondary", "11", "")),
            r"line 3 .*secondary labels only apply to kept or fixed images, this one is remove",
        ),
        ((("a", "secondary", "11", ""), ("a", "secondary", "11", "")), r"repeated or mixed"),
        ((("a", "secondary", "", ""), ("a", "secondary", "11", "")), r"repeated or mixed"),
        ((("a", "secondary", "10", ""),), r"class 10 \(brambling\) is the image's label"),
        ((("a", "secondary", "n9", ""),), r"new_label 'n9' is not a class index"),
    ],
)
def test_bad_secondary_rows_name_the_line_and_change_nothing(rows: tuple, match: str) -> None:
    with pytest.raises(InputError, match=match):
        decided(vote("a", 10), table=overrides(*rows))


def test_header_only_overrides_file_means_none(tmp_path: Path) -> None:
    assert len(load_overrides(Path("data/overrides/val.csv"))) == 0
    (tmp_path / "o.csv").write_text("image_id,action,label\n")
    with pytest.raises(ValueError, match="header must be image_id,action,new_label,note"):
        load_overrides(tmp_path / "o.csv")


def test_an_overrides_file_is_parsed_strictly_with_a_bom_and_quoted_commas(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_bytes(
        "\ufeffimage_id,action,new_label,note\n\n"
        'a,fix,11,"a goldfinch, clearly"\nb,keep,,\n'.encode()
    )
    table = load_overrides(path)
    assert table.to_dict("records") == [
        {"image_id": "a", "action": "fix", "new_label": "11", "note": "a goldfinch, clearly"},
        {"image_id": "b", "action": "keep", "new_label": "", "note": ""},
    ]
    assert table.index.tolist() == [3, 4]  # the lines, blank line 2 skipped
    ledger, _ = decided(vote("a", 10), vote("b", 10, (7, 7, 7)), table=table)
    assert ledger.loc["a", "reason"] == "override: a goldfinch, clearly"


@pytest.mark.parametrize(
    "text, match",
    [
        ("a,keep,,a note, with a comma\n", r"o.csv line 2: 5 fields, expected 4 .*double quotes"),
        ("a,keep\n", r"o.csv line 2: 2 fields, expected 4"),
        ('a,keep,,"never closed\n', r"o.csv line 2: not valid CSV \(unexpected end of data\)"),
        ("b,fix,1_0,\n", r"line 2 \(image_id 'b'\): new_label '1_0' is not a class index"),
        ("b,fix,+3,\n", r"line 2 \(image_id 'b'\): new_label '\+3' is not a class index"),
    ],
)
def test_a_loose_overrides_row_is_an_error_naming_the_line(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "o.csv"
    path.write_text("image_id,action,new_label,note\n" + text)
    with pytest.raises(InputError, match=match):
        decided(vote("a", 10), vote("b", 10), table=load_overrides(path))


def test_a_header_that_only_looks_right_is_shown_quoted(tmp_path: Path) -> None:
    (tmp_path / "o.csv").write_text("image_id,action,new_label,note \n")
    with pytest.raises(InputError, match=r"got 'image_id','action','new_label','note '; fix"):
        load_overrides(tmp_path / "o.csv")
