"""`imagenet-clean serve-review --split val`: serve a split's review report on 127.0.0.1 and write
the reviewer's corrections to the split's overrides file, which the next `dvc repro` applies.

Not a DVC stage: the report itself is built by the `review@<split>` stage (`stages.review`); this
command serves it with buttons that write corrections (`stages.reporting.server`, whose docstring
lists the HTTP API). `imagenet-clean review` is a deprecated alias of this command.
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from collections.abc import Sequence

from stages.cli import describe, run_as_script
from stages.contracts.params import load_params
from stages.reporting.server import ServeReviewConfig, make_server

logger = logging.getLogger(__name__)

API = """\
The page's buttons call a JSON API that scripts may use too (docs/review.md, "The HTTP API"):
  GET  /api/overrides             -> {"split", "path", "rows": [{image_id, action, ...}]}
  POST /api/overrides  {"rows": [{"image_id": ..., "action": "keep|fix|remove|secondary",
                                  "new_label": <class index or wnid>, "note": ...}, ...]}
                                  -> the same listing, updated
  POST /api/undo       {"image_id": ...}  drops that image's rows -> the same listing, updated
  GET  /api/record?image_id=...   -> any image's evidence record
  GET  /api/thumb/<row>.jpg       -> a ledger row's thumbnail
POST bodies are Content-Type: application/json; a refused request gets a 4xx {"error": why}
and leaves the overrides file as it was."""


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `imagenet-clean serve-review --split val [--port 8765] [--host 127.0.0.1]`."""
    parser = argparse.ArgumentParser(
        prog="imagenet-clean serve-review",
        description=textwrap.fill(describe(__doc__), 79),
        epilog=API,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--split", required=True, help="a split configured under params.yaml splits"
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free)")
    args = parser.parse_args(argv)
    config = ServeReviewConfig.from_params(load_params(args.params), args.split)
    server = make_server(config, host=args.host, port=args.port)
    logger.info(
        "serve-review %s: serving %s on %s (corrections go to %s); Ctrl-C stops",
        args.split,
        server.state.report,
        server.url,
        server.state.overrides,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("serve-review: stopped")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    run_as_script(main)
