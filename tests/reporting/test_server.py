"""`imagenet-clean review`: the local server writes reviewers' corrections to the overrides file.

A real ThreadingHTTPServer on a free 127.0.0.1 port serves a report built from a small synthetic
split (tests/test_review.py `write_split`); requests go over real HTTP. The rows it writes are read
back by decide's own overrides reader and applied to the ledger.
"""

from __future__ import annotations

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_review import write_split

from stages.contracts import formats
from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.method.overrides import apply_overrides, load_overrides
from stages.reporting.server import (
    Decision,
    RequestError,
    ServeReviewConfig,
    make_server,
    merge_rows,
)
from stages.review import run_review

HEADER = "image_id,action,new_label,note\n"


@pytest.fixture
def served(built, tmp_path: Path):
    """A running server on a free port whose overrides file is fresh for each test."""
    root, params = built
    params = {
        **params,
        "splits": {
            "val": {**params["splits"]["val"], "overrides": str(tmp_path / "overrides/val.csv")}
        },
    }
    server = make_server(ServeReviewConfig.from_params(params, "val"), port=0, root=root)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    ledger = pd.read_parquet(root / formats.ledger_path("val"))
    yield server, ledger, tmp_path / "overrides/val.csv"
    server.shutdown()
    server.server_close()


def request(
    server,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    sent = {"Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, body=data, headers=sent)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(payload) if kind.startswith("application/json") else payload


def first(ledger: pd.DataFrame, mask) -> str:
    return str(ledger.loc[mask, "image_id"].iloc[0])


def test_serves_the_report_and_lists_no_overrides_yet(served) -> None:
    server, _, path = served
    status, page = request(server, "GET", "/index.html")
    assert status == 200 and b"app.js" in page
    status, listing = request(server, "GET", "/api/overrides")
    assert status == 200 and listing["rows"] == [] and listing["split"] == "val"
    assert not path.exists()  # nothing is written before the first correction


def test_relabel_writes_a_row_that_decide_applies(served) -> None:
    server, ledger, path = served
    image_id = first(ledger, ledger["action"] == "remove")
    status, listing = request(
        server,
        "POST",
        "/api/overrides",
        {
            "rows": [
                {
                    "image_id": image_id,
                    "action": "fix",
                    "new_label": "n01440764",
                    "note": "a tench,\n really",
                }
            ]
        },
    )
    assert status == 200
    assert path.read_text() == HEADER + f'{image_id},fix,0,"a tench, really"\n'
    assert listing["rows"] == [
        {"image_id": image_id, "action": "fix", "new_label": "0", "note": "a tench, really"}
    ]
    as_decide_builds_it = ledger.astype({"label": "Int32", "new_label": "Int32"})
    applied = apply_overrides(as_decide_builds_it, load_overrides(path))
    row = applied.loc[applied["image_id"] == image_id].iloc[0]
    assert (row["action"], row["new_label"], row["override"]) == ("fix", 0, True)
    assert row["reason"] == "override: a tench, really"


def listed(server) -> list[tuple[str, str]]:
    return [
        (r["action"], r["new_label"]) for r in request(server, "GET", "/api/overrides")[1]["rows"]
    ]


def post(server, image_id: str, **row: Any) -> tuple[int, Any]:
    return request(server, "POST", "/api/overrides", {"rows": [{"image_id": image_id, **row}]})


def test_a_new_decision_replaces_the_last_and_secondary_labels_add_up(served) -> None:
    server, ledger, path = served
    keep = (ledger["action"] == "keep") & (ledger["secondary_labels"].map(len) > 0)
    image_id = first(ledger, keep)
    row = ledger.loc[ledger["image_id"] == image_id].iloc[0]
    label, extra = str(row["label"]), str(row["secondary_labels"][0])
    assert post(server, image_id, action="fix", new_label=5)[0] == 200
    assert post(server, image_id, action="secondary", new_label="7")[0] == 200
    assert post(server, image_id, action="secondary", new_label=9)[0] == 200
    assert listed(server) == [
        ("fix", "5"),
        ("secondary", extra),
        ("secondary", "7"),
        ("secondary", "9"),
    ]
    assert post(server, image_id, action="fix", new_label=7)[0] == 200  # 7 is now the label
    assert listed(server) == [("fix", "7"), ("secondary", extra), ("secondary", "9")]
    status, answer = post(server, image_id, action="secondary", new_label="7")
    assert status == 400 and "is the label of" in answer["error"]
    assert (
        post(server, image_id, action="remove")[0] == 200
    )  # a removed image has no secondary labels
    assert listed(server) == [("remove", "")]
    status, answer = post(server, image_id, action="secondary", new_label="3")
    assert (
        status == 400 and "secondary labels only apply to kept or fixed images" in answer["error"]
    )
    assert post(server, image_id, action="keep")[0] == 200
    assert post(server, image_id, action="secondary")[0] == 200
    assert post(server, image_id, action="secondary", new_label=label)[0] == 400
    assert post(server, image_id, action="secondary", new_label=3)[0] == 200
    assert listed(server) == [
        ("keep", ""),
        ("secondary", "3"),
    ]  # "none", then one: exactly that one
    status, listing = request(server, "POST", "/api/undo", {"image_id": image_id})
    assert status == 200 and listing["rows"] == [] and path.read_text() == HEADER


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"rows": [{"image_id": "nope", "action": "remove"}]}, 400, "unknown image_id 'nope'"),
        (
            {"rows": [{"image_id": "{id}", "action": "fix", "new_label": 1000}]},
            400,
            "not a class index",
        ),
        (
            {"rows": [{"image_id": "{id}", "action": "fix", "new_label": "n00000000"}]},
            400,
            "not a class",
        ),
        ({"rows": [{"image_id": "{id}", "action": "fix", "new_label": True}]}, 400, "not a class"),
        ({"rows": [{"image_id": "{id}", "action": "fix"}]}, 400, "fix needs a new_label"),
        (
            {"rows": [{"image_id": "{id}", "action": "delete"}]},
            400,
            "action 'delete' is not one of",
        ),
        (
            {"rows": [{"image_id": "{id}", "action": "keep", "new_label": 3}]},
            400,
            "takes no new_label",
        ),
        ({"rows": [{"image_id": "{id}", "action": "keep", "note": "x" * 501}]}, 400, "at most 500"),
        ({"rows": [{"image_id": "{id}", "action": "keep", "colour": 1}]}, 400, "each row must be"),
        (
            {"rows": [{"image_id": "{id}", "action": "keep"}, {"image_id": "x", "action": "keep"}]},
            400,
            "unknown image_id 'x'",
        ),
        ({"rows": []}, 400, "1 to 1000 rows"),
        ([1, 2], 400, "body must be"),
        (b"{not json", 400, "not valid JSON"),
    ],
)
def test_bad_requests_get_a_clear_error_and_change_nothing(served, body, status, message) -> None:
    server, ledger, path = served
    image_id = first(ledger, ledger["action"] == "keep")
    request(
        server, "POST", "/api/overrides", {"rows": [{"image_id": image_id, "action": "remove"}]}
    )
    before = path.read_bytes()
    if isinstance(body, bytes):
        got = request(server, "POST", "/api/overrides", raw=body)
    else:
        got = request(
            server, "POST", "/api/overrides", json.loads(json.dumps(body).replace("{id}", image_id))
        )
    assert got[0] == status and message in got[1]["error"]
    assert path.read_bytes() == before


