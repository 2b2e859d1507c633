"""`imagenet-clean <stage> [options]`: one subcommand per DVC stage, plus `promote`."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Sequence

COMMANDS = {
    "ingest": "stages.ingest",
    "predict": "stages.predict",
    "predict-ensemble": "stages.predict",
    "vote": "stages.vote",
    "explain": "stages.explain",
    "decide": "stages.decide",
    "evaluate": "stages.evaluate",
    "publish": "stages.publish",
    "promote": "stages.promote",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to `stages.<stage>.main` (or `main_ensemble` for `predict-ensemble`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        print(f"usage: imagenet-clean {{{names}}} [options]  (each takes --help)", file=sys.stderr)
        return 2
    configure_logging()
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command])
    entry = module.main_ensemble if command == "predict-ensemble" else module.main
    return int(entry(rest) or 0)


def configure_logging() -> None:
    """Stage entry points log INFO to stderr; library code only uses module loggers."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
