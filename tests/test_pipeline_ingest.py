"""End to end: `dvc repro ingest` in a fresh git repo on a slice of the demo."""

from __future__ import annotations

import os
import re
import shutil

import pandas as pd
import pytest
import yaml
from conftest import DEMO_ROOT, run_in, stale_stages

from stages.contracts import formats
from stages.sources.layouts import parse_voc_xml

MODELS = [
    "mobilenetv1_025",
    "mobilenetv1_050",
    "mobilenetv1_075",
    "mobilenetv2_100_tf",
    "mobilenetv2_100_tf2",
]


@pytest.mark.slow
def test_dvc_repro_ingest_matches_official_labels_and_boxes(make_project) -> None:
    project = make_project(24)
    run_in(project, "dvc", "repro", "ingest@val")
    manifest = pd.read_parquet(project / "data/manifests/val.parquet")
    split = project / "data/demo/imagenet-val"
    solution = pd.read_csv(split / "LOC_val_solution.csv").set_index("ImageId")
    assert len(manifest) == len(solution) == 24
    wnids = formats.class_wnids()
    for row in manifest.itertuples():
        assert wnids[row.label] == solution.loc[row.image_id, "PredictionString"].split()[0]
        objects, _ = parse_voc_xml(split / "ILSVRC/Annotations/CLS-LOC/val" / f"{row.image_id}.xml")
        assert [list(b) for b in row.boxes] == [b for name, b in objects if name == row.wnid]
    status = run_in(project, "dvc", "status", "ingest@val")
    assert status.stdout.split() == ["ingest@val:", "always", "changed"]  # DVC walks no images


@pytest.mark.slow
def test_dvc_repro_shows_the_one_line_error(make_project) -> None:
    project = make_project(4)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ingest"]["on_bad_imag"] = params["ingest"].pop("on_bad_image")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run_in(project, "dvc", "repro", "ingest@val", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert (
        "error: params.yaml `ingest` has an unknown key 'on_bad_imag'; did you mean 'on_bad_image'?"
    ) in output
    params["ingest"]["on_bad_image"] = params["ingest"].pop("on_bad_imag")
    params["splits"]["val"]["root"] = "data/nowhere"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run_in(project, "dvc", "repro", "ingest@val", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert (
        "error: split root data/nowhere does not exist; set params.yaml `splits.val.root`" in output
    )  # DVC does not track the root: ingest itself names it and the key


@pytest.mark.slow
def test_a_split_missing_from_predict_splits_gets_the_fix_not_a_bare_error(make_project) -> None:
    project = make_project(8)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["splits"]["v2"] = {**params["splits"]["val"], "labels": "iterations/v2.parquet"}
    params["vote"]["v2"], params["decide"]["v2"] = params["vote"]["val"], params["decide"]["val"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run_in(project, "dvc", "repro", "vote@v2", check=False)
    assert result.returncode != 0
    assert (
        "error: predictions data/predictions/v2/mobilenetv1_025.full.npy do not exist; run `dvc "
        "repro predict@v2-mobilenetv1_025-full` (add 'v2' to params.yaml predict.splits"
    ) in result.stderr
    assert "No such file or directory" not in result.stderr


@pytest.mark.slow
def test_symlinks_in_the_split_root_become_skip_rows_under_dvc_repro(make_project) -> None:
    """A dangling and a looping symlink among the images: DVC does not hash the image folder, so
    it never trips on them, and ingest records each as a skip row with its reason."""
    project = make_project(4)
    images = sorted((project / "data/demo/imagenet-val/ILSVRC/Data/CLS-LOC/val").iterdir())
    dangling, looping = images[1], images[2]
    dangling.unlink()
    dangling.symlink_to(dangling.with_name("gone.JPEG"))
    looping.unlink()
    looping.symlink_to(looping)
    run_in(project, "dvc", "repro", "ingest@val")
    manifest = pd.read_parquet(project / "data/manifests/val.parquet").set_index("image_id")
    assert len(manifest) == 4
    reasons = manifest["skip_reason"].dropna().to_dict()
    assert sorted(reasons) == [dangling.stem, looping.stem]
    assert reasons[dangling.stem].startswith("dangling symlink: ")
    assert reasons[looping.stem].startswith("broken symlink: ")
    assert "ingest@val" not in stale_stages(project)
    run_in(project, "dvc", "repro", "vote@val")  # the stages after ingest do not trip either


def _ran(result) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr))