def test_a_hand_edited_mistake_in_the_file_is_reported_and_kept(served) -> None:
    server, ledger, path = served
    keeps = list(ledger.loc[ledger["action"] == "keep", "image_id"][:2])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{keeps[0]},fix,n01440764,wnids work\n{keeps[0]},remove,,twice\n")
    status, answer = post(server, keeps[1], action="remove")
    assert status == 400 and "decide would refuse the result" in answer["error"]
    assert "two keep/fix/remove rows" in answer["error"]
    assert path.read_text().endswith("twice\n")


@pytest.mark.parametrize(
    "text, message",
    [
        (HEADER + "a,keep,,a note, with a comma\n", "line 2: 5 fields, expected 4"),
        ("image_id;action;new_label;note\n", "header must be image_id,action,new_label,note"),
    ],
)
def test_a_file_decide_cannot_read_gets_a_json_error_and_the_server_keeps_serving(
    served, text: str, message: str
) -> None:
    server, ledger, path = served
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    status, answer = request(server, "GET", "/api/overrides")
    assert status == 500 and message in answer["error"] and str(path) in answer["error"]
    status, answer = post(server, first(ledger, ledger["action"] == "keep"), action="remove")
    assert status == 500 and message in answer["error"]
    assert path.read_text() == text
    path.write_text(HEADER)
    assert request(server, "GET", "/api/overrides")[0] == 200


