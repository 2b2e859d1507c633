"""Vote: real cleanlab on hand-built predictions whose label issues are known, the stage on a
miniature project in a temp dir (manifest, predictions, labels file, params), and real demo models.

The hand-built arrays are the only stand-ins: they let each test know exactly which rows
cleanlab must flag. Everything else (cleanlab, the parquet/npy files, timm models) is real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from test_labels import FLIP, MODELS, PER_CLASS, K, write_project

from stages.contracts import formats
from stages.contracts.errors import InputError, MissingInputError
from stages.contracts.formats import VOTES_SCHEMA
from stages.method.votes import UNREADABLE
from stages.vote import main

# ---------------------------------------------------------------------------- the stage


def run_stage(root: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> pd.DataFrame:
    monkeypatch.chdir(root)
    assert main(["--split", "val", *args]) == 0
    return pq.read_table(root / formats.votes_path("val")).to_pandas()


def test_stage_writes_the_votes_contract_in_manifest_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_project(tmp_path, dtype="float16")
    votes = run_stage(tmp_path, monkeypatch)
    assert pq.read_schema(tmp_path / formats.votes_path("val")).equals(VOTES_SCHEMA)
    assert votes["image_id"].tolist() == manifest["image_id"].tolist()
    assert votes["original_label"].tolist() == manifest["label"].tolist()
    assert (votes["iteration"] == 0).all()
    row = FLIP[0] * PER_CLASS
    assert votes.loc[row, "cl_candidates"].tolist() == [FLIP[1]] * 2
    assert votes.loc[row, "cl_models"].tolist() == MODELS and votes.loc[row, "top5_misses"] == 2
    assert votes["cl_candidates"].map(len).sum() == 2
    assert votes.loc[199, "inactive_reason"] == "skip: empty file (0 bytes)"
    assert pd.isna(votes.loc[199, "label"]) and len(votes.loc[199, "top5_hit_models"]) == 0
    assert votes["inactive_reason"].notna().sum() == 1
    figures = yaml.safe_load((tmp_path / "metrics/vote/val.json").read_text())
    assert figures["strategy"] == "exact" and figures["active"] == 199
    assert figures["models"]["m_a"]["flagged"] == 1 and figures["rows_with_candidates"] == 1


def test_stage_writes_the_ensemble_evidence_of_mean_pooling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_project(tmp_path, dtype="float16")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["vote"]["evidence"] = {"pooling": "mean"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    votes = run_stage(tmp_path, monkeypatch)
    probs = [
        np.load(tmp_path / formats.predictions_path("val", m)).astype(np.float32) for m in MODELS
    ]
    mean = (probs[0] + probs[1]) / 2
    for row in (0, FLIP[0] * PER_CLASS, 150):
        order = np.argsort(-mean[row], kind="stable")[:5]
        assert votes.loc[row, "ensemble_top"].tolist() == order.tolist()
        # each model's float16 rows are renormalised to sum to 1 (they do within 1e-3)
        np.testing.assert_allclose(votes.loc[row, "ensemble_probs"], mean[row, order], rtol=1e-3)
        label_prob = mean[row, manifest.loc[row, "label"]]
        assert votes.loc[row, "label_prob"] == pytest.approx(label_prob, rel=1e-3)
        assert votes.loc[row, "model_top1"].tolist() == [int(p[row].argmax()) for p in probs]
    assert votes.loc[FLIP[0] * PER_CLASS, "ensemble_top"][0] == FLIP[1]
    assert len(votes.loc[199, "ensemble_top"]) == 0 and pd.isna(votes.loc[199, "label_prob"])


def test_stage_writes_the_posterior_and_how_strong_the_evidence_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default calibrated evidence: the flipped row's label is probably wrong and its best
    other class is the shown one; clean rows' labels are probably right; the figures say how
    often the ensemble agrees with the labels and which noise rate the posterior assumed."""
    write_project(tmp_path)
    votes = run_stage(tmp_path, monkeypatch)
    flipped = FLIP[0] * PER_CLASS
    assert votes.loc[flipped, "best_other"] == FLIP[1]
    assert votes["label_posterior"].idxmin() == flipped
    assert votes.loc[flipped, "label_posterior"] < 0.51
    assert votes.loc[flipped, "best_other_posterior"] > 0.49
    clean = votes.drop(index=[flipped, 199])
    assert (clean["label_posterior"] > 0.99).all()
    assert pd.isna(votes.loc[199, "label_posterior"]) and pd.isna(votes.loc[199, "noise_rate"])
    evidence = yaml.safe_load((tmp_path / "metrics/vote/val.json").read_text())["evidence"]
    assert evidence["pooling"] == "calibrated" and evidence["rows"] == 199
    assert evidence["ensemble_agrees_with_label"] == pytest.approx(198 / 199, abs=1e-4)
    # cleanlab finds no confident off-diagonal row here (the flipped row ties its class's
    # threshold); one pseudo-count each way keeps the posterior from trusting every label
    assert evidence["noise_cleanlab"] == 0.0 and evidence["noise"] == round(1 / 201, 4)
    assert votes["noise_rate"].dropna().unique().tolist() == pytest.approx([1 / 201])


