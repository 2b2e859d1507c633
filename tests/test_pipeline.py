"""End to end: the whole pipeline under real `dvc repro` in a temp git repo on a demo slice.

One project is reproduced once for the module; the tests then check what a researcher relies on:
the outputs and metrics exist and reconcile, DVC re-runs only what a params change touches, and two
iterations are two commits that `dvc metrics diff` compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import copy_project, run_in, stale_stages

pytestmark = pytest.mark.slow

MODELS = [
    "mobilenetv1_025",
    "mobilenetv1_050",
    "mobilenetv1_075",
    "mobilenetv2_100_tf",
    "mobilenetv2_100_tf2",
]


REPRO: dict[str, str] = {}
"""The first `dvc repro`'s output (stdout + stderr) of the module's project."""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("pipeline") / "project", 40)
    done = run_in(project, "dvc", "repro")
    REPRO["output"] = done.stdout + done.stderr
    run_in(project, "git", "add", "-A")
    run_in(project, "git", "commit", "-qm", "iteration 0")
    return project


def edit_params(project: Path, edit) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_repro_writes_every_output(project: Path) -> None:
    manifest = pd.read_parquet(project / "data/manifests/val.parquet")
    ledger = pd.read_parquet(project / "data/decisions/val.parquet")
    assert len(manifest) == len(ledger) == 40
    assert list(ledger["image_id"]) == list(manifest["image_id"])
    assert ledger["action"].isin(["keep", "fix", "remove", "skip"]).all()
    for model in MODELS:
        for view in ("full", "boxes"):
            assert (project / f"data/predictions/val/{model}.{view}.npy").is_file()
    metrics = json.loads((project / "metrics/val.json").read_text())
    counts = metrics["counts"]
    assert counts["keep"] + counts["fix"] + counts["remove"] + counts["skip"] == 40
    assert stale_stages(project) == set()


def test_default_run_draws_cam_overlays_and_dvc_warns_of_no_empty_output(project: Path) -> None:
    """explain.overlays > 0 by default: every CAM pair (up to the limit) has its overlay PNG, and
    every overlays folder holds its index, so DVC never warns that an output folder is empty."""
    assert "is empty" not in REPRO["output"], REPRO["output"][-3000:]
    for split in ("val", "train_demo"):
        cams = pd.read_parquet(project / f"data/cams/{split}.parquet")
        index = json.loads((project / f"data/cams/{split}-overlays/index.json").read_text())
        assert len(index["files"]) == min(len(cams), index["explain.overlays"])
        assert all(
            (project / f"data/cams/{split}-overlays" / name).is_file() for name in index["files"]
        )


def test_published_folder_loads_with_datasets(project: Path, tmp_path: Path) -> None:
    from datasets import load_dataset

    ledger = pd.read_parquet(project / "data/decisions/val.parquet")
    clean = load_dataset(str(project / "data/hub"), split="val", cache_dir=str(tmp_path))
    evidence = load_dataset(
        str(project / "data/hub"), "ledger", split="val", cache_dir=str(tmp_path)
    )
    assert clean.num_rows == int(ledger["action"].isin(["keep", "fix"]).sum())
    assert evidence.num_rows == len(ledger)
    assert clean.features["label"].num_classes == 1000


def test_metrics_show_lists_the_split_metrics(project: Path) -> None:
    shown = json.loads(run_in(project, "dvc", "metrics", "show", "--json").stdout)
    files = {name for rev in shown.values() for name in rev.get("data", {})}
    assert "metrics/val.json" in files
    table = run_in(project, "dvc", "metrics", "show", "metrics/val.json").stdout.splitlines()
    assert max(map(len, table)) < 1300, "the split's headline figures no longer fit a screen"
    assert "counts.fix" in table[0] and "reference.agreement_after" in table[0]
    assert "percent" not in table[0] and "top5" not in table[0]
    models = pd.read_csv(project / "metrics/val-models.csv")
    assert models["model"].tolist() == MODELS and "original_top5" in models


def test_plots_show_is_complete_offline(project: Path, tmp_path: Path) -> None:
    """`dvc plots show` writes a page that loads no script and nothing from the network: every
    plot is a picture the evaluate stage drew."""
    import re

    run_in(project, "dvc", "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots/index.html").read_text()
    assert "<script" not in html and not re.search(r"(src|href)=\"https?:", html)
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 4  # classes and rounds of val and train_demo
    assert all((tmp_path / "plots" / image).read_bytes()[:4] == b"\x89PNG" for image in images)


def test_threshold_change_reruns_only_cheap_stages(project: Path) -> None:
    original = (project / "params.yaml").read_text()
    try:
        edit_params(project, lambda p: p["decide"]["val"].update(h1=1, h2=2))
        stale = stale_stages(project)
        assert "decide@val" in stale and not any(s.startswith("predict@") for s in stale)
        assert "vote@val" not in stale and "explain@val" not in stale
        edit_params(project, lambda p: p["vote"]["val"].update(fn=0.9))
        stale = stale_stages(project)
        assert "vote@val" in stale and not any(s.startswith("predict@") for s in stale)
    finally:
        (project / "params.yaml").write_text(original)
    assert stale_stages(project) == set()


def test_model_change_reruns_only_its_own_predict_stage(project: Path) -> None:
    original = (project / "params.yaml").read_text()
    try:
        edit_params(
            project, lambda p: p["models"]["mobilenetv1_025"].update(kwargs={"drop_rate": 0.0})
        )
        predicts = {s for s in stale_stages(project) if s.startswith("predict@")}
        assert predicts == {"predict@val-mobilenetv1_025-full", "predict@val-mobilenetv1_025-boxes"}
    finally:
        (project / "params.yaml").write_text(original)


def test_a_changed_view_list_reruns_only_the_views_it_adds_and_what_reads_them(
    project: Path,
) -> None:
    original = (project / "params.yaml").read_text()
    try:
        edit_params(project, lambda p: p["predict"].update(views=["full", "boxes", "hflip"]))
        stale = stale_stages(project)
        predicts = {s for s in stale if s.startswith("predict@")}
        assert predicts == {f"predict@val-{m}-hflip" for m in MODELS}
        assert "vote@val" in stale and "ingest@val" not in stale
        edit_params(project, lambda p: p["predict"].update(views=["full"]))
        stale = stale_stages(project)
        assert not any(s.startswith("predict@") for s in stale) and "vote@val" in stale
    finally:
        (project / "params.yaml").write_text(original)
    assert stale_stages(project) == set()


def test_swapped_model_weights_re_run_predict_and_vote_refuses_the_stale_predictions(
    project: Path,
) -> None:
    models = project / "data/demo/models"
    weights = models / "mobilenetv1_025.tf_in1k/model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes((models / "mobilenetv1_050.tf_in1k/model.safetensors").read_bytes())
        assert "predict@val-mobilenetv1_025-full" in stale_stages(project)
        result = run_in(project, "python", "-m", "stages.vote", "--split", "val", check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "of model 'mobilenetv1_025' were made with local-dir:" in result.stderr
        assert "re-run them with `dvc repro predict@val-mobilenetv1_025-" in result.stderr
    finally:
        weights.write_bytes(original)
    assert stale_stages(project) == set()


def test_outputs_restore_from_a_dvc_remote_and_an_experiment_reverts_cleanly(
    project: Path, tmp_path: Path
) -> None:
    """Predictions (npy and sidecar) come back from the DVC cache: a fresh clone + `dvc pull`, and
    reverting an experiment, leave nothing to re-run (no predict ever re-runs for this)."""
    run_in(project, "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run_in(project, "dvc", "push")
    clone = tmp_path / "clone"
    run_in(tmp_path, "git", "clone", "-q", str(project), str(clone))
    run_in(clone, "dvc", "remote", "add", "-f", "-d", "local", str(tmp_path / "remote"))
    run_in(clone, "dvc", "pull")
    assert (clone / "data/predictions/val/mobilenetv1_025.full.json").is_file()
    assert stale_stages(clone) == set()
    original = (project / "params.yaml").read_text()
    edit_params(project, lambda p: p["decide"]["val"].update(strategy="paper"))
    run_in(project, "dvc", "repro")
    run_in(project, "git", "checkout", "params.yaml", "dvc.lock", "metrics")  # metrics live in git
    run_in(project, "dvc", "checkout")
    assert (project / "params.yaml").read_text() == original
    assert stale_stages(project) == set()
    run_in(project, "git", "checkout", ".dvc/config")


def test_two_iterations_are_two_commits_that_metrics_diff_compares(project: Path) -> None:
    run_in(project, "imagenet-clean", "promote", "--split", "val")
    run_in(project, "dvc", "repro")
    stale = stale_stages(project)
    assert stale == set()
    run_in(project, "git", "add", "-A")
    run_in(project, "git", "commit", "-qm", "iteration 1")
    diff = json.loads(run_in(project, "dvc", "metrics", "diff", "HEAD~1", "--json").stdout)
    changes = diff["metrics/val.json"]
    assert changes["iteration"] == {"old": 0, "new": 1, "diff": 1}
    ledger = pd.read_parquet(project / "data/decisions/val.parquet")
    assert set(ledger["iteration"]) == {1}


def test_an_image_predict_cannot_decode_is_a_counted_skip_in_every_stage(tmp_path: Path) -> None:
    """`ingest.verify: header` lets a truncated JPEG through; predict cannot decode it. Under
    `dvc repro` it becomes a `skip` with its reason (not a removal with a null label), and
    evaluate counts it instead of stopping on its NaN predictions."""
    project = copy_project(tmp_path / "project", 12)
    folder = project / "data/demo/imagenet-val/ILSVRC/Data/CLS-LOC/val"
    image = sorted(folder.glob("*.JPEG"))[3]
    image.write_bytes(image.read_bytes()[:3000])

    def edit(params: dict) -> None:
        params["ingest"]["verify"] = "header"
        params["predict"]["models"] = MODELS[:2]
        params["decide"]["val"]["h2"] = 2

    edit_params(project, edit)
    run_in(project, "dvc", "repro", "evaluate@val")
    manifest = pd.read_parquet(project / "data/manifests/val.parquet")
    assert manifest["skip_reason"].isna().all()  # a header-only ingest saw nothing wrong
    ledger = pd.read_parquet(project / "data/decisions/val.parquet").set_index("image_id")
    assert ledger.loc[image.stem, "action"] == "skip"
    assert ledger.loc[image.stem, "reason"].startswith("skip: unreadable image: predict could not")
    assert pd.isna(ledger.loc[image.stem, "new_label"])
    counts = json.loads((project / "metrics/val.json").read_text())["counts"]
    assert counts["skip"] == 1 and sum(counts[a] for a in ("keep", "fix", "remove", "skip")) == 12