def test_keep_of_an_image_removed_earlier_is_refused(served) -> None:
    server, ledger, path = served
    image_id = first(ledger, ledger["label"].isna())
    status, answer = request(
        server, "POST", "/api/overrides", {"rows": [{"image_id": image_id, "action": "keep"}]}
    )
    assert status == 400 and "has no label to keep" in answer["error"] and not path.exists()


def test_other_origins_hosts_and_content_types_are_refused(served) -> None:
    server, ledger, path = served
    body = {"rows": [{"image_id": first(ledger, ledger["action"] == "fix"), "action": "remove"}]}
    assert (
        request(server, "POST", "/api/overrides", body, headers={"Origin": "http://evil.example"})[
            0
        ]
        == 403
    )
    assert request(server, "GET", "/api/overrides", headers={"Host": "evil.example:80"})[0] == 403
    status, answer = request(
        server, "POST", "/api/overrides", body, headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and "application/json" in answer["error"]
    assert request(server, "POST", "/api/nothing", body)[0] == 404
    assert not path.exists()


def test_concurrent_corrections_all_land(served) -> None:
    server, ledger, path = served
    ids = list(ledger.loc[ledger["action"] == "keep", "image_id"][:16])
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(
                lambda i: request(
                    server,
                    "POST",
                    "/api/overrides",
                    {"rows": [{"image_id": i, "action": "remove", "note": "blurry"}]},
                )[0],
                ids,
            )
        )
    assert statuses == [200] * len(ids)
    assert sorted(load_overrides(path)["image_id"]) == sorted(ids)


def test_a_burst_of_50_parallel_posts_is_all_acknowledged_written_and_never_corrupt(
    served,
) -> None:
    server, ledger, path = served
    ids = list(ledger.loc[ledger["action"] == "keep", "image_id"][:50])
    assert len(ids) == 50
    start, stop, reads = threading.Barrier(len(ids)), threading.Event(), []

    def correct(image_id: str) -> int:
        start.wait()
        body = {"rows": [{"image_id": image_id, "action": "remove", "note": "blurry, dark"}]}
        return request(server, "POST", "/api/overrides", body)[0]

    def read_while_writing() -> None:
        while not stop.is_set():
            if path.exists():
                reads.append(len(load_overrides(path)))  # a torn file would raise here

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    try:
        with ThreadPoolExecutor(len(ids)) as pool:
            statuses = list(pool.map(correct, ids))
    finally:
        stop.set()
        reader.join()
    assert statuses == [200] * len(ids)
    written = load_overrides(path)
    assert sorted(written["image_id"]) == sorted(ids) and set(written["note"]) == {"blurry, dark"}
    assert reads == sorted(reads)  # every read saw a whole file: rows are only ever added


def test_merge_rows_keeps_one_decision_per_image() -> None:
    rows = [
        {"image_id": "a", "action": "fix", "new_label": "3", "note": ""},
        {"image_id": "b", "action": "keep", "new_label": "", "note": ""},
    ]
    merged = merge_rows(
        rows,
        [{"image_id": "a", "action": "keep", "new_label": "", "note": "n"}],
        decisions={"a": Decision("fix", 2, 3, (4,))},
    )
    assert merged == [{"image_id": "a", "action": "keep", "new_label": "", "note": "n"}, rows[1]]
    assert rows[0]["action"] == "fix"  # the input is not changed


def test_server_needs_a_built_report_and_a_sane_overrides_file(tmp_path: Path, monkeypatch) -> None:
    params = write_split(tmp_path, 30)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingInputError, match=r"dvc repro review@val"):
        make_server(ServeReviewConfig.from_params(params, "val"), port=0)
    run_review("val", params)
    (tmp_path / "data/overrides").mkdir(parents=True)
    (tmp_path / "data/overrides/val.csv").write_text("id,what\n")
    with pytest.raises(InputError, match="header must be image_id,action,new_label,note"):
        make_server(ServeReviewConfig.from_params(params, "val"), port=0)