def test_an_image_predict_could_not_decode_takes_no_part_in_the_vote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path)
    path = tmp_path / formats.predictions_path("val", MODELS[1])
    probs = np.load(path)
    probs[42] = np.nan  # usable in the manifest, NaN in one model
    formats.write_npy(probs, path)
    votes = run_stage(tmp_path, monkeypatch)
    assert votes.loc[42, "inactive_reason"] == UNREADABLE and pd.isna(votes.loc[42, "label"])
    assert len(votes.loc[42, "ensemble_top"]) == 0 and pd.isna(votes.loc[42, "label_prob"])
    assert votes["inactive_reason"].notna().sum() == 2
    figures = yaml.safe_load((tmp_path / "metrics/vote/val.json").read_text())
    assert figures["active"] == 198 and figures["rows_with_candidates"] == 1


def test_predictions_of_weights_that_were_swapped_since_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    write_project(tmp_path)
    weights = tmp_path / "models" / MODELS[0] / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"the weights predict used")
    sidecar = tmp_path / formats.sidecar_path("val", MODELS[0])
    recorded = {
        **json.loads(sidecar.read_text()),
        "source": "predict",
        "spec": f"local-dir:models/{MODELS[0]}",
        "weights_sha256": formats.file_sha256(weights),
    }
    formats.write_json(recorded, sidecar)
    run_stage(tmp_path, monkeypatch)  # the same weights: fine
    weights.write_bytes(b"other weights, overwritten after predict")
    with pytest.raises(
        InputError,
        match=rf"predictions data/predictions/val/{MODELS[0]}.full.npy of model '{MODELS[0]}' were "
        rf"made with local-dir:models/{MODELS[0]} \(weights sha256 [0-9a-f]{{12}}\.\.\.\), but "
        r".* they are stale; re-run them with "
        rf"`dvc repro predict@val-{MODELS[0]}-full`",
    ):
        run_stage(tmp_path, monkeypatch)


def test_predictions_in_another_row_order_or_without_sidecar_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_project(tmp_path)
    sidecar = tmp_path / formats.sidecar_path("val", "m_a")
    reversed_ids = manifest["image_id"].iloc[::-1]
    formats.write_json({"image_ids_sha256": formats.image_ids_sha256(reversed_ids)}, sidecar)
    with pytest.raises(
        InputError,
        match=r"m_a.full.npy: its rows are not in the manifest's image_id "
        r"order .*import-predictions",
    ):
        run_stage(tmp_path, monkeypatch)
    sidecar.unlink()
    with pytest.raises(
        MissingInputError,
        match=r"sidecar data/predictions/val/m_a.full.json does not "
        r"exist",
    ):
        run_stage(tmp_path, monkeypatch)


def test_stage_output_is_byte_identical_on_rerun_and_strategy_comes_from_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path)
    run_stage(tmp_path, monkeypatch)
    first = (tmp_path / formats.votes_path("val")).read_bytes()
    run_stage(tmp_path, monkeypatch)
    assert (tmp_path / formats.votes_path("val")).read_bytes() == first
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["vote"]["val"]["strategy"] = "batched"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    votes = run_stage(tmp_path, monkeypatch)
    assert yaml.safe_load(Path("metrics/vote/val.json").read_text())["strategy"] == "batched"
    assert votes.loc[FLIP[0] * PER_CLASS, "cl_candidates"].tolist() == [FLIP[1]] * 2
    params["vote"]["val"]["fn_typo"] = 1
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"`vote.val` has an unknown key 'fn_typo'"):
        main(["--split", "val"])


def test_labels_file_overrides_manifest_labels_and_marks_removed_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_project(tmp_path)
    row = FLIP[0] * PER_CLASS
    labels = pd.DataFrame(
        {
            "image_id": manifest["image_id"],
            "label": manifest["label"],
            "iteration": 1,
            "reason": None,
        }
    ).astype({"label": "Int32"})
    labels.loc[row, "label"] = FLIP[1]  # fixed in iteration 0: now agrees with the models
    labels.loc[5, ["label", "reason"]] = [pd.NA, "removed in iteration 0: 3 unique candidates"]
    labels = labels.iloc[::-1]  # rows align by image_id, not by position
    write_project(tmp_path, labels_file=labels)
    votes = run_stage(tmp_path, monkeypatch)
    assert votes["image_id"].tolist() == manifest["image_id"].tolist()
    assert (votes["iteration"] == 1).all()
    assert votes.loc[row, "label"] == FLIP[1] and votes.loc[row, "original_label"] == FLIP[0]
    assert votes["cl_candidates"].map(len).sum() == 0
    assert votes.loc[5, "inactive_reason"] == "removed in iteration 0: 3 unique candidates"
    assert pd.isna(votes.loc[5, "label"]) and votes.loc[5, "original_label"] == 0
    assert votes.loc[199, "inactive_reason"].startswith("skip: ")
    assert votes["inactive_reason"].notna().sum() == 2


def test_missing_predictions_file_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path)
    (tmp_path / formats.predictions_path("val", "m_b")).unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"predictions data/predictions/val/m_b.full.npy do not "
        r"exist",
    ):
        run_stage(tmp_path, monkeypatch)


def test_predictions_of_the_wrong_length_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path)
    formats.write_npy(
        np.zeros((10, K), np.float32), tmp_path / formats.predictions_path("val", "m_a")
    )
    with pytest.raises(
        ValueError,
        match=r"predictions data/predictions/val/m_a.full.npy have shape "
        r"\(10, 1000\), expected \(200, 1000\)",
    ):
        run_stage(tmp_path, monkeypatch)


def test_unknown_split_and_missing_vote_section_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError, match=r"split 'train' is not configured; params.yaml splits: \['val'\]"
    ):
        main(["--split", "train"])
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["vote"] = {"exact_max_rows": 10}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"no `vote.val:` section"):
        main(["--split", "val"])


# ---------------------------------------------------------------------------- real demo models
