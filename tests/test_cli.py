"""The `imagenet-clean` console script dispatches one subcommand per stage."""

from __future__ import annotations

import importlib

import pytest

from stages import cli


def test_every_subcommand_names_an_importable_stage_entry_point() -> None:
    for command, module in cli.COMMANDS.items():
        entry = "main_ensemble" if command == "predict-ensemble" else "main"
        assert callable(getattr(importlib.import_module(module), entry)), command


def test_unknown_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "usage: imagenet-clean {ingest, predict" in capsys.readouterr().err


def test_subcommand_runs_the_stage(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ingest", "--help"])
    assert exit_info.value.code == 0
    assert "--split" in capsys.readouterr().out
