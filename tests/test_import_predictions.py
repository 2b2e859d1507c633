"""import-predictions: predictions made elsewhere are matched to the manifest by image_id,
checked, written in the predict contract and recorded for DVC (real dvc in a temp repo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_in

from stages.contracts import formats
from stages.contracts.errors import ConfigError, InputError, UserError
from stages.contracts.sidecars import topk_hits
from stages.import_predictions import main, run_import

MODEL = "mobilenetv1_025"
SKIP = 7  # manifest row made a skip row


@pytest.fixture
def manifest(small_manifest: pd.DataFrame, tmp_path: Path) -> Path:
    """48 real demo rows, one of them a skip row, written where --manifest can read them."""
    table = small_manifest.copy()
    table.loc[SKIP, "skip_reason"] = "unreadable image: test"
    path = tmp_path / "manifest.parquet"
    formats.write_table(table, path, schema=formats.MANIFEST_SCHEMA)
    return path


def softmax(rows: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(rows, 1000)) * 3
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def probs(manifest: Path) -> np.ndarray:
    """(48, 1000) softmax probabilities in manifest order (what a cluster would have computed)."""
    return softmax(len(pq.read_table(manifest)))


def ids_of(manifest: Path) -> np.ndarray:
    return np.asarray(pq.read_table(manifest).column("image_id").to_pylist())


def run(params: dict, manifest: Path, file: Path, tmp_path: Path, **options) -> dict:
    return run_import(
        "val",
        MODEL,
        file,
        params,
        manifest_path=manifest,
        out=tmp_path / "out" / f"{MODEL}.npy",
        commit=False,
        **options,
    )


def test_rows_are_matched_by_image_id_not_position(params, manifest, probs, tmp_path) -> None:
    order = np.random.default_rng(1).permutation(len(probs))  # the file's own row order
    file = tmp_path / "shuffled.npz"
    np.savez(file, image_id=ids_of(manifest)[order], probabilities=probs[order])
    sidecar = run(params, manifest, file, tmp_path)
    written = np.load(tmp_path / "out" / f"{MODEL}.npy")
    usable = np.arange(len(probs)) != SKIP
    assert written.dtype == np.float32 and written.shape == (48, 1000)
    assert np.array_equal(written[usable], probs[usable]) and np.isnan(written[SKIP]).all()
    labels = pq.read_table(manifest).column("label").to_numpy().astype(np.float64)
    hits, scored = topk_hits(probs, labels, usable)
    assert sidecar == {
        **sidecar,
        "source": "imported",
        "n": 48,
        "n_skipped": 1,
        "dtype": "float32",
        "top1": round(100 * hits[0] / scored, 4),
        "split": "val",
        "model": MODEL,
        "top5": round(100 * hits[1] / scored, 4),
        "spec": params["models"][MODEL]["spec"],
        "image_ids_sha256": formats.image_ids_sha256(ids_of(manifest)),
        "imported_sha256": formats.file_sha256(file),
        "imported_from": file.name,
    }
    assert json.loads((tmp_path / "out" / f"{MODEL}.json").read_text()) == sidecar


def test_reversed_rows_with_their_ids_give_the_same_file(params, manifest, probs, tmp_path) -> None:
    """The bug the importer exists for: a file whose rows are reversed is put back in order."""
    np.save(tmp_path / "reversed.npy", probs[::-1])
    (tmp_path / "ids.txt").write_text("\n".join(ids_of(manifest)[::-1]) + "\n")
    run(params, manifest, tmp_path / "reversed.npy", tmp_path, image_ids=tmp_path / "ids.txt")
    reversed_bytes = (tmp_path / "out" / f"{MODEL}.npy").read_bytes()
    np.savez_compressed(tmp_path / "forward.npz", image_id=ids_of(manifest), probs=probs)
    run(params, manifest, tmp_path / "forward.npz", tmp_path)
    assert (tmp_path / "out" / f"{MODEL}.npy").read_bytes() == reversed_bytes


def test_parquet_and_float16_storage(params, manifest, probs, tmp_path) -> None:
    table = pa.table(
        {
            "image_id": ids_of(manifest)[::-1],
            "probabilities": pa.array(
                list(probs[::-1].astype(np.float64)), type=pa.list_(pa.float64())
            ),
        }
    )
    pq.write_table(table, tmp_path / "p.parquet")
    params["predict"]["dtype"] = "float16"
    sidecar = run(params, manifest, tmp_path / "p.parquet", tmp_path)
    written = np.load(tmp_path / "out" / f"{MODEL}.npy")
    assert written.dtype == np.float16 and sidecar["dtype"] == "float16"
    assert np.array_equal(written[:SKIP], probs[:SKIP].astype(np.float16))


def test_a_npy_without_ids_is_refused(params, manifest, probs, tmp_path) -> None:
    np.save(tmp_path / "p.npy", probs)
    with pytest.raises(InputError, match="a .npy holds no image ids.*--image-ids"):
        run(params, manifest, tmp_path / "p.npy", tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda ids, p: (np.append(ids, "ILSVRC2012_val_99999999"), np.vstack([p, p[:1]])),
            r"1 image ids are not in the manifest, e.g. 'ILSVRC2012_val_99999999'; "
            r"the predictions belong",
        ),
        (
            lambda ids, p: (np.append(ids, ids[3]), np.vstack([p, p[3:4]])),
            r"1 image ids appear more than once, e.g. '{id3}'; keep one row per image",
        ),
        (
            lambda ids, p: (ids[2:], p[2:]),
            r"2 of the manifest's 47 usable images have no row, e.g. '{id0}', '{id1}'; "
            r"predict every usable",
        ),
        (
            lambda ids, p: (ids, np.log(p)),
            r"row 0 \({id0}\) has values outside \[0, 1\] \(min -[0-9.]+, max -[0-9.]+\): "
            r"these look like logits .*; apply a softmax",
        ),
        (
            lambda ids, p: (ids, np.where(np.arange(len(p))[:, None] == 4, np.nan, p)),
            r"row 4 \({id4}\) has NaN or infinite values, but its image is usable",
        ),
        (lambda ids, p: (ids, p * 0.5), r"row 0 \({id0}\) sums to 0.5, not 1 \(tolerance 0.001\)"),
        (
            lambda ids, p: (ids, p[:, :999]),
            r"probabilities have shape \(48, 999\); expected \(N, 1000\)",
        ),
    ],
)
def test_bad_files_are_refused_naming_rows_and_ids(
    params, manifest, probs, tmp_path, change, message
) -> None:
    ids = ids_of(manifest)
    bad_ids, bad_probs = change(ids, probs)
    np.savez(tmp_path / "bad.npz", image_id=bad_ids, probabilities=bad_probs)
    expected = message.format(**{f"id{k}": ids[k] for k in range(5)})
    with pytest.raises(InputError, match=expected):
        run(params, manifest, tmp_path / "bad.npz", tmp_path)
    assert not (tmp_path / "out" / f"{MODEL}.npy").exists()


def test_skip_rows_may_be_missing_or_nan(params, manifest, probs, tmp_path) -> None:
    usable = np.arange(len(probs)) != SKIP
    np.savez(tmp_path / "a.npz", image_id=ids_of(manifest)[usable], probabilities=probs[usable])
    run(params, manifest, tmp_path / "a.npz", tmp_path)
    first = (tmp_path / "out" / f"{MODEL}.npy").read_bytes()
    with_nan = probs.copy()
    with_nan[SKIP] = np.nan
    np.savez(tmp_path / "b.npz", image_id=ids_of(manifest), probabilities=with_nan)
    run(params, manifest, tmp_path / "b.npz", tmp_path)
    assert (tmp_path / "out" / f"{MODEL}.npy").read_bytes() == first


def test_unknown_model_and_missing_file_are_user_errors(params, manifest, probs, tmp_path) -> None:
    with pytest.raises(ConfigError, match="model 'resnet5O' is not defined under `models:`"):
        run_import("val", "resnet5O", tmp_path / "x.npz", params, manifest_path=manifest)
    with pytest.raises(UserError, match="predictions file .*nope.npz does not exist"):
        run(params, manifest, tmp_path / "nope.npz", tmp_path)


@pytest.mark.slow
def test_import_in_a_dvc_project_leaves_predict_up_to_date(make_project) -> None:
    """In a temp git+dvc copy of the project: ingest, import one model's predictions through the
    CLI, and `dvc status` must not list that predict stage (so `dvc repro` will not predict it)."""
    project = make_project(6)
    run_in(project, "dvc", "repro", "ingest@val")
    ids = pq.read_table(project / "data/manifests/val.parquet").column("image_id").to_pylist()
    np.savez(
        project / "cluster.npz",
        image_id=np.asarray(ids)[::-1],
        probabilities=softmax(len(ids))[::-1],
    )
    run_in(
        project,
        "python",
        "-m",
        "stages.import_predictions",
        "--split",
        "val",
        "--model",
        MODEL,
        "cluster.npz",
    )
    stage = f"predict@val-{MODEL}-full"
    assert "up to date" in run_in(project, "dvc", "status", stage).stdout
    everything = run_in(project, "dvc", "status").stdout
    assert stage not in everything and "predict@val-mobilenetv1_050" in everything
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    assert sorted(out["path"] for out in lock["outs"]) == [
        f"data/embeddings/val/{MODEL}.full.json",
        f"data/embeddings/val/{MODEL}.full.npy",
        f"data/predictions/val/{MODEL}.full.json",
        f"data/predictions/val/{MODEL}.full.npy",
    ]
    features = json.loads((project / f"data/embeddings/val/{MODEL}.full.json").read_text())
    assert features["source"] == "imported" and not features["enabled"]
    result = run_in(project, "dvc", "repro", "--dry", stage)
    assert f"Stage '{stage}' didn't change" in result.stdout + result.stderr


def test_cli_writes_the_contract_files(params, manifest, probs, tmp_path, monkeypatch) -> None:
    np.savez(tmp_path / "p.npz", image_id=ids_of(manifest), probabilities=probs)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # not a DVC project: nothing to commit
    assert main(["--split", "val", "--model", MODEL, "p.npz", "--manifest", str(manifest)]) == 0
    assert Path(f"data/predictions/val/{MODEL}.full.npy").is_file()
    sidecar = json.loads(Path(f"data/predictions/val/{MODEL}.full.json").read_text())
    assert sidecar["source"] == "imported" and sidecar["view"] == "full"
    # the predict stage's features output: imported predictions come without features
    assert np.load(f"data/embeddings/val/{MODEL}.full.npy").shape == (len(ids_of(manifest)), 0)
