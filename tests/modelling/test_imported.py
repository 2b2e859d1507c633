"""stages.modelling.imported: files of predictions made elsewhere, matched to the manifest by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.contracts.errors import InputError, MissingInputError
from stages.modelling.imported import match_rows, open_predictions

MANIFEST = pd.DataFrame({"image_id": ["a", "b", "c"], "skip_reason": [None, None, "empty file"]})


def test_rows_map_to_manifest_positions_and_skip_rows_may_be_absent() -> None:
    assert match_rows(np.array(["b", "a"]), MANIFEST, where="f").tolist() == [1, 0]


@pytest.mark.parametrize(
    "ids, message",
    [
        (["a", "b", "z"], r"f: 1 image ids are not in the manifest, e.g. 'z'"),
        (["a", "b", "a"], r"f: 1 image ids appear more than once, e.g. 'a'"),
        (["a"], r"f: 1 of the manifest's 2 usable images have no row, e.g. 'b'"),
    ],
)
def test_unknown_repeated_and_missing_ids_are_refused(ids: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        match_rows(np.array(ids), MANIFEST, where="f")


def test_an_npz_opens_for_streaming_and_a_missing_file_is_named(tmp_path: Path) -> None:
    probs = np.full((2, 1000), 1e-3, dtype=np.float32)
    np.savez(tmp_path / "p.npz", image_id=np.array(["a", "b"]), probabilities=probs)
    table = open_predictions(tmp_path / "p.npz")
    assert table.image_ids.tolist() == ["a", "b"] and table.dtype == np.float32
    chunks = list(table.chunks())
    assert chunks[0][0] == 0 and np.array_equal(chunks[0][1], probs)
    with pytest.raises(MissingInputError, match=r"predictions file .*nowhere.npz does not exist"):
        open_predictions(tmp_path / "nowhere.npz")
