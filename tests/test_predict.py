"""The predict stage on real demo images with the real demo models (timm local-dir folders)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import cmdline, descendants, run_in
from test_predict_data import SKIP_ROWS, _dump, _small_params, _with_skip_rows, _write_manifest

from stages import predict
from stages.contracts import formats
from stages.contracts.errors import ConfigError
from stages.modelling import predict_config, predict_data, predictor, shards
from stages.modelling.models import create_model, data_config, eval_transform
from stages.modelling.specs import model_specs
from stages.sources.images import open_image

SIDECAR_KEYS = {
    "model",
    "spec",
    "architecture",
    "weights_sha256",
    "preprocessing",
    "dtype",
    "n",
    "n_skipped",
    "n_unreadable",
    "top1",
    "top5",
    "split",
    "image_ids_sha256",
    "source",
    "view",
    "view_params",
}


def _top5_reference(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    return (
        100.0 * float(np.mean(order[:, 0] == labels)),
        100.0 * float(np.mean((order == labels[:, None]).any(axis=1))),
    )


def test_predictions_rows_dtype_skip_rows_and_sidecar(params, small_manifest, demo_root, tmp_path):
    manifest = _with_skip_rows(small_manifest.head(24))
    out = tmp_path / "preds" / "mobilenetv1_025.npy"
    sidecar = predict.run_predict(
        "val",
        "mobilenetv1_025",
        _small_params(params),
        manifest_path=_write_manifest(manifest, tmp_path),
        out=out,
    )

    probs = formats.load_predictions("val", "mobilenetv1_025", path=out)
    assert isinstance(probs, np.memmap) and probs.shape == (24, 1000) and probs.dtype == np.float32
    skipped = np.zeros(24, dtype=bool)
    skipped[list(SKIP_ROWS)] = True
    assert np.isnan(probs[skipped]).all() and not np.isnan(probs[~skipped]).any()
    np.testing.assert_allclose(probs[~skipped].sum(axis=1), 1.0, atol=1e-4)

    # Row order and preprocessing: rows match a plain timm forward of that manifest row's image.
    spec = model_specs(params, ["mobilenetv1_025"])[0]
    model = create_model(spec)
    transform = eval_transform(data_config(model))
    for row in (0, 7, 23):
        image = transform(open_image(demo_root, manifest.at[row, "path"])).unsqueeze(0)
        with torch.inference_mode():
            expected = torch.softmax(model(image), dim=1)[0].numpy()
        np.testing.assert_allclose(probs[row], expected, atol=1e-5)

    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk == sidecar and set(sidecar) == SIDECAR_KEYS
    weights = Path(spec.spec.removeprefix("local-dir:")) / "model.safetensors"
    labels = manifest["label"].to_numpy()[~skipped].astype(np.int64)
    top1, top5 = _top5_reference(np.asarray(probs[~skipped]), labels)
    assert sidecar == {
        "model": "mobilenetv1_025",
        "spec": spec.spec,
        "architecture": "mobilenetv1_025",
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "preprocessing": {
            "input_size": [3, 128, 128],
            "interpolation": "bilinear",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "crop_pct": 0.875,
            "crop_mode": "center",
        },
        "dtype": "float32",
        "n": 24,
        "n_skipped": 2,
        "n_unreadable": 0,
        "top1": pytest.approx(top1),
        "top5": pytest.approx(top5),
        "split": "val",
        "source": "predict",
        "image_ids_sha256": formats.image_ids_sha256(manifest["image_id"]),
        "view": "full",
        "view_params": {},
    }
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "mobilenetv1_025.json",
        "mobilenetv1_025.npy",
    ]


def test_a_truncated_image_becomes_a_nan_row_not_a_failed_split(
    params, small_manifest, demo_root, tmp_path, caplog
):
    """A header-only ingest (`ingest.verify: header`) lets a truncated JPEG through as usable."""
    manifest = small_manifest.head(12).copy()
    root = tmp_path / "root"
    for path in manifest["path"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes((demo_root / path).read_bytes())
    broken = root / manifest.at[4, "path"]
    broken.write_bytes(broken.read_bytes()[:3000])
    params["splits"]["val"]["root"] = str(root)
    out = tmp_path / "preds" / "m.npy"
    with caplog.at_level(logging.WARNING, logger="stages.predict"):
        sidecar = predict.run_predict(
            "val",
            "mobilenetv1_025",
            _small_params(params, workers=1),
            manifest_path=_write_manifest(manifest, tmp_path),
            out=out,
        )
    probs = np.load(out)
    assert np.isnan(probs[4]).all() and not np.isnan(np.delete(probs, 4, axis=0)).any()
    assert sidecar["n_unreadable"] == 1 and sidecar["n_skipped"] == 0
    labels = manifest["label"].to_numpy().astype(np.int64)
    top1, _ = _top5_reference(np.delete(probs, 4, axis=0), np.delete(labels, 4))
    assert sidecar["top1"] == pytest.approx(top1)
    assert manifest.at[4, "path"] in caplog.text and "ingest.verify: full" in caplog.text


def test_float16_storage(params, small_manifest, tmp_path):
    manifest = _write_manifest(small_manifest.head(16), tmp_path)
    full = predict.run_predict(
        "val",
        "mobilenetv1_025",
        _small_params(params),
        manifest_path=manifest,
        out=tmp_path / "f32.npy",
    )
    half = predict.run_predict(
        "val",
        "mobilenetv1_025",
        _small_params(params, dtype="float16"),
        manifest_path=manifest,
        out=tmp_path / "f16.npy",
    )
    probs16 = np.load(tmp_path / "f16.npy", mmap_mode="r")
    assert probs16.dtype == np.float16 and probs16.shape == (16, 1000)
    assert half["dtype"] == "float16" and full["dtype"] == "float32"
    np.testing.assert_allclose(probs16.astype(np.float32), np.load(tmp_path / "f32.npy"), atol=1e-3)


def test_resume_after_kill_9_is_byte_identical(params, demo_manifest, tmp_path, caplog):
    """Kill the real stage process mid-run, re-run it: only missing shards are computed."""
    params = _small_params(params, batch_size=8, shard_size=8, workers=0, device="cpu")
    args = [
        "--split",
        "val",
        "--model",
        "mobilenetv1_050",
        "--params",
        _dump(params, tmp_path),
        "--manifest",
        str(_write_manifest(demo_manifest.head(64), tmp_path)),
    ]
    out = tmp_path / "killed" / "mobilenetv1_050.npy"
    work = tmp_path / ".work" / "killed" / "mobilenetv1_050"  # outside the output folder
    log = tmp_path / "killed.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.predict", *args, "--out", str(out)],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 120
    while (
        not list(work.glob("shard-*.npy"))
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, log.read_text()[-2000:]
    done = len(list(work.glob("shard-*.npy")))
    assert 1 <= done < 8, f"kill landed after {done} of 8 shards"
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # nothing DVC hashes

    caplog.set_level(logging.INFO, logger="stages.modelling.shards")
    assert predict.main([*args, "--out", str(out)]) == 0
    assert f"resuming; {done} of 8 shards already done, computing {8 - done}" in caplog.text
    reference = tmp_path / "uninterrupted" / "mobilenetv1_050.npy"
    assert predict.main([*args, "--out", str(reference)]) == 0
    assert out.read_bytes() == reference.read_bytes()
    assert out.with_suffix(".json").read_bytes() == reference.with_suffix(".json").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.with_suffix(".json").name, out.name]
    assert not (tmp_path / ".work").exists()  # the work folder and its parents are gone


def _plant_zero_shard(
    params: dict, manifest: pd.DataFrame, out: Path, *, fingerprint_edit: dict
) -> None:
    config = predict_config.PredictOptions.from_params(params)
    member = predictor.load_member(
        model_specs(params, ["mobilenetv1_025"])[0], device=torch.device("cpu")
    )
    with predictor.cpu_threads(config.threads):
        fingerprint = predictor.shard_fingerprint(
            predict_data.Output(member, "full"),
            shards.manifest_sha256(manifest),
            params["splits"]["val"]["root"],
            config=config,
            device=torch.device("cpu"),
        )
    store = shards.ShardStore(
        out,
        {**fingerprint, **fingerprint_edit},
        n_rows=len(manifest),
        shard_size=config.shard_size,
        dtype=np.float32,
    )
    store.open()
    store.write(0, np.zeros((config.shard_size, 1000), dtype=np.float32))


@pytest.mark.parametrize(
    "edit, reused",
    [
        ({}, True),
        ({"weights": "another model"}, False),
        ({"manifest_sha256": "another manifest"}, False),
        ({"threads": 7}, False),
    ],
)
def test_shards_are_reused_only_under_their_fingerprint(
    params, small_manifest, tmp_path, edit, reused
):
    params = _small_params(params, workers=0)
    manifest = small_manifest.head(32)
    out = tmp_path / "mobilenetv1_025.full.npy"
    _plant_zero_shard(params, manifest, out, fingerprint_edit=edit)
    predict.run_predict(
        "val", "mobilenetv1_025", params, manifest_path=_write_manifest(manifest, tmp_path), out=out
    )
    probs = np.load(out)
    assert (probs[:16] == 0).all() == reused
    np.testing.assert_allclose(probs[16:].sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"model": "resnet_nope"}, ConfigError, r"not defined under `models:`"),
        (
            {"dtype": "bfloat16"},
            ConfigError,
            r"`predict.dtype` must be one of 'float32', 'float16', got 'bfloat16'",
        ),
        ({"shard_size": 0}, ConfigError, r"`predict.shard_size` must be an int >= 1, got 0"),
        ({"workers": -1}, ConfigError, r"`predict.workers` must be an int >= 0"),
        ({"threads": 0}, ConfigError, r"`predict.threads` must be an int >= 1"),
        (
            {"batchsize": 8},
            ConfigError,
            r"`predict` has an unknown key 'batchsize'; did you mean 'batch_size'",
        ),
        ({"amp": "yes"}, ConfigError, r"`predict.amp` must be true or false, got 'yes'"),
        ({"device": "tpu"}, ConfigError, r"device 'tpu' is not a torch device"),
        (
            {"weights_dir": "data/demo/imagenet-val"},
            ConfigError,
            r"`models.mobilenetv1_025` loads its weights from data/demo/models/mobilenetv1_025"
            r".tf_in1k, outside `predict.weights_dir` \(data/demo/imagenet-val\)",
        ),
        ({"split": "train"}, ConfigError, r"split 'train' is not configured"),
        (
            {"manifest": "nowhere.parquet"},
            FileNotFoundError,
            r"manifest of split 'val' nowhere.parquet",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(params, small_manifest, tmp_path, change, error, match):
    change = dict(change)
    manifest = change.pop("manifest", None) or _write_manifest(small_manifest.head(4), tmp_path)
    model, split = change.pop("model", "mobilenetv1_025"), change.pop("split", "val")
    params["predict"].update(change)
    with pytest.raises(error, match=match):
        predict.run_predict(split, model, params, manifest_path=manifest, out=tmp_path / "p.npy")
    assert not (tmp_path / "p.npy").exists()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_dvc_ends_its_predict_stage_leaves_no_stray_file_and_the_next_repro_resumes(
    make_project,
) -> None:
    """`kill -9` of the `dvc repro` process alone: its predict child ends too (it used to run on
    as an orphan, and still did behind dash where SHELL is unset, as on CI), nothing is left in
    the output folder DVC hashes (the work folder is outside it), and the next `dvc repro`
    computes only the missing shards."""
    project = make_project(96)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["predict"].update(shard_size=2, batch_size=2, workers=0, threads=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_in(project, "dvc", "repro", "ingest@val")
    stage, model = "predict@val-mobilenetv2_100_tf-full", "mobilenetv2_100_tf.full"
    work = project / "data/predictions/.work/val" / model
    outputs = project / "data/predictions/val"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "HF_HUB_OFFLINE": "1"}
    env.pop("SHELL", None)  # DVC then runs the stage through /bin/sh -c: dash stays in between
    dvc = subprocess.Popen(
        ["dvc", "repro", stage],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    stages: list[int] = []
    while not stages and dvc.poll() is None:  # found before any shard: killing follows at once
        assert time.monotonic() < deadline, "no predict stage started in 5 minutes"
        stages = [p for p in descendants(dvc.pid) if "stages.predict" in cmdline(p)]
        time.sleep(0.01)
    while not list(work.glob("shard-*.npy")) and dvc.poll() is None:
        assert time.monotonic() < deadline, "predict wrote no shard in 5 minutes"
        time.sleep(0.005)
    assert dvc.poll() is None, f"dvc repro ended before a shard appeared in {work}"
    os.kill(dvc.pid, signal.SIGKILL)
    dvc.wait()
    assert stages, "the predict stage had finished before the kill"
    deadline = time.monotonic() + 20
    while any(cmdline(p) for p in stages) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [p for p in stages if cmdline(p)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "the predict stage ran on after dvc was killed"
    done = len(list(work.glob("shard-*.npy")))
    assert 1 <= done < 48, f"kill landed after {done} of 48 shards"
    assert not outputs.exists() or sorted(outputs.iterdir()) == []

    result = run_in(project, "dvc", "repro", stage)
    assert f"resuming; {done} of 48 shards already done" in result.stdout + result.stderr
    assert sorted(p.name for p in outputs.iterdir()) == [f"{model}.json", f"{model}.npy"]
    assert not (project / "data/predictions/.work").exists()
    status = run_in(project, "dvc", "status", stage).stdout
    assert "up to date" in status
