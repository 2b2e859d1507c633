"""Ingest: bad input one case at a time (real files made here), counts that reconcile, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.contracts import formats
from stages.contracts.errors import ConfigError
from stages.ingest import ingest, main
from stages.sources.manifest import IngestConfig


def test_typo_in_an_ingest_key_names_section_key_and_close_match(params: dict) -> None:
    params["ingest"]["on_bad_imag"] = params["ingest"].pop("on_bad_image")
    with pytest.raises(
        ConfigError, match="`ingest` has an unknown key 'on_bad_imag'; did you mean 'on_bad_image'"
    ):
        ingest("val", params)
    params["ingest"]["workers"] = "2"
    with pytest.raises(ConfigError, match="`ingest.workers` must be an int, got '2'"):
        IngestConfig.from_params({"ingest": {"workers": "2"}})


def test_missing_root_key_is_a_config_error_not_a_key_error(params: dict) -> None:
    del params["splits"]["val"]["root"]
    with pytest.raises(ConfigError, match="`splits.val` lacks the key 'root'"):
        ingest("val", params)


def test_cli_prints_one_line_for_a_missing_root(tmp_path: Path, params: dict) -> None:
    params["splits"]["val"]["root"] = str(tmp_path / "nowhere")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.ingest",
            "--split",
            "val",
            "--params",
            str(tmp_path / "params.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        f"error: split root {tmp_path / 'nowhere'} does not exist; set params.yaml "
        "`splits.val.root`" in result.stderr
    )


def test_limit_from_params_makes_a_demo_split(tmp_path: Path, params: dict) -> None:
    params["splits"]["train_demo"] = {**params["splits"]["val"], "limit": 30}
    stats = ingest(
        "train_demo",
        params,
        out=tmp_path / "m.parquet",
        metrics_out=tmp_path / "m.json",
        probe_cache=tmp_path / "probes.parquet",
    )
    manifest = formats.read_table(tmp_path / "m.parquet")
    assert stats == {**stats, "files_found": 500, "limited_out": 470, "rows": 30}
    assert list(manifest["image_id"]) == sorted(manifest["image_id"])[:30]


def test_stage_writes_manifest_and_metrics(tmp_path: Path, params: dict) -> None:
    stats = ingest(
        "val",
        params,
        out=tmp_path / "val.parquet",
        metrics_out=tmp_path / "val.json",
        probe_cache=tmp_path / "probes.parquet",
    )
    manifest = formats.read_table(tmp_path / "val.parquet")
    assert len(manifest) == stats["rows"] == 500
    assert json.loads((tmp_path / "val.json").read_text()) == stats


def test_same_inputs_same_bytes_with_or_without_the_probe_cache(
    tmp_path: Path, params: dict
) -> None:
    cache = tmp_path / "probes.parquet"
    for name in ("cold", "warm"):  # the first run probes every image, the second reuses them
        ingest(
            "val",
            params,
            out=tmp_path / f"{name}.parquet",
            metrics_out=tmp_path / f"{name}.json",
            probe_cache=cache,
        )
    assert cache.is_file()
    assert (tmp_path / "cold.parquet").read_bytes() == (tmp_path / "warm.parquet").read_bytes()
    assert (tmp_path / "cold.json").read_bytes() == (tmp_path / "warm.json").read_bytes()


def bad_split(root: Path, demo_root: Path, params: dict) -> dict:
    """An imagefolder split `bad` under `root`: one good demo image and the bad files of the
    audit (a text file, an empty file, a truncated JPEG, a 1x1 image), with params for it."""
    from PIL import Image

    folder = root / "n01440764"
    folder.mkdir(parents=True)
    good = next((demo_root / "ILSVRC/Data/CLS-LOC/val").glob("*.JPEG"))
    (folder / "good.JPEG").write_bytes(good.read_bytes())
    (folder / "notes.JPEG").write_text("not an image\n")
    (folder / "empty.JPEG").write_bytes(b"")
    (folder / "truncated.JPEG").write_bytes(good.read_bytes()[:2000])
    Image.new("RGB", (1, 1), (128, 64, 32)).save(folder / "tiny.JPEG")
    params["splits"]["bad"] = {**params["splits"]["val"], "root": str(root)}
    params["splits"]["bad"].update(layout="imagefolder", subset=None)
    return params


def test_a_split_with_bad_files_gives_the_same_manifest_bytes_every_time(
    tmp_path: Path, demo_root: Path, params: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = bad_split(tmp_path / "raw", demo_root, params)
    monkeypatch.chdir(tmp_path)  # ingest makes data/predictions/bad/ here, not in the project
    for name in ("a", "b"):
        ingest("bad", params, out=tmp_path / f"{name}.parquet", metrics_out=tmp_path / "m.json")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    reasons = formats.read_table(tmp_path / "a.parquet")["skip_reason"].dropna().tolist()
    assert len(reasons) == 4 and not [r for r in reasons if "0x" in r or " object at " in r]


def test_cli_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="split 'nope' is not configured"):
        main(["--split", "nope"])
