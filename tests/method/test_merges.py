"""stages.method.merges: the paper's Table A.1 read with clear errors, applied to kept rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stages.contracts import formats
from stages.contracts.errors import InputError, MissingInputError
from stages.method.merges import apply_merges, load_merges

ROOT = Path(__file__).resolve().parents[2]
WNIDS = formats.class_wnids()


def test_the_shipped_table_holds_the_papers_21_merges() -> None:
    merges = load_merges(ROOT / "data/table_a1_merges.csv")
    assert len(merges) == 21 and not set(merges) & set(merges.values())


@pytest.mark.parametrize(
    "rows, message",
    [
        ("source_wnid\nn01440764\n", r"needs columns source_wnid and target_wnid"),
        (
            "source_wnid,target_wnid\nn01440764,n99999999\n",
            r"line 2: \['n99999999'\] not ILSVRC2012",
        ),
        (
            "source_wnid,target_wnid\nn01440764,n01443537\nn01440764,n01484850\n",
            r"line 3: source n01440764 is listed twice",
        ),
        (
            "source_wnid,target_wnid\nn01440764,n01443537\nn01443537,n01484850\n",
            r"\['n01443537'\] are both a source and a target",
        ),
    ],
)
def test_a_bad_table_names_the_line_and_the_fix(tmp_path: Path, rows: str, message: str) -> None:
    (tmp_path / "merges.csv").write_text(rows)
    with pytest.raises(InputError, match=message):
        load_merges(tmp_path / "merges.csv")
    with pytest.raises(MissingInputError, match=r"set decide.merges.enabled: false"):
        load_merges(tmp_path / "nowhere.csv")


def test_only_kept_and_fixed_rows_move_to_the_target_and_say_so() -> None:
    ledger = pd.DataFrame(
        {
            "action": ["keep", "fix", "remove"],
            "new_label": [0, 0, pd.NA],
            "reason": ["keep", "fix", "remove"],
            "merged": False,
            "secondary_labels": [[1], [], []],
        }
    )
    ledger["new_label"] = ledger["new_label"].astype("Int32")
    merged = apply_merges(ledger, {0: 5, 1: 5})
    assert merged["new_label"].tolist()[:2] == [5, 5] and merged["merged"].tolist() == [
        True,
        True,
        False,
    ]
    assert merged["secondary_labels"].tolist()[0] == []  # a secondary label merged into the label
    assert "merged n01440764" in merged["reason"][0]
