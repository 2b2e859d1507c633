"""publish stage: a Hub dataset folder that `datasets.load_dataset` reads, in both modes, built
atomically from the cleaned splits and ledgers (inputs: tests/hub_inputs.py)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, cmdline, descendants, run_in
from datasets import load_dataset
from hub_inputs import (
    METRICS,
    ROWS,
    SECONDARY,
    TOKEN,
    RecordingHub,
    build,
    project_dir,
)

from stages.contracts.errors import InputError, UserError
from stages.hub.repo import PushError
from stages.publish import main


def child_env() -> dict[str, str]:
    """A subprocess that imports this checkout's `stages`."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def test_rebuild_replaces_the_folder_and_a_failed_build_keeps_the_old_one(inputs, tmp_path) -> None:
    out = tmp_path / "hub"
    build(inputs, out)
    (out / "stale.txt").write_text("from an older build")
    build(inputs, out, mode="images")
    assert (
        not (out / "stale.txt").exists()
        and "image" in pq.read_schema(next((out / "data" / "default").iterdir())).names
    )
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    inputs.ledger.unlink()
    with pytest.raises(
        FileNotFoundError, match="decision ledger .* does not exist; run `imagenet-clean decide"
    ):
        build(inputs, out)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".hub")) == []


def test_main_builds_data_hub_and_dry_runs(
    inputs, tmp_path, params, monkeypatch, cache, caplog
) -> None:
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.chdir(project_dir(tmp_path, inputs, params, push=True, dry_run=True))
    caplog.set_level(logging.INFO, logger="stages")
    assert main([]) == 0
    assert hub.calls == [] and "tagged iteration-1; nothing uploaded" in caplog.text
    assert load_dataset("data/hub", "ledger", split="val", cache_dir=cache).num_rows == ROWS


def test_refused_push_keeps_the_built_folder(inputs, tmp_path, params, monkeypatch, cache) -> None:
    """Building and pushing are separate steps: offline, the push is refused (a one-line user
    error, exit 2 from the CLI) but data/hub is built and stays."""
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(project_dir(tmp_path, inputs, params))
    with pytest.raises(
        PushError,
        match="cannot push to the Hub: offline mode is on .* data/hub is "
        "built and kept; push it with `imagenet-clean publish --push`",
    ) as error:
        main(["--push"])
    assert isinstance(error.value, UserError) and TOKEN not in str(error.value)
    assert hub.calls == [] and load_dataset("data/hub", split="val", cache_dir=cache).num_rows == 16
    assert json.loads(Path("metrics/val.json").read_text()) == METRICS


def test_empty_cleaned_split_is_a_clear_error_and_data_hub_stays(inputs, tmp_path) -> None:
    out = tmp_path / "hub"
    build(inputs, out)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    ledger = pq.read_table(inputs.ledger)  # every image removed or skipped
    ledger = ledger.set_column(
        ledger.schema.get_field_index("action"),
        "action",
        pa.array(["remove"] * (ROWS - 1) + ["skip"]),
    )
    pq.write_table(ledger, inputs.ledger)
    placeholders_only = pq.read_table(inputs.clean).filter(pc.field("placeholder"))
    pq.write_table(placeholders_only, inputs.clean)
    with pytest.raises(
        InputError,
        match="the cleaned split `val` has no rows to publish .*0 of 20 "
        "images kept or fixed.*include_placeholders",
    ):
        build(inputs, out)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".hub")) == []
    build(inputs, out, include_placeholders=True)  # the placeholders alone can be published


KILL_DURING_BUILD = """
import os, signal, sys
from pathlib import Path
import stages.hub.publishing as publishing
from stages.hub.publishing import SplitInputs, build_hub_folder
real = publishing.write_shard
def write_then_die(table, features, target):
    size = real(table, features, target)
    os.kill(os.getpid(), signal.SIGKILL)  # a kill -9 in the middle of the build
publishing.write_shard = write_then_die
paths = [Path(p) for p in sys.argv[1:6]]
build_hub_folder([SplitInputs("val", *paths[:4], paths[4])], mode="images", out=sys.argv[6])
"""


def test_leftovers_of_a_killed_build_are_removed_by_the_next_build(inputs, tmp_path) -> None:
    out = tmp_path / "data" / "hub"
    out.parent.mkdir()
    args = [
        str(p) for p in (inputs.manifest, inputs.ledger, inputs.clean, inputs.root, inputs.metrics)
    ]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_BUILD, *args[:3], args[3], args[4], str(out)],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = [path for path in out.parent.iterdir() if path.name.startswith(".hub.")]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
    assert any(path.suffix == ".parquet" for path in leftovers[0].rglob("*"))  # image bytes inside
    others = [out.parent / ".hub.old", out.parent / ".hub2.abcd1234.tmp", out.parent / "hub.tmp"]
    for other in others:  # not this output's leftovers: kept
        other.mkdir()
    (out.parent / ".hub.zz_99xyz.old").mkdir()  # a killed swap's previous folder: removed
    build(inputs, out)
    names = sorted(path.name for path in out.parent.iterdir())
    assert names == sorted(["hub"] + [other.name for other in others])


