"""stages.contracts.sidecars: the keys every predictions sidecar has, and top-k scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.contracts import formats
from stages.contracts.sidecars import predictions_sidecar, topk_hits, write_features_placeholder


def test_topk_counts_ties_as_hits_and_skips_unknown_labels_and_nan_rows() -> None:
    probs = np.full((4, 1000), 0.0005, dtype=np.float32)
    probs[0, 7] = 0.5  # label 7: top-1
    probs[1, 3] = 0.5  # label 9 ties with 995 others below 3: top-5 (fewer than 5 strictly above)
    probs[2] = np.nan  # an image predict could not decode
    labels = np.array([7, 9, 1, np.nan])
    hits, scored = topk_hits(probs, labels, np.array([True, True, True, True]))
    assert scored == 2 and hits.tolist() == [1, 2]


def test_a_sidecar_names_its_source_and_the_row_order_digest() -> None:
    manifest = pd.DataFrame({"image_id": ["a", "b"], "skip_reason": [None, "empty file"]})
    sidecar = predictions_sidecar(
        manifest,
        model="m",
        split="val",
        source="imported",
        dtype="float16",
        spec=None,
        top1=None,
        top5=None,
        view="full",
    )
    assert sidecar["n"] == 2 and sidecar["n_skipped"] == 1 and sidecar["view"] == "full"
    assert sidecar["image_ids_sha256"] == formats.image_ids_sha256(["a", "b"])
    with pytest.raises(ValueError, match=r"sidecar source 'guess' is not one of"):
        predictions_sidecar(
            manifest,
            model="m",
            split="val",
            source="guess",
            dtype="float16",
            spec=None,
            top1=None,
            top5=None,
        )


def test_the_features_placeholder_has_the_manifests_rows_and_no_columns(tmp_path) -> None:
    manifest = pd.DataFrame({"image_id": ["a", "b", "c"], "skip_reason": [None, "empty", None]})
    out = tmp_path / "emb" / "m.full.npy"
    sidecar = write_features_placeholder(
        out, manifest, split="val", model="m", view="full", source="imported"
    )
    assert np.load(out).shape == (3, 0) and np.load(out).dtype == np.float16
    assert sidecar["enabled"] is False and sidecar["dim"] == 0 and sidecar["n_skipped"] == 1
    assert sidecar["image_ids_sha256"] == formats.image_ids_sha256(manifest["image_id"])
    assert (tmp_path / "emb" / "m.full.json").is_file()
