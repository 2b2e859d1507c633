"""`imagenet-clean <command> [options]`: one subcommand per DVC stage (the same module DVC runs,
`python -m stages.<stage>`), plus the commands that are not stages: `promote`,
`import-predictions`, `predict-ensemble` and `serve-review`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from stages.adapters.libc_adapter import die_with_parent
from stages.contracts.errors import UserError

DEBUG_ENV = "IMAGENET_CLEAN_DEBUG"

COMMANDS = {
    "ingest": "stages.ingest",
    "predict": "stages.predict",
    "predict-ensemble": "stages.predict",
    "vote": "stages.vote",
    "explain": "stages.explain",
    "embed": "stages.embed",
    "duplicates": "stages.duplicates",
    "decide": "stages.decide",
    "evaluate": "stages.evaluate",
    "publish": "stages.publish",
    "promote": "stages.promote",
    "import-predictions": "stages.import_predictions",
    "review-report": "stages.review",
    "serve-review": "stages.serve_review",
    "folds": "stages.folds",
    "train": "stages.train",
    "oof": "stages.oof",
    "retrain": "stages.retrain",
    "retrain-report": "stages.retrain_report",
}


DEPRECATED = {"review": "serve-review"}
"""Old command names -> the command they run (with a note on stderr)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to `stages.<stage>.main` (or `main_ensemble` for `predict-ensemble`); run as the
    `imagenet-clean` program (argv None), the process ends with its parent."""
    if argv is None:
        die_with_parent()
    argv, debug = _strip_debug(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DEPRECATED:
        new = DEPRECATED[argv[0]]
        print(
            f"note: `imagenet-clean {argv[0]}` is deprecated and will be removed; it runs "
            f"`imagenet-clean {new}` (the review report itself is the DVC stage "
            "`dvc repro review@<split>`)",
            file=sys.stderr,
        )
        argv = [new, *argv[1:]]
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        print(
            f"usage: imagenet-clean [--debug] {{{names}}} [options]  (each takes --help)",
            file=sys.stderr,
        )
        return 2
    configure_logging()
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command])
    entry = module.main_ensemble if command == "predict-ensemble" else module.main
    return guarded(lambda: int(entry(rest) or 0), debug=debug)


def _strip_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Argv without `--debug`, and whether tracebacks of user errors are wanted."""
    rest = [a for a in argv if a != "--debug"]
    return rest, len(rest) != len(argv)


def guarded(run: Callable[[], int], *, debug: bool = False) -> int:
    """Run an entry point; a UserError becomes `error: <message>` on stderr and exit status 2
    (the traceback only with `debug`). Other exceptions propagate with their tracebacks."""
    try:
        return run()
    except UserError as error:
        if debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"error: {error}", file=sys.stderr)
        print(f"(set {DEBUG_ENV}=1 or pass --debug for the traceback)", file=sys.stderr)
        return 2


def configure_logging() -> None:
    """Stage entry points log INFO to stderr; library code only uses module loggers."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def describe(doc: str | None) -> str:
    """A command's `--help` description: the first paragraph of its module docstring, whole (its
    lines joined), never cut mid-sentence at the docstring's first line break."""
    paragraph = (doc or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def split_stage_main(
    argv: Sequence[str] | None, *, stage: str, doc: str, run: Callable[[str, dict[str, Any]], Any]
) -> int:
    """The CLI of a per-split stage: `--split <name> [--params params.yaml]` -> run(split, params).

    Args:
        argv: the arguments after the stage's name (None: sys.argv's).
        stage: the command name; doc: the module docstring, whose first paragraph describes the
            stage.
        run: the stage's function of (split, params).
    """
    from stages.contracts.params import load_params

    parser = argparse.ArgumentParser(prog=f"imagenet-clean {stage}", description=describe(doc))
    parser.add_argument(
        "--split", required=True, help="a split configured under params.yaml splits"
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    args = parser.parse_args(argv)
    run(args.split, load_params(args.params))
    return 0


def run_as_script(entry: Callable[[Sequence[str] | None], int]) -> None:
    """`python -m stages.<stage>`: log to stderr, run, exit with the entry point's status
    (2 with a short message for a UserError). The process ends with its parent (`dvc repro`,
    torchrun's agent), so killing that never leaves the stage running as an orphan."""
    die_with_parent()
    configure_logging()
    argv, debug = _strip_debug(sys.argv[1:])
    raise SystemExit(guarded(lambda: int(entry(argv) or 0), debug=debug))


if __name__ == "__main__":
    sys.exit(main())