def test_a_build_killed_outside_dvc_leaves_the_previous_folder_as_it_was(inputs, tmp_path) -> None:
    """`imagenet-clean publish` (no DVC): the new folder is built beside the old one and swapped
    in by rename, so a kill -9 mid-build leaves the previous build in place."""
    out = tmp_path / "data" / "hub"
    build(inputs, out)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    args = [
        str(p) for p in (inputs.manifest, inputs.ledger, inputs.clean, inputs.root, inputs.metrics)
    ]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_BUILD, *args, str(out)],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_leftovers_stay_while_another_build_of_the_folder_runs(inputs, tmp_path) -> None:
    out = tmp_path / "hub"
    running = tmp_path / ".hub.abcd1234.tmp"
    running.mkdir()
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what a concurrent build holds
        build(inputs, out)
    finally:
        os.close(fd)
    assert running.is_dir() and (out / "README.md").is_file()


def test_secondary_labels_of_an_older_cleaned_split_come_from_the_ledger(
    inputs, tmp_path, cache
) -> None:
    pq.write_table(pq.read_table(inputs.clean).drop_columns(["secondary_labels"]), inputs.clean)
    clean = load_dataset(str(build(inputs, tmp_path / "hub").path), split="val", cache_dir=cache)
    ids = pq.read_table(inputs.manifest).column("image_id").to_pylist()
    expected = {ids[index]: labels for index, labels in SECONDARY.items()}
    assert clean["secondary_labels"] == [expected.get(i, []) for i in clean["image_id"]]


@pytest.mark.slow
def test_dvc_repro_with_a_refused_push_keeps_data_hub(
    inputs, tmp_path, params, cache, monkeypatch
) -> None:
    """Under `dvc repro` (which deletes a stage's outputs before running it) a refused push fails
    the stage with the one-line error, and the data/hub it built stays on disk."""
    project = project_dir(tmp_path, inputs, params, push=True)
    shutil.copytree(
        ROOT / "stages", project / "stages", ignore=shutil.ignore_patterns("__pycache__")
    )
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["publish"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"publish": stage}}))
    run_in(project, "git", "init", "-q")
    run_in(project, "dvc", "init", "-q")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = run_in(project, "dvc", "repro", "publish", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output and TOKEN not in output
    assert "error: cannot push to the Hub: offline mode is on" in output
    assert "data/hub is built and kept" in output
    assert load_dataset(str(project / "data/hub"), split="val", cache_dir=cache).num_rows == 16


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_a_publish_killed_under_dvc_repro_is_restored_by_dvc_checkout(
    inputs, tmp_path, params
) -> None:
    """What docs/publish.md promises: DVC deletes `data/hub` before it runs the stage, so after a
    kill -9 of `dvc repro publish` the folder is gone; dvc.lock and the DVC cache still hold the
    previous build, and `dvc checkout publish` puts it back byte for byte."""
    project = project_dir(tmp_path, inputs, params)
    shutil.copytree(
        ROOT / "stages", project / "stages", ignore=shutil.ignore_patterns("__pycache__")
    )
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["publish"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"publish": stage}}))
    run_in(project, "git", "init", "-q")
    run_in(project, "dvc", "init", "-q")
    run_in(project, "dvc", "repro", "publish")
    before = _snapshot(project / "data/hub")
    edited = yaml.safe_load((project / "params.yaml").read_text())
    edited["publish"]["max_shard_bytes"] = 400_000_000  # publish must run again
    (project / "params.yaml").write_text(yaml.safe_dump(edited))
    bin_dir = str(Path(sys.executable).parent)
    env = {**child_env(), "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    dvc = subprocess.Popen(
        ["dvc", "repro", "publish"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not any("stages.publish" in cmdline(p) for p in descendants(dvc.pid)):
        assert dvc.poll() is None and time.monotonic() < deadline, "publish never started"
        time.sleep(0.005)
    os.killpg(dvc.pid, signal.SIGKILL)  # dvc and its stage at once
    dvc.wait()
    assert not (project / "data/hub").exists()  # DVC removed it before running the stage
    run_in(project, "dvc", "checkout", "publish")
    assert _snapshot(project / "data/hub") == before
    run_in(project, "dvc", "repro", "publish")  # and the next run builds the new one
    assert (project / "data/hub/README.md").is_file()
