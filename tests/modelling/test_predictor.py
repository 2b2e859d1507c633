"""stages.modelling.specs: moved from test_predict.py."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from stages.modelling import predict_config, predictor
from stages.modelling.specs import model_specs


def test_manifest_without_required_columns_is_rejected(params, small_manifest, demo_root):
    spec = model_specs(params, ["mobilenetv1_025"])[0]
    with pytest.raises(ValueError, match=r"manifest lacks columns \['skip_reason'\]"):
        predictor.predict_model(
            small_manifest.drop(columns="skip_reason"),
            demo_root,
            spec,
            config=predict_config.PredictOptions(workers=0),
        )


def _published_accuracy(readme: Path, params: dict) -> dict[str, tuple[float, float]]:
    """The README table's top-1/top-5 per params model name (rows `| <folder> | ... | a / b |`)."""
    folders = {
        Path(entry["spec"].removeprefix("local-dir:")).name: name
        for name, entry in params["models"].items()
    }
    table = {}
    for line in readme.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"([\d.]+) / ([\d.]+)", cells[3]) if len(cells) > 3 else None
        if match and cells[0] in folders:
            table[folders[cells[0]]] = (float(match.group(1)), float(match.group(2)))
    return table


@pytest.mark.slow
def test_demo_models_reproduce_published_accuracy_on_1300_images(params, shared_demo, tmp_path):
    from stages.sources.layouts import Source
    from stages.sources.manifest import build_manifest

    published = _published_accuracy(shared_demo.parent / "README.md", params)
    assert sorted(published) == sorted(params["predict"]["models"])
    manifest, _ = build_manifest(Source(shared_demo, "kaggle", "val"))
    assert len(manifest) == 1300
    config = dataclasses.replace(
        predict_config.PredictConfig.from_params(params, "val", views=["full"]),
        root=str(shared_demo),
    )
    outs = {f"{s.name}.full": tmp_path / f"{s.name}.full.npy" for s in config.specs}
    found = predictor.predict_split(config, manifest, outs)
    sidecars = {name.removesuffix(".full"): sidecar for name, sidecar in found.items()}
    for name, (top1, top5) in published.items():
        print(
            f"{name}: top-1 {sidecars[name]['top1']:.2f} (published {top1}), "
            f"top-5 {sidecars[name]['top5']:.2f} (published {top5})"
        )
    for name, (top1, top5) in published.items():
        assert sidecars[name]["top1"] == pytest.approx(top1, abs=0.5), name
        assert sidecars[name]["top5"] == pytest.approx(top5, abs=0.5), name