@pytest.mark.slow
def test_only_a_changed_image_is_read_again_and_only_its_row_changes(make_project) -> None:
    """Under `dvc repro`: a touched image (same bytes) is probed again but the manifest keeps its
    bytes, so nothing downstream re-runs; an image with new bytes is the only file read, changes
    only its own manifest row, and DVC re-runs what depends on the manifest."""
    project = make_project(6)
    run_in(project, "dvc", "repro", "vote@val")
    manifest = project / "data/manifests/val.parquet"
    first = pd.read_parquet(manifest)
    image = project / "data/demo/imagenet-val" / first.loc[2, "path"]
    os.utime(image)  # new mtime, same bytes
    touched = run_in(project, "dvc", "repro", "vote@val")
    assert _ran(touched) == {"ingest@val"}
    assert "5 files unchanged since the last ingest (probe reused), 1 probed" in touched.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(manifest), first)
    other = sorted((DEMO_ROOT / "ILSVRC/Data/CLS-LOC/val").glob("*.JPEG"))[-1]
    image.unlink()  # DVC may have left the file read-only or linked; replace it
    shutil.copy(other, image)
    changed = run_in(project, "dvc", "repro", "vote@val")
    assert "5 files unchanged since the last ingest (probe reused), 1 probed" in changed.stderr
    after = pd.read_parquet(manifest)
    assert (after["sha256"] != first["sha256"]).tolist() == [False] * 2 + [True] + [False] * 3
    assert after.drop(columns=["sha256", "width", "height"]).equals(
        first.drop(columns=["sha256", "width", "height"])
    )
    predicts = {f"predict@val-{m}-{v}" for m in MODELS for v in ("full", "boxes")}
    assert {"ingest@val", "vote@val"} | predicts == _ran(changed)


def _official_devkit_downloads(folder, n_images: int) -> list[tuple[str, str]]:
    """The official downloads of the first `n_images` demo images, unpacked side by side as
    docs/real-imagenet.md's devkit example names them: ILSVRC2012_img_val (the JPEGs only),
    ILSVRC2012_devkit_t12/data/ (meta.mat in a shuffled ILSVRC2012_ID order and the ground
    truth) and ILSVRC2012_bbox_val (the box XMLs). Returns (image_id, wnid) of the images."""
    import numpy as np
    from scipy.io import savemat

    solution = pd.read_csv(DEMO_ROOT / "LOC_val_solution.csv").sort_values("ImageId")
    rows = [(i, p.split()[0]) for i, p in zip(solution["ImageId"], solution["PredictionString"])]
    rows = rows[:n_images]
    images, data, boxes = (
        folder / "ILSVRC2012_img_val",
        folder / "ILSVRC2012_devkit_t12/data",
        folder / "ILSVRC2012_bbox_val",
    )
    for made in (images, data, boxes):
        made.mkdir(parents=True)
    order = list(np.random.default_rng(1).permutation(formats.class_wnids()))
    synsets = np.zeros(1000, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for k, wnid in enumerate(order):
        synsets[k] = (k + 1, wnid, 0)
    savemat(data / "meta.mat", {"synsets": synsets})
    truth = {int(image_id.rsplit("_", 1)[1]): order.index(wnid) + 1 for image_id, wnid in rows}
    lines = [str(truth.get(n, 1)) for n in range(1, max(truth) + 1)]
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(lines) + "\n")
    for image_id, _ in rows:
        shutil.copy(DEMO_ROOT / "ILSVRC/Data/CLS-LOC/val" / f"{image_id}.JPEG", images)
        shutil.copy(DEMO_ROOT / "ILSVRC/Annotations/CLS-LOC/val" / f"{image_id}.xml", boxes)
    images.chmod(0o555)  # a read-only shared copy: ingest writes nothing there
    return rows


@pytest.mark.slow
def test_the_documented_devkit_example_runs_as_written(make_project, tmp_path) -> None:
    """docs/real-imagenet.md's `val_devkit` entry, copied as written (only /data/ replaced by the
    folder holding the downloads), ingests a devkit-layout copy of the demo under dvc repro."""
    docs = (DEMO_ROOT.parents[2] / "docs/real-imagenet.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", docs, re.S)
    assert block, "docs/real-imagenet.md lost its params example"
    example = yaml.safe_load(re.sub(r"(?<= )/data/", f"{tmp_path}/downloads/", block.group(1)))
    entry = example["splits"]["val_devkit"]
    rows = _official_devkit_downloads(tmp_path / "downloads", 12)
    project = make_project(4)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["splits"]["val_devkit"] = entry
    params["ingest"]["on_missing_image"] = "skip"  # the demo holds 12 of the ground truth's lines
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / entry["overrides"]).write_text("image_id,action,new_label,note\n")
    try:
        run_in(project, "dvc", "repro", "ingest@val_devkit")
    finally:
        (tmp_path / "downloads/ILSVRC2012_img_val").chmod(0o755)
    manifest = pd.read_parquet(project / "data/manifests/val_devkit.parquet")
    assert list(zip(manifest["image_id"], manifest["wnid"])) == rows
    assert manifest["boxes"].map(len).gt(0).all()
