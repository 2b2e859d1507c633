"""stages.explain and stages.method.exemptions: config, candidate selection and the stage end to end
on a tiny votes table.

The votes table is built here (the vote stage is not used), with the contract's schema; everything
else is real: demo images, demo models, pytorch-grad-cam.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_exemptions import MODELS, make_votes

from stages import explain
from stages.contracts import formats

# ----------------------------------------------------------------------------- config


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def stage_dir(
    tmp_path: Path,
    params: dict,
    small_manifest: pd.DataFrame,
    demo_root: Path,
    project_root: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """A project folder with a manifest (8 demo rows, row 3 without boxes) and params that point
    at the demo images and models; the test writes the votes."""
    manifest = small_manifest.head(8).copy()
    manifest.at[3, "boxes"] = []
    formats.write_table(
        manifest, tmp_path / formats.manifest_path("val"), schema=formats.MANIFEST_SCHEMA
    )
    for name in params["models"]:
        folder = params["models"][name]["spec"].removeprefix("local-dir:")
        params["models"][name]["spec"] = f"local-dir:{project_root / folder}"
    params["splits"]["val"]["root"] = str(demo_root)
    params["predict"]["models"] = MODELS
    params["decide"]["val"]["h3"] = 1
    params["explain"]["overlays"] = 2
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path, manifest


def test_stage_writes_contract_table_and_overlays_deterministically(stage_dir) -> None:
    folder, manifest = stage_dir
    ids = manifest["image_id"].tolist()
    votes = make_votes(
        manifest,
        {
            0: (MODELS[:2], None),
            2: ([MODELS[0]], None),
            3: ([MODELS[0]], None),
            5: ([], None),
            6: ([MODELS[0]], "skip: unreadable image"),
        },
    )
    formats.write_table(votes, folder / formats.votes_path("val"))
    assert explain.main(["--split", "val", "--params", "params.yaml"]) == 0
    out = folder / formats.cams_path("val")
    assert pq.read_schema(out).remove_metadata() == formats.CAMS_SCHEMA
    table = pd.read_parquet(out)
    assert list(zip(table["image_id"], table["model"])) == [
        (ids[0], MODELS[0]),
        (ids[0], MODELS[1]),
        (ids[2], MODELS[0]),
    ]
    for row in table.itertuples():
        computed = [s for s in (row.gradcam, row.gradcampp, row.scorecam) if not np.isnan(s)]
        assert all(0.0 <= s <= 1.0 for s in computed) and len(computed) >= 2
        assert row.methods_passed == sum(s >= 0.01 for s in computed)
        assert row.exempted == (row.methods_passed >= 2)
        cheap = int(row.gradcam >= 0.01) + int(row.gradcampp >= 0.01)
        assert np.isnan(row.scorecam) == (cheap != 1)  # early exit: Score-CAM only when undecided
    overlays = folder / "data/cams/val-overlays"
    pngs = sorted(p.name for p in overlays.glob("*.png"))
    assert pngs == sorted([f"{ids[0]}__{MODELS[0]}.png", f"{ids[0]}__{MODELS[1]}.png"])
    index = json.loads((overlays / "index.json").read_text())
    assert index == {"explain.overlays": 2, "files": pngs}
    assert sorted(p.name for p in overlays.iterdir()) == sorted([*pngs, "index.json"])
    first = {p: (overlays / p).read_bytes() for p in pngs} | {"table": out.read_bytes()}
    assert explain.main(["--split", "val", "--params", "params.yaml"]) == 0
    again = {p: (overlays / p).read_bytes() for p in pngs} | {"table": out.read_bytes()}
    assert again == first


def test_stage_with_no_candidates_writes_an_empty_table_and_an_index_of_no_overlays(
    stage_dir,
) -> None:
    folder, manifest = stage_dir
    formats.write_table(make_votes(manifest, {}), folder / formats.votes_path("val"))
    explain.main(["--split", "val", "--params", "params.yaml"])
    table = pq.read_table(folder / formats.cams_path("val"))
    assert table.num_rows == 0 and table.schema.remove_metadata() == formats.CAMS_SCHEMA
    overlays = folder / "data/cams/val-overlays"  # never empty: DVC warns of empty outputs
    assert [p.name for p in overlays.iterdir()] == ["index.json"]
    assert json.loads((overlays / "index.json").read_text())["files"] == []


def test_stage_refuses_votes_of_another_ensemble(stage_dir) -> None:
    folder, manifest = stage_dir
    votes = make_votes(manifest, {0: (MODELS[:2], None)})
    votes = votes.set_column(9, "n_models", pa.array([5] * len(manifest), pa.int32()))
    formats.write_table(votes, folder / formats.votes_path("val"))
    with pytest.raises(ValueError, match=r"cast by \[5\] models.*re-run"):
        explain.main(["--split", "val", "--params", "params.yaml"])


def test_stage_prints_its_plan_and_refuses_more_pairs_than_max_pairs(
    stage_dir, caplog: pytest.LogCaptureFixture
) -> None:
    import yaml

    from stages.contracts.errors import ConfigError

    folder, manifest = stage_dir
    votes = make_votes(manifest, {0: (MODELS[:2], None), 2: ([MODELS[0]], None)})
    formats.write_table(votes, folder / formats.votes_path("val"))
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["explain"]["max_pairs"] = 2
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    caplog.set_level("INFO", logger="stages.explain")
    with pytest.raises(
        ConfigError,
        match=r"explain val would compute CAMs for 3 \(image, model\) pairs \(about 3 s on CPU, "
        r"0 s on a GPU\), more than params.yaml `explain.max_pairs` = 2; raise "
        r"explain.max_pairs \(null: no limit\), run on GPUs \(explain.device: cuda, "
        r"explain.processes: one per GPU\), or explain fewer candidates \(a higher decide.val.h3\)",
    ):
        explain.main(["--split", "val", "--params", "params.yaml"])
    assert (
        f"explain val: 2 candidates, 3 (image, model) pairs ({MODELS[0]} 2, {MODELS[1]} 1); "
        "estimated 3 s on CPU, 0 s on a GPU (runs on cpu, 1 process)"
    ) in caplog.text
    assert not (folder / formats.cams_path("val")).exists()  # refused before any model loaded
