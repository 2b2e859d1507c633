"""End to end: `dvc repro ingest` in a fresh git repo on a slice of the demo."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import run_in
from stages import formats
from stages.layouts import parse_voc_xml


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
