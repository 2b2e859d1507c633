"""One way to fail: every user mistake in params is exit status 2 and one line naming the key and
the fix, with no traceback (docs/errors.md lists the messages)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from stages import cli

CASES: list[tuple[str, list[str], Callable[[dict], None], str]] = [
    (
        "ingest",
        ["--split", "val"],
        lambda p: p["ingest"].update(on_bad_imag="skip"),
        r"`ingest` has an unknown key 'on_bad_imag'; did you mean 'on_bad_image'\?",
    ),
    (
        "ingest",
        ["--split", "val"],
        lambda p: p["splits"]["val"].pop("root"),
        r"`splits.val` lacks the key 'root'; add it \(a string\)",
    ),
    (
        "evaluate",
        ["--split", "val"],
        lambda p: p["evaluate"].update(top_class=5),
        r"`evaluate` has an unknown key 'top_class'; did you mean 'top_classes'\?",
    ),
    (
        "predict",
        ["--split", "val", "--model", "mobilenetv1_025"],
        lambda p: p["predict"].update(dtype="bfloat16"),
        r"`predict.dtype` must be one of 'float32', 'float16', got 'bfloat16'",
    ),
    (
        "predict",
        ["--split", "val", "--model", "mobilenetv1_025"],
        lambda p: p["predict"].update(weights_dir="data/demo/references"),
        r"`models.mobilenetv1_025` loads its weights from data/demo/models/mobilenetv1_025"
        r"\.tf_in1k, outside `predict.weights_dir` \(data/demo/references\)",
    ),
    (
        "explain",
        ["--split", "val"],
        lambda p: p["explain"].update(heat=1.5),
        r"`explain.heat` must be a number in \(0.0, 1.0\], got 1.5",
    ),
    (
        "decide",
        ["--split", "val"],
        lambda p: p["decide"]["val"].update(h3=9),
        r"`decide.val.h3` = 9 is above the number of models \|M\| = 5",
    ),
    (
        "decide",
        ["--split", "val"],
        lambda p: p["decide"]["val"].update(strategy="best"),
        r"`decide.val.strategy` must be one of 'expected_benefit', 'consensus', 'paper', "
        r"got 'best'",
    ),
    (
        "publish",
        [],
        lambda p: p["publish"].update(privat=True),
        r"`publish` has an unknown key 'privat'; did you mean 'private'\?",
    ),
    (
        "vote",
        ["--split", "nosuch"],
        lambda p: None,
        r"split 'nosuch' is not configured; params.yaml splits: \['train_demo', 'val'\]",
    ),
]


@pytest.mark.parametrize(
    "stage, args, edit, message", CASES, ids=[f"{c[0]}-{c[3][:24]}" for c in CASES]
)
def test_a_params_mistake_is_one_line_and_exit_status_2(
    stage: str,
    args: list[str],
    edit: Callable[[dict], None],
    message: str,
    params: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    broken = copy.deepcopy(params)
    edit(broken)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(broken))
    assert cli.main([stage, *args, "--params", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    assert re.search(message, lines[0]), lines[0]
