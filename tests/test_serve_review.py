"""stages.serve_review: `imagenet-clean serve-review` serves a built report until stopped."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml


def test_command_line_serves_until_stopped_and_explains_a_missing_report(built, tmp_path) -> None:
    root, params = built
    params = {
        **params,
        "splits": {"val": {**params["splits"]["val"], "overrides": str(tmp_path / "val.csv")}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [
        sys.executable,
        "-m",
        "stages.serve_review",
        "--split",
        "val",
        "--params",
        str(tmp_path / "params.yaml"),
        "--port",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while " on http://" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
        port = int(line.split(" on http://127.0.0.1:")[1].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/api/overrides")
        assert json.loads(connection.getresponse().read())["rows"] == []
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stderr.close()
    other = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert other.returncode == 2
    assert (
        "error: no review report in data/review/val; build it with `dvc repro review@val`"
        in other.stderr
    )
