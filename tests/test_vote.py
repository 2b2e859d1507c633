"""Vote: real cleanlab on hand-built predictions whose label issues are known, the stage on a
miniature project in a temp dir (manifest, predictions, labels file, params), and real demo models.

The hand-built arrays are the only stand-ins: they let each test know exactly which rows
cleanlab must flag. Everything else (cleanlab, the parquet/npy files, timm models) is real.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from stages.contracts import formats
from stages.contracts.errors import InputError, MissingInputError
from stages.contracts.formats import VOTES_SCHEMA
from stages.contracts.labels import current_labels
from stages.method.confident import ConfidentConfig
from stages.method.votes import UNREADABLE, model_votes, vote
from stages.modelling.models import create_model, data_config, eval_transform
from stages.modelling.specs import model_specs
from stages.sources.images import open_image
from stages.vote import main

K = formats.NUM_CLASSES
PER_CLASS = 20
FLIP = (3, 7)  # row FLIP[0] * PER_CLASS (true class 7) carries label 3


def probs_for(true: np.ndarray, *, seed: int = 0, top: float = 0.9) -> np.ndarray:
    """(N, K) float32 probabilities: `top` on the true class, the rest spread with some noise."""
    rng = np.random.default_rng(seed)
    rest = rng.uniform(0.5, 1.5, size=(len(true), K)).astype(np.float32)
    rest[np.arange(len(true)), true] = 0
    rest *= (1 - top) / rest.sum(axis=1, keepdims=True)
    rest[np.arange(len(true)), true] = top
    return rest


@pytest.fixture
def flipped() -> tuple[np.ndarray, np.ndarray, int]:
    """10 classes x 20 rows, confidently predicted; one row of class 7 is labelled 3."""
    true = np.repeat(np.arange(10), PER_CLASS)
    labels = true.copy()
    row = FLIP[0] * PER_CLASS
    true[row] = FLIP[1]
    return labels, probs_for(true), row


@pytest.mark.parametrize("strategy", ["exact", "batched"])
def test_clear_label_flip_is_the_only_flag_and_its_candidate_is_the_top_other_class(
    flipped: tuple[np.ndarray, np.ndarray, int], strategy: str
) -> None:
    labels, probs, row = flipped
    result = model_votes(labels, probs, config=ConfidentConfig(strategy=strategy), model="m")
    assert result.strategy == strategy
    assert result.flagged.tolist() == [row]
    assert result.candidates.tolist() == [FLIP[1]]


def test_exact_and_batched_agree_on_a_clear_cut_case() -> None:
    true = np.repeat(np.arange(10), PER_CLASS)
    labels = true.copy()
    flips = {5: 8, 47: 1, 123: 9}  # row -> true class (a different one than its label)
    for row, cls in flips.items():
        true[row] = cls
    probs = probs_for(true, seed=3)
    exact = model_votes(labels, probs, config=ConfidentConfig(strategy="exact"))
    batched = model_votes(labels, probs, config=ConfidentConfig(strategy="batched"))
    assert set(exact.flagged) == set(batched.flagged) == set(flips)
    assert (
        dict(zip(exact.flagged, exact.candidates))
        == flips
        == dict(zip(batched.flagged, batched.candidates))
    )


def test_exact_path_does_not_leave_a_copy_of_the_predictions_in_cleanlab(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    import cleanlab.filter

    labels, probs, _ = flipped
    model_votes(labels, probs, config=ConfidentConfig(strategy="exact"))
    assert not getattr(cleanlab.filter, "pred_probs_by_class", {})


def test_auto_strategy_switches_at_exact_max_rows(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, _ = flipped
    assert (
        model_votes(labels, probs, config=ConfidentConfig(exact_max_rows=200)).strategy == "exact"
    )
    assert (
        model_votes(labels, probs, config=ConfidentConfig(exact_max_rows=199)).strategy
        == "streaming"
    )


def test_float16_predictions_give_the_same_votes(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, row = flipped
    for strategy in ("exact", "batched"):
        half = model_votes(
            labels,
            probs.astype(np.float16),
            config=ConfidentConfig(strategy=strategy, chunk_rows=64),
        )
        assert half.flagged.tolist() == [row] and half.candidates.tolist() == [FLIP[1]]


def test_top5_misses_count_models_whose_top5_lacks_the_label() -> None:
    labels = np.array([0, 0])

    def ranked(position: int) -> np.ndarray:
        """Class 0 (the label) with exactly `position` classes more probable than it."""
        row = np.full(K, 1e-4, dtype=np.float32)
        row[1 : 1 + position] = 0.05
        row[0] = 0.02
        return row / row.sum()

    models = {
        "first": [ranked(0), ranked(0)],
        "fifth": [ranked(4), ranked(5)],
        "sixth": [ranked(5), ranked(9)],
    }
    result = vote(
        labels,
        {m: np.array(rows, dtype=np.float32) for m, rows in models.items()},
        config=ConfidentConfig(strategy="exact"),
    )
    table = result.table.to_pydict()
    assert table["top5_misses"] == [1, 2]
    assert table["top5_hit_models"] == [["first", "fifth"], ["first"]]
    assert table["n_models"] == [3, 3]


def test_a_tie_with_the_fifth_class_counts_as_a_hit() -> None:
    row = np.full(K, 0.5 / (K - 5), dtype=np.float32)
    row[1:5] = 0.1  # four classes above the label, the label tied with many others
    result = model_votes(np.array([0]), row[None, :], config=ConfidentConfig(strategy="exact"))
    assert result.top5_hit.tolist() == [True]
    row[5] = 0.05  # now five classes are more probable
    assert model_votes(np.array([0]), row[None, :] / row.sum()).top5_hit.tolist() == [False]


def test_inactive_rows_take_no_part(flipped: tuple[np.ndarray, np.ndarray, int]) -> None:
    labels, probs, row = flipped
    probs[row] = np.nan  # a skip row's predictions are NaN; inactive rows are never read
    labels[row] = -1
    active = np.ones(len(labels), dtype=bool)
    active[row] = False
    result = vote(
        labels, {"a": probs, "b": probs}, config=ConfidentConfig(strategy="exact"), active=active
    )
    table = result.table.to_pydict()
    assert all(len(r.flagged) == 0 for r in result.models)
    assert table["cl_candidates"][row] == [] and table["top5_misses"][row] == 0
    assert table["top5_hit_models"][row] == []
    assert table["top5_misses"][row + 1] == 0 and table["top5_hit_models"][row + 1] == ["a", "b"]


def test_vote_lists_follow_model_order_with_repeats_kept(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, row = flipped
    other = probs.copy()
    other[row] = probs_for(np.array([FLIP[1]]), seed=9)[0]
    result = vote(
        labels,
        [("z", probs), ("a", probs_for(np.repeat(np.arange(10), PER_CLASS))), ("m", other)],
        config=ConfidentConfig(strategy="exact"),
    )
    table = result.table.to_pydict()
    assert table["cl_models"][row] == ["z", "m"]
    assert table["cl_candidates"][row] == [FLIP[1], FLIP[1]]
    assert table["top5_misses"][row] == 2 and table["top5_hit_models"][row] == ["a"]
    assert sum(map(len, table["cl_candidates"])) == 2


def test_frac_noise_below_one_is_reported_and_ranked_mode_keeps_that_fraction(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """cleanlab multiplies each class-pair prune count by frac_noise and truncates: with 1000
    classes most pairs are seen once, so fn=0.9 drops nearly every flag. The stage says so."""
    true = np.repeat(np.arange(40), PER_CLASS)
    labels = true.copy()
    rows = np.arange(0, 40 * PER_CLASS, PER_CLASS)  # one flip per class pair (i -> i + 1)
    true[rows] = (np.arange(40) + 1) % 40
    probs = probs_for(true, seed=5)
    full = model_votes(labels, probs, config=ConfidentConfig(strategy="exact"))
    assert sorted(full.flagged) == rows.tolist()
    with caplog.at_level(logging.WARNING, logger="stages.vote"):
        truncated = model_votes(
            labels, probs, config=ConfidentConfig(strategy="exact", fn=0.9), model="m"
        )
    assert len(truncated.flagged) == 0 and truncated.flagged_at_fn_1 == 40
    assert "kept 0 of the 40 flags" in caplog.text
    ranked = model_votes(
        labels, probs, config=ConfidentConfig(strategy="exact", fn=0.9, fn_mode="ranked")
    )
    assert len(ranked.flagged) == 36 and ranked.flagged.tolist() == full.flagged[:36].tolist()


@pytest.mark.parametrize("shape", [(199, K), (200, K, 1), (200,)])
def test_pred_probs_of_the_wrong_shape_are_refused(
    flipped: tuple[np.ndarray, np.ndarray, int], shape: tuple[int, ...]
) -> None:
    labels = flipped[0]
    with pytest.raises(
        ValueError, match=r"bad_model: pred_probs must have shape \(N, K\) = \(200,"
    ):
        model_votes(labels, np.zeros(shape, dtype=np.float32), model="bad_model")


def test_nan_on_an_active_row_is_refused_naming_the_row(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, _ = flipped
    probs[17, 4] = np.nan
    with pytest.raises(ValueError, match="m7: predictions of active row 17 are not probabilities"):
        model_votes(labels, probs, model="m7")


def test_labels_outside_the_classes_and_bad_options_are_refused(
    flipped: tuple[np.ndarray, np.ndarray, int],
) -> None:
    labels, probs, _ = flipped
    labels[3] = K
    with pytest.raises(ValueError, match="active label 1000 is outside 0..999"):
        model_votes(labels, probs)
    with pytest.raises(ValueError, match="fn .* must be a number in \\(0, 1\\], got 1.5"):
        ConfidentConfig(fn=1.5)
    with pytest.raises(ValueError, match="strategy must be 'auto' or one of"):
        ConfidentConfig(strategy="fast")
    with pytest.raises(ValueError, match="at least one model"):
        vote(labels, {})


# ---------------------------------------------------------------------------- the stage

MODELS = ["m_a", "m_b"]


def write_project(
    root: Path, *, labels_file: pd.DataFrame | None = None, dtype: str = "float32"
) -> pd.DataFrame:
    """A miniature project: a 200-row manifest (ids not sorted, row 199 a skip row), one
    predictions file per model (row 60 has label 3 but looks like class 7), params.yaml."""
    true = np.repeat(np.arange(10), PER_CLASS)
    ids = [f"img_{(i * 37) % 200:03d}" for i in range(200)]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "path": [f"{i}.JPEG" for i in ids],
            "label": true,
            "wnid": [formats.class_wnids()[c] for c in true],
            "boxes": [[] for _ in ids],
            "width": 227,
            "height": 227,
            "skip_reason": None,
            "sha256": None,
        }
    )
    manifest.loc[199, "skip_reason"] = "empty file (0 bytes)"
    formats.write_table(
        manifest, root / formats.manifest_path("val"), schema=formats.MANIFEST_SCHEMA
    )
    shown = true.copy()
    shown[FLIP[0] * PER_CLASS] = FLIP[1]
    for seed, model in enumerate(MODELS):
        probs = probs_for(shown, seed=seed).astype(dtype)
        probs[199] = np.nan
        formats.write_npy(probs, root / formats.predictions_path("val", model))
        formats.write_json(
            {"model": model, "image_ids_sha256": formats.image_ids_sha256(ids)},
            root / formats.sidecar_path("val", model),
        )
    if labels_file is not None:
        formats.write_table(labels_file, root / "iterations/val.parquet")
    params = {
        "splits": {"val": {"root": "raw", "layout": "kaggle", "labels": "iterations/val.parquet"}},
        "models": {m: {"spec": f"local-dir:models/{m}"} for m in MODELS},
        "predict": {"models": MODELS},
        "vote": {"val": {"fn": 1.0}, "exact_max_rows": 200000},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return manifest


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


def test_stage_writes_the_ensemble_evidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_project(tmp_path, dtype="float16")
    votes = run_stage(tmp_path, monkeypatch)
    probs = [
        np.load(tmp_path / formats.predictions_path("val", m)).astype(np.float32) for m in MODELS
    ]
    mean = (probs[0] + probs[1]) / 2
    for row in (0, FLIP[0] * PER_CLASS, 150):
        order = np.argsort(-mean[row], kind="stable")[:5]
        assert votes.loc[row, "ensemble_top"].tolist() == order.tolist()
        np.testing.assert_allclose(votes.loc[row, "ensemble_probs"], mean[row, order], rtol=1e-6)
        assert votes.loc[row, "label_prob"] == pytest.approx(mean[row, manifest.loc[row, "label"]])
        assert votes.loc[row, "model_top1"].tolist() == [int(p[row].argmax()) for p in probs]
    assert votes.loc[FLIP[0] * PER_CLASS, "ensemble_top"][0] == FLIP[1]
    assert len(votes.loc[199, "ensemble_top"]) == 0 and pd.isna(votes.loc[199, "label_prob"])


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


def test_predictions_in_another_row_order_or_without_sidecar_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_project(tmp_path)
    sidecar = tmp_path / formats.sidecar_path("val", "m_a")
    reversed_ids = manifest["image_id"].iloc[::-1]
    formats.write_json({"image_ids_sha256": formats.image_ids_sha256(reversed_ids)}, sidecar)
    with pytest.raises(
        InputError,
        match=r"m_a.npy: its rows are not in the manifest's image_id "
        r"order .*import-predictions",
    ):
        run_stage(tmp_path, monkeypatch)
    sidecar.unlink()
    with pytest.raises(
        MissingInputError,
        match=r"sidecar data/predictions/val/m_a.json does not "
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


def test_labels_file_that_misses_manifest_rows_is_refused(tmp_path: Path) -> None:
    manifest = write_project(tmp_path)
    labels = pd.DataFrame(
        {"image_id": manifest["image_id"][:-1], "label": 0, "iteration": 1, "reason": None}
    )
    formats.write_table(labels, tmp_path / "iterations/val.parquet")
    with pytest.raises(
        ValueError,
        match=r"iterations/val.parquet does not match the manifest: 1 "
        r"manifest image ids missing \(e.g. \['img_",
    ):
        current_labels(manifest, tmp_path / "iterations/val.parquet")


def test_missing_predictions_file_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path)
    (tmp_path / formats.predictions_path("val", "m_b")).unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"predictions data/predictions/val/m_b.npy do not "
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
        match=r"predictions data/predictions/val/m_a.npy have shape "
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


def demo_predictions(manifest: pd.DataFrame, root: Path, params: dict) -> dict[str, np.ndarray]:
    """The five demo models' softmax over the manifest rows (stages.predict does this in the
    pipeline; computed here so this test does not depend on it)."""
    out = {}
    for spec in model_specs(params):
        model = create_model(spec)
        transform = eval_transform(data_config(model))
        with torch.no_grad():
            batch = torch.stack([transform(open_image(root, p)) for p in manifest["path"]])
            out[spec.name] = torch.softmax(model(batch), dim=1).numpy()
    return out


@pytest.fixture(scope="module")
def small_demo_predictions(
    small_manifest: pd.DataFrame, demo_root: Path, _params: dict
) -> dict[str, np.ndarray]:
    return demo_predictions(small_manifest.head(24), demo_root, _params)


@pytest.mark.parametrize("strategy", ["exact", "batched"])
def test_votes_on_real_demo_predictions(
    small_manifest: pd.DataFrame, strategy: str, small_demo_predictions: dict[str, np.ndarray]
) -> None:
    """24 real images x 5 real models. Most classes have one image here, which exact
    prune_by_noise_rate never flags (min_examples_per_class); batched does flag some."""
    labels = small_manifest["label"].to_numpy()[:24]
    result = vote(labels, small_demo_predictions, config=ConfidentConfig(strategy=strategy))
    table = result.table.to_pydict()
    for m, (name, probs) in enumerate(small_demo_predictions.items()):
        top5 = torch.topk(torch.from_numpy(probs), 5).indices.numpy()
        hit = (top5 == labels[:, None]).any(axis=1)
        assert result.models[m].top5_hit.tolist() == hit.tolist()
        assert [name in models for models in table["top5_hit_models"]] == hit.tolist()
        flagged = result.models[m]
        others = probs[flagged.flagged].copy()
        others[np.arange(len(flagged.flagged)), labels[flagged.flagged]] = -1
        assert flagged.candidates.tolist() == others.argmax(axis=1).tolist()
        assert (flagged.candidates != labels[flagged.flagged]).all()
        assert all(name in table["cl_models"][row] for row in flagged.flagged)
    assert table["top5_misses"] == sum(~r.top5_hit for r in result.models).tolist()
    assert sum(map(len, table["cl_candidates"])) == sum(len(r.flagged) for r in result.models)
    if strategy == "batched":
        assert sum(map(len, table["cl_candidates"])) > 0
