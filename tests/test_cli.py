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
    assert "usage: imagenet-clean [--debug] {ingest, predict" in capsys.readouterr().err


def test_subcommand_runs_the_stage(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ingest", "--help"])
    assert exit_info.value.code == 0
    assert "--split" in capsys.readouterr().out


def test_a_user_error_exits_2_with_one_message_and_no_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["decide", "--split", "nosuchsplit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nosuchsplit" in err and "Traceback" not in err


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.contracts.errors import UserError

    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(UserError):
        cli.guarded(lambda: (_ for _ in ()).throw(UserError("bad")))


def test_programming_errors_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        cli.guarded(lambda: 1 // 0)


def test_serve_review_is_not_the_review_stage_and_the_old_name_still_works(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.COMMANDS["serve-review"] == "stages.serve_review"
    assert cli.COMMANDS["review-report"] == "stages.review"  # the DVC stage review@<split>
    assert "review" not in cli.COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["review", "--help"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "usage: imagenet-clean serve-review" in captured.out
    assert "note: `imagenet-clean review` is deprecated" in captured.err


def test_the_commands_are_exactly_the_doors_in_stages() -> None:
    from pathlib import Path

    doors = {p.stem for p in Path(cli.__file__).parent.glob("*.py")} - {"__init__", "cli"}
    assert {module.split(".")[1] for module in cli.COMMANDS.values()} == doors


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_describes_each_command_in_whole_sentences(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`imagenet-clean <command> --help` never stops mid-sentence at a docstring's line break."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    description = " ".join(text.split("\n\n")[1].split())
    paragraph = cli.describe(importlib.import_module(cli.COMMANDS[command]).__doc__)
    cut = paragraph.startswith(description) and paragraph != description
    assert not cut, f"{command} --help stops mid-sentence: {description!r}"


def test_serve_review_help_lists_the_http_api(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve-review", "--help"])
    text = capsys.readouterr().out
    for endpoint in ("GET  /api/overrides", "POST /api/overrides", "POST /api/undo"):
        assert endpoint in text
    assert '{"rows": [{"image_id": ...' in text and "which the next `dvc repro` applies." in text
