"""`imagenet-clean <stage> [options]`: one subcommand per DVC stage, plus `promote`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Callable, Sequence

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


def split_stage_main(argv: Sequence[str] | None, *, stage: str, doc: str,
                     run: Callable[[str, dict[str, Any]], Any]) -> int:
    """The CLI of a per-split stage: `--split <name> [--params params.yaml]` -> `run(split, params)`."""
    from stages.params import load_params

    parser = argparse.ArgumentParser(prog=f"imagenet-clean {stage}", description=doc.splitlines()[0])
    parser.add_argument("--split", required=True, help="a split configured under params.yaml splits")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    run(args.split, load_params(args.params))
    return 0


def run_as_script(entry: Callable[[], int]) -> None:
    """`python -m stages.<stage>`: log to stderr, run, exit with the entry point's status."""
    configure_logging()
    raise SystemExit(entry())


if __name__ == "__main__":
    sys.exit(main())
