"""End to end: `dvc repro ingest` in a fresh git repo on a slice of the demo."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import run_in

from stages.contracts import formats
from stages.sources.layouts import parse_voc_xml


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
    assert "up to date" in status.stdout


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
    assert "data/nowhere" in output  # DVC checks the declared dep itself, before the stage runs


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
        "error: predictions data/predictions/v2/mobilenetv1_025.npy do not exist; run `dvc "
        "repro predict@v2-mobilenetv1_025` (add 'v2' to params.yaml predict.splits"
    ) in result.stderr
    assert "No such file or directory" not in result.stderr