def test_overrides_path_is_per_split() -> None:
    entry = {"root": "x", "layout": "kaggle"}
    config = ServeReviewConfig.from_params(
        {"splits": {"val": {**entry, "overrides": "o/val.csv"}}}, "val"
    )
    assert config.overrides == Path("o/val.csv")
    with pytest.raises(ConfigError, match=r"splits.v2.overrides"):
        ServeReviewConfig.from_params({"splits": {"v2": entry}}, "v2")


def test_a_rewritten_ledger_is_read_again(tmp_path: Path, monkeypatch) -> None:
    params = write_split(tmp_path, 30)
    monkeypatch.chdir(tmp_path)
    run_review("val", params)
    server = make_server(ServeReviewConfig.from_params(params, "val"), port=0)
    ledger = pd.read_parquet(formats.ledger_path("val"))
    image_id = first(ledger, ledger["action"] == "keep")
    ledger.loc[ledger["image_id"] == image_id, "action"] = "skip"  # as if `dvc repro` ran meanwhile
    formats.write_table(ledger, formats.ledger_path("val"))
    with pytest.raises(RequestError, match="unreadable"):
        server.state.apply({"rows": [{"image_id": image_id, "action": "remove"}]})
    server.server_close()


def test_any_image_beyond_the_round_is_looked_up_and_its_thumbnail_drawn_on_demand(
    served, built
) -> None:
    """The report holds one review round; the server reads any other image's record and draws
    its thumbnail when asked (nothing of it is in the report folder)."""
    import io

    import numpy as np
    from PIL import Image

    from stages.reporting.report import read_data

    server, ledger, _ = served
    root, _params = built
    shown = set(read_data(root / "data/review/val/data/index.js")["pos"])
    pos = next(p for p in range(len(ledger)) if p not in shown and ledger.at[p, "action"] == "keep")
    image_id = ledger.at[pos, "image_id"]
    status, record = request(server, "GET", f"/api/record?image_id={image_id}")
    assert status == 200 and (record["id"], record["pos"]) == (image_id, pos)
    assert record["thumb"] == f"api/thumb/{pos}.jpg" and record["why"] == []
    probs = np.load(root / formats.predictions_path("val", "model_b"), mmap_mode="r")[pos]
    expected = np.lexsort((np.arange(1000), -probs.astype(np.float32)))[:5]  # ties: smaller class
    assert [c for c, _ in record["top5"][1]] == expected.tolist()
    assert not (root / "data/review/val/thumbs" / f"{pos // 1000:04d}" / f"{pos}.jpg").exists()
    status, jpeg = request(server, "GET", "/" + record["thumb"])
    assert status == 200 and max(Image.open(io.BytesIO(jpeg)).size) == 96  # review.thumb_size
    assert request(server, "GET", "/api/record?image_id=nope") == (
        404,
        {"error": "unknown image_id 'nope': not in this split's ledger"},
    )
    assert request(server, "GET", f"/api/thumb/{len(ledger)}.jpg")[0] == 404
    assert request(server, "GET", "/api/thumb/x.png")[0] == 404


def test_the_documented_curl_commands_work_as_written(served) -> None:
    """docs/review.md's HTTP API examples, run with curl against a served split (its port and one
    of its kept images in place of the demo's 8765 and ILSVRC2012_val_00003797)."""
    import re
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    server, ledger, path = served
    docs = (Path(__file__).resolve().parents[2] / "docs/review.md").read_text()
    block = re.search(r"From a shell.*?```bash\n(.*?)```", docs, re.S)
    assert block, "docs/review.md lost its curl examples"
    commands = block.group(1).replace("\\\n", " ").strip().splitlines()
    assert len(commands) == 5
    mask = (ledger["action"] == "keep") & ~ledger["label"].isin([696, 738])
    image_id = first(ledger, mask)
    port = str(server.server_address[1])
    answers = []
    for command in commands:
        command = command.replace("8765", port).replace("ILSVRC2012_val_00003797", image_id)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    assert answers[0] == {"split": "val", "path": str(path), "rows": []}
    assert answers[1]["rows"] == [
        {"image_id": image_id, "action": "fix", "new_label": "738", "note": "a pot"}
    ]
    assert {"image_id": image_id, "action": "secondary", "new_label": "696", "note": ""} in (
        answers[2]["rows"]
    )
    assert answers[3]["id"] == image_id
    assert answers[4]["rows"] == [] and path.read_text() == HEADER
