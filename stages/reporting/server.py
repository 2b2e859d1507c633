"""The review server (`imagenet-clean serve-review --split val`): a split's review report on
127.0.0.1, and the reviewer's corrections written to the split's overrides file, which the next
`dvc repro` applies (decide).

The page is the static report of the `review@<split>` stage (`data/review/<split>/`); served here it
gains buttons that write rows (`image_id,action,new_label,note`) to `splits.<split>.overrides`. The
JSON API behind them (standard library `http.server`, one lock around every write):

    GET  /api/overrides  -> {"split", "path", "rows": [{image_id, action, new_label, note}, ...]}
    POST /api/overrides  {"rows": [{image_id, action, new_label, note}, ...]} -> the same, updated
    POST /api/undo       {"image_id": ...}  (drops that image's rows) -> the same, updated
    GET  /api/record?image_id=...  -> any image's evidence record, read now (beyond the round)
    GET  /api/thumb/<row>.jpg      -> any ledger row's thumbnail, drawn now

A row's effect on the file: keep / fix / remove replace the image's earlier keep / fix / remove row
(at most one per image); `secondary` with a class adds it to the image's secondary labels (seeded
with the ledger's, so "add" means add); `secondary` with an empty class means "no secondary
labels" and replaces the image's secondary rows. A request is checked whole before anything is
written: an unknown image, a bad class or action or a malformed body gets a 4xx JSON error and
leaves the file as it was. The file is rewritten atomically. An overrides file or ledger the server
cannot read (a hand edit decide would refuse) gets a 500 JSON error naming the file, and the server
keeps serving; so does any other error. Requests run in threads, the writes one at a time, and
the listen backlog holds a burst of clicks or scripted POSTs.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from stages.contracts import formats
from stages.contracts.actions import Action
from stages.contracts.errors import ConfigError, InputError, MissingInputError, UserError
from stages.contracts.splits import Params, SplitEntry
from stages.method.overrides import OVERRIDE_ACTIONS as ACTIONS
from stages.method.overrides import OVERRIDE_COLUMNS as COLUMNS
from stages.method.overrides import OverrideAction, apply_overrides, read_rows, write_rows
from stages.reporting.report import (
    ReviewConfig,
    TableSource,
    record_on_demand,
    report_dir,
)
from stages.sources.thumbnails import thumbnail_jpeg

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20
BACKLOG = 1024
"""Connections the listening socket queues while every handler thread is busy (the standard
library's 5 reset most of a burst of 50 clicks or scripted POSTs)."""
MAX_NOTE = 500
SERVER_LEDGER_COLUMNS = (
    "image_id",
    "action",
    "label",
    "new_label",
    "secondary_labels",
    "merged",
    "override",
)


class RequestError(ValueError):
    """A request the server refuses (status, message); nothing has been written."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServeReviewConfig:
    """What the review server reads: the split and its overrides file (`splits.<split>.overrides`,
    the file decide applies)."""

    split: str
    overrides: Path
    image_root: Path | None = None
    models: tuple[str, ...] = ()
    thumb_size: int = 224

    @classmethod
    def from_params(cls, params: Params, split: str) -> ServeReviewConfig:
        """Raises ConfigError for an unknown split or one without an overrides path."""
        entry = SplitEntry.from_params(params, split)
        path = entry.overrides
        if not path:
            raise ConfigError(
                f"params.yaml has no `splits.{split}.overrides` path; add one, e.g. "
                f"data/overrides/{split}.csv"
            )
        try:
            options = ReviewConfig.from_params(params, split)
        except ConfigError as error:  # corrections still work; only the image lookup is off
            logger.warning("serve-review %s: looking up images is off: %s", split, error)
            return cls(split, Path(path))
        return cls(split, Path(path), Path(entry.root), options.models, options.options.thumb_size)


class Decision(NamedTuple):
    """An image's decision in the ledger: action, label before this iteration, label after it
    (None when removed or unknown) and secondary labels."""

    action: str
    label: int | None
    new_label: int | None
    secondary: tuple[int, ...]


@dataclass
class Ledger:
    """What the server needs of the ledger: the images' positions and decisions."""

    ids: pd.Index
    frame: pd.DataFrame
    stamp: tuple[int, int] = (0, 0)

    @classmethod
    def read(cls, path: Path) -> Ledger:
        """Read a decision ledger file, checking its columns."""
        if not path.is_file():
            raise MissingInputError(f"ledger {path} does not exist; run `dvc repro` first")
        stat = path.stat()
        table = pq.read_table(path)
        missing = [c for c in SERVER_LEDGER_COLUMNS if c not in table.column_names]
        if missing:
            raise InputError(f"ledger {path} lacks columns {missing}; re-run `dvc repro decide`")
        frame = table.select(list(SERVER_LEDGER_COLUMNS)).to_pandas()
        frame = frame.astype({"label": "Int32", "new_label": "Int32"})
        return cls(pd.Index(frame["image_id"]), frame, (stat.st_mtime_ns, stat.st_size))

    def check(self, rows: Sequence[dict[str, str]], source: str) -> None:
        """Raise RequestError(400) unless decide would accept `rows` as the overrides file (its
        own `apply_overrides`, on the ledger rows of the images named)."""
        positions = sorted({self.row(r["image_id"]) for r in rows})
        part = self.frame.iloc[positions].reset_index(drop=True).assign(reason="")
        try:
            apply_overrides(part, pd.DataFrame(list(rows), columns=list(COLUMNS)), source=source)
        except InputError as error:
            raise RequestError(400, f"decide would refuse the result: {error}") from None

    def position(self, image_id: Any) -> int | None:
        """The row of `image_id` in the ledger (None: not a known image id)."""
        if not isinstance(image_id, str):
            return None
        where = self.ids.get_indexer(pd.Index([image_id]))[0]
        return None if where < 0 else int(where)

    def row(self, image_id: str) -> int:
        """The row of a known `image_id`.

        Raises:
            ValueError: the ledger has no image `image_id` (callers check ids first).
        """
        position = self.position(image_id)
        if position is None:
            raise ValueError(f"unknown image_id {image_id!r}")
        return position

    def decision(self, image_id: str) -> Decision:
        """The ledger's decision for a known `image_id`."""
        row = self.frame.iloc[self.row(image_id)]
        as_int = lambda v: None if pd.isna(v) else int(v)  # noqa: E731
        return Decision(
            str(row["action"]),
            as_int(row["label"]),
            as_int(row["new_label"]),
            tuple(
                int(c)
                for c in (row["secondary_labels"] if row["secondary_labels"] is not None else ())
            ),
        )


def parse_row(item: Any, ledger: Ledger) -> dict[str, str]:
    """One requested row -> a file row, or RequestError(400) saying what is wrong and the fix."""
    if (
        not isinstance(item, dict)
        or set(item) - set(COLUMNS)
        or not {"image_id", "action"} <= set(item)
    ):
        raise RequestError(
            400,
            f"each row must be an object with image_id, action and optional "
            f"new_label, note; got {json.dumps(item)[:200]}",
        )
    image_id, action = item["image_id"], item["action"]
    label, note = item.get("new_label"), item.get("note") or ""
    if ledger.position(image_id) is None:
        raise RequestError(400, f"unknown image_id {image_id!r}: not in this split's ledger")
    if action not in ACTIONS:
        raise RequestError(400, f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise RequestError(400, f"note must be a string of at most {MAX_NOTE} characters")
    empty = label is None or label == ""
    if action in (OverrideAction.KEEP, OverrideAction.REMOVE) and not empty:
        raise RequestError(400, f"action {action} takes no new_label (got {label!r}); clear it")
    if action == OverrideAction.FIX and empty:
        raise RequestError(400, "action fix needs a new_label: a class index 0..999 or a wnid")
    if not empty and formats.parse_class(label) is None:
        raise RequestError(
            400, f"new_label {label!r} is not a class index 0..999 or an ILSVRC2012 wnid"
        )
    decision = ledger.decision(image_id)
    if decision.action == Action.SKIP:
        raise RequestError(400, f"{image_id} is unreadable (a skip row); overrides cannot apply")
    if action == OverrideAction.KEEP and decision.label is None:
        raise RequestError(
            400,
            f"{image_id} left the split earlier and has no label to keep; relabel it (fix) instead",
        )
    return {
        "image_id": image_id,
        "action": action,
        "new_label": "" if empty else str(formats.parse_class(label)),
        "note": " ".join(note.split()),
    }


def _effective(
    rows: Sequence[dict[str, str]], decision: Decision, image_id: str
) -> tuple[str, int | None]:
    """(action, label) of an image once the file's keep/fix/remove row (if any) applies."""
    for r in rows:
        if r["image_id"] == image_id and r["action"] != OverrideAction.SECONDARY:
            label = decision.label if r["action"] == OverrideAction.KEEP else None
            fixed = r["action"] == OverrideAction.FIX
            return r["action"], formats.parse_class(r["new_label"]) if fixed else label
    return decision.action, decision.new_label


def merge_rows(
    rows: list[dict[str, str]], new: Sequence[dict[str, str]], *, decisions: dict[str, Decision]
) -> list[dict[str, str]]:
    """The file's rows after applying `new` (see the module docstring); the input is not changed.

    A removal drops the image's secondary rows, and a label never stays among its own secondary
    labels, so that the file always stays one decide accepts.

    Args:
        rows: the file's rows. new: checked rows (`parse_row`).
        decisions: image_id -> its ledger decision (secondary labels seed a first "add").

    Raises:
        RequestError: a secondary label for a removed image, or one equal to the image's label.
    """
    rows = [dict(r) for r in rows]
    for row in new:
        image_id, action, cls = row["image_id"], row["action"], row["new_label"]
        mine = [
            r for r in rows if r["image_id"] == image_id and r["action"] == OverrideAction.SECONDARY
        ]
        if action != OverrideAction.SECONDARY:
            main = [
                i
                for i, r in enumerate(rows)
                if r["image_id"] == image_id and r["action"] != OverrideAction.SECONDARY
            ]
            if main:
                rows[main[0]] = dict(row)
                rows = [r for i, r in enumerate(rows) if i not in main[1:]]
            else:
                rows.append(dict(row))
            now, label = _effective(rows, decisions[image_id], image_id)
            rows = [
                r
                for r in rows
                if r not in mine or (now != Action.REMOVE and r["new_label"] != str(label))
            ]
            continue
        now, label = _effective(rows, decisions[image_id], image_id)
        if cls and now == Action.REMOVE:
            raise RequestError(
                400,
                f"{image_id} is removed; secondary labels only apply to kept or "
                "fixed images (keep or relabel it first)",
            )
        if cls and cls == str(label):
            raise RequestError(
                400, f"class {cls} is the label of {image_id}, not a secondary label"
            )
        if not cls:
            rows = [r for r in rows if r not in mine] + [dict(row)]
            continue
        if not mine:
            rows += [
                {**row, "new_label": str(c)}
                for c in decisions[image_id].secondary
                if str(c) not in (cls, str(label))
            ]
        rows = [r for r in rows if not (r in mine and not r["new_label"])]
        if not any(r["new_label"] == cls for r in mine):
            rows.append(dict(row))
    return rows


@dataclass
class ReviewState:
    """A served split: its report folder, ledger and overrides file, and the write lock."""

    split: str
    report: Path
    overrides: Path
    ledger_path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ledger: Ledger | None = None
    root: Path = Path(".")
    config: ServeReviewConfig | None = None

    @property
    def ledger(self) -> Ledger:
        """The ledger, read again after `dvc repro` rewrote it (the server may run for hours)."""
        stat = self.ledger_path.stat() if self.ledger_path.is_file() else None
        if (
            self._ledger is None
            or stat is None
            or self._ledger.stamp != (stat.st_mtime_ns, stat.st_size)
        ):
            self._ledger = Ledger.read(self.ledger_path)
        return self._ledger

    def listing(self) -> dict[str, Any]:
        """GET /api/overrides: the split, the overrides file and its rows."""
        return {"split": self.split, "path": str(self.overrides), "rows": read_rows(self.overrides)}

    def apply(self, body: Any) -> dict[str, Any]:
        """POST /api/overrides: check every row, then rewrite the file once."""
        if (
            not isinstance(body, dict)
            or set(body) != {"rows"}
            or not isinstance(body["rows"], list)
            or not 0 < len(body["rows"]) <= 1000
        ):
            raise RequestError(400, 'body must be {"rows": [...]} with 1 to 1000 rows')
        ledger = self.ledger
        new = [parse_row(item, ledger) for item in body["rows"]]
        with self.lock:
            decisions = {r["image_id"]: ledger.decision(r["image_id"]) for r in new}
            rows = merge_rows(read_rows(self.overrides), new, decisions=decisions)
            ledger.check(rows, str(self.overrides))
            write_rows(self.overrides, rows)
            logger.info("review %s: wrote %d row(s) to %s", self.split, len(new), self.overrides)
            return self.listing()

    def record(self, image_id: str) -> dict[str, Any]:
        """GET /api/record?image_id=...: the evidence record of any image of the split, read now
        (the report holds one review round; this reaches every other image)."""
        position = self.ledger.position(image_id)
        if position is None:
            raise RequestError(404, f"unknown image_id {image_id!r}: not in this split's ledger")
        config = self._config()
        split = self.split
        return record_on_demand(
            position,
            ledger=self.ledger_path,
            votes=self.root / formats.votes_path(split),
            models=config.models,
            predictions=[self.root / formats.predictions_path(split, m) for m in config.models],
            thumb=lambda pos: f"api/thumb/{pos}.jpg",
        )

    def thumbnail(self, position: int) -> bytes:
        """GET /api/thumb/<row>.jpg: a thumbnail of any ledger row, drawn now (with its boxes)."""
        config = self._config()
        if not 0 <= position < len(self.ledger.ids):
            raise RequestError(404, f"no ledger row {position}")
        row = TableSource(self.root / formats.manifest_path(self.split), "manifest").rows(
            np.array([position]), ("path", "boxes")
        )
        path, boxes = row.column("path")[0].as_py(), row.column("boxes")[0].as_py() or []
        root = self.root / (config.image_root or ".")
        data = thumbnail_jpeg(root, path, boxes, config.thumb_size)
        if data is None:
            raise RequestError(404, f"the image of row {position} ({path}) cannot be read")
        return data

    def _config(self) -> ServeReviewConfig:
        if self.config is None or not self.config.models:
            raise RequestError(
                501, "this server was started without the split's models and image root"
            )
        return self.config

    def undo(self, body: Any) -> dict[str, Any]:
        """POST /api/undo: drop every row of one image."""
        if (
            not isinstance(body, dict)
            or set(body) != {"image_id"}
            or self.ledger.position(body["image_id"]) is None
        ):
            raise RequestError(400, 'body must be {"image_id": <an image of this split>}')
        with self.lock:
            rows = read_rows(self.overrides)
            write_rows(self.overrides, [r for r in rows if r["image_id"] != body["image_id"]])
            return self.listing()


class ReviewHandler(SimpleHTTPRequestHandler):
    """Static files of the report, plus the JSON API under /api/."""

    server: ReviewServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(kwargs.pop("server_state").report), **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        """Log each request at debug level instead of printing it."""
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        """Serve the overrides API or the report's static files."""
        if not self._host_ok():
            return
        if self.path.split("?")[0] == "/api/overrides":
            self._answer(lambda: self.server.state.listing())
        elif self.path.startswith(("/api/record?", "/api/thumb/")):
            self._on_demand()
        elif self.path.startswith("/api/"):
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
        else:
            super().do_GET()

    def do_POST(self) -> None:
        """Apply or undo overrides; errors answer JSON with their status."""
        if not self._host_ok():
            return
        actions = {"/api/overrides": self.server.state.apply, "/api/undo": self.server.state.undo}
        if self.path not in actions:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
            return
        self._answer(lambda: actions[self.path](self._body()))

    def _answer(self, work: Callable[[], Any]) -> None:
        """Answer a request with `work()`'s JSON; every error becomes a JSON message with its
        status (a refused request: its 4xx; an overrides file or ledger that cannot be read, or a
        bug: 500, logged), and the server keeps serving."""
        try:
            result = work()
        except RequestError as error:
            self._json(error.status, {"error": str(error)})
        except UserError as error:
            logger.error("review server: %s %s: %s", self.command, self.path, error)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(error)})
        except Exception as error:
            logger.exception("review server: %s %s failed", self.command, self.path)
            self._json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": f"internal error ({type(error).__name__}: {error}); see the log"},
            )
        else:
            self._json(HTTPStatus.OK, result)

    def _on_demand(self) -> None:
        """An image the report does not hold: its record (JSON) or its thumbnail (JPEG)."""
        state = self.server.state
        route, _, query = self.path.partition("?")
        try:
            if route == "/api/record":
                image_id = urllib.parse.parse_qs(query).get("image_id", [""])[0]
                self._json(HTTPStatus.OK, state.record(image_id))
                return
            name = route.removeprefix("/api/thumb/")
            if not (name.endswith(".jpg") and name[:-4].isdigit()):
                raise RequestError(404, f"no such thumbnail {route}")
            data = state.thumbnail(int(name[:-4]))
        except RequestError as error:
            self._json(error.status, {"error": str(error)})
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        if self.headers.get_content_type() != "application/json":
            raise RequestError(415, "send the body as Content-Type: application/json")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            raise RequestError(
                413 if length.isdigit() else 411,
                f"a body needs a Content-Length of at most {MAX_BODY} bytes",
            )
        try:
            return json.loads(self.rfile.read(int(length)).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(400, f"body is not valid JSON: {error}") from None

    def _host_ok(self) -> bool:
        """Refuse other hosts' pages (DNS rebinding) and cross-origin writes."""
        host, origin = self.headers.get("Host", ""), self.headers.get("Origin")
        if host not in self.server.hosts or (
            origin and origin not in {f"http://{h}" for h in self.server.hosts}
        ):
            self._json(
                HTTPStatus.FORBIDDEN, {"error": f"refused host {host!r} / origin {origin!r}"}
            )
            return False
        return True

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class ReviewServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer (one thread per request; the writes are serialised by the state's
    lock) with a deep listen backlog, carrying the served split's state."""

    daemon_threads = True
    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], state: ReviewState) -> None:
        self.state = state
        super().__init__(address, functools.partial(ReviewHandler, server_state=state))
        host, port = self.host_port
        self.hosts = {f"{host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"}

    @property
    def host_port(self) -> tuple[str, int]:
        """The IP address and port the server is bound to."""
        host, port = self.server_address[:2]
        if not isinstance(host, str):
            raise TypeError(f"the review server listens on an IP address, not {host!r}")
        return host, port

    @property
    def url(self) -> str:
        """The address the server listens on."""
        host, port = self.host_port
        return f"http://{host}:{port}/"


def make_server(
    config: ServeReviewConfig, *, host: str = "127.0.0.1", port: int = 8765, root: str | Path = "."
) -> ReviewServer:
    """A server for the configured split (port 0 picks a free port); call `serve_forever()`."""
    root, split = Path(root), config.split
    report = root / report_dir(split)
    if not (report / "index.html").is_file():
        raise MissingInputError(
            f"no review report in {report}; build it with `dvc repro "
            f"review@{split}` (or `python -m stages.review --split {split}`)"
        )
    overrides = root / config.overrides
    read_rows(overrides)  # a malformed file stops here, before anyone reviews
    state = ReviewState(
        split, report, overrides, root / formats.ledger_path(split), root=root, config=config
    )
    state.ledger  # a missing or outdated ledger stops here  # noqa: B018
    return ReviewServer((host, port), state)
