"""A Hub folder on disk and on the Hub: one build of an output folder at a time (removing what a
killed build left behind), and pushing a built folder: one commit per iteration, tagged
`iteration-<k>`.

The token comes from the HF_TOKEN environment variable only and is never written anywhere; offline
or without a token, a push stops before anything is uploaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants

from stages.contracts import formats
from stages.contracts.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking, no leftover cleanup
    LOCKING = False
else:
    LOCKING = True

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
TRUE_VALUES = {"1", "true", "yes", "on"}


class PushError(UserError, RuntimeError):
    """A push that cannot go ahead (offline, no token, tag taken: nothing is uploaded), or whose
    upload went in but could not be tagged (the message names the commit to tag)."""


@dataclass(frozen=True)
class PushResult:
    """What a push uploaded (or, on a dry run, would upload)."""

    repo_id: str
    tag: str
    files: tuple[tuple[str, int], ...]
    commit: str | None
    dry_run: bool


@contextlib.contextmanager
def exclusive_build(out: str | os.PathLike[str]) -> Iterator[None]:
    """Build `out` while holding a shared lock on its parent folder; first, if no other build
    holds it (the exclusive lock is free), remove this output's leftovers of killed builds
    (`.<name>.*.tmp` / `.old` folders, which in images mode hold image bytes). Nothing else is
    touched: other outputs' leftovers and files of other names stay."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not LOCKING:  # pragma: no cover
        yield
        return
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(
                "another build in %s is running; its work folders are left alone", out.parent
            )
        else:
            for path in formats.atomic_leftovers(out):
                logger.warning("removing %s, left by a build that was killed", path)
                shutil.rmtree(path)
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def hub_offline() -> bool:
    """Whether Hub access is switched off (HF_HUB_OFFLINE now, or when huggingface_hub loaded)."""
    now = any(
        os.environ.get(name, "").strip().lower() in TRUE_VALUES
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return now or bool(hub_constants.HF_HUB_OFFLINE)


def ensure_push_ready(token: str | None) -> None:
    """Raise PushError, before anything is uploaded, when a push cannot work."""
    if hub_offline():
        raise PushError(
            "cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE=1). Unset "
            "HF_HUB_OFFLINE to push, or use --dry-run to list what would be uploaded; "
            "nothing was uploaded"
        )
    if not token:
        raise PushError(
            "cannot push to the Hub: no token. Export HF_TOKEN=<a write token> (the "
            "token is read from the environment only, never from a file); nothing was "
            "uploaded"
        )


def _folder_files(folder: Path) -> tuple[tuple[str, int], ...]:
    if not (folder / "README.md").is_file() or not (folder / "data").is_dir():
        raise FileNotFoundError(
            f"{folder} is not a built Hub folder (no README.md or data/); run "
            f"`imagenet-clean publish` first"
        )
    return tuple(
        sorted(
            (path.relative_to(folder).as_posix(), path.stat().st_size)
            for path in folder.rglob("*")
            if path.is_file()
        )
    )


def push(
    folder: str | os.PathLike[str],
    *,
    repo_id: str,
    iteration: int,
    token: str | None,
    dry_run: bool = False,
    private: bool = True,
) -> PushResult:
    """Upload a built folder to the Hub dataset `repo_id` in one commit and tag it `iteration-<k>`.

    Creates the repo (private by default) when absent; replaces the repo's previous `data/` shards.
    A dry run only logs the files, sizes, repo and tag: no token, no network.

    Raises:
        PushError: offline, no token, or the tag already exists, all before any upload; or the
            upload succeeded but tagging failed (the message names the commit to tag).
    """
    folder = Path(folder)
    if not REPO_ID.match(str(repo_id)):
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f"iteration must be an int >= 0, got {iteration!r}")
    files, tag = _folder_files(folder), f"iteration-{iteration}"
    if dry_run:
        for name, size in files:
            logger.info("dry run: would upload %s (%d bytes)", name, size)
        logger.info(
            "dry run: %d files, %d bytes to dataset %s, tagged %s; nothing uploaded",
            len(files),
            sum(size for _, size in files),
            repo_id,
            tag,
        )
        return PushResult(repo_id, tag, files, None, True)
    ensure_push_ready(token)
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
    tags = {ref.name for ref in api.list_repo_refs(repo_id, repo_type="dataset", token=token).tags}
    if tag in tags:
        raise PushError(
            f"dataset {repo_id} already has tag {tag}: this iteration was published. "
            f"Promote the next iteration, or delete the tag (HfApi().delete_tag) to "
            f"republish it; nothing was uploaded"
        )
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="dataset",
        commit_message=f"ImageNet-Clean iteration {iteration}",
        delete_patterns=["data/**"],
        token=token,
    )
    try:
        api.create_tag(
            repo_id,
            tag=tag,
            revision=commit.oid,
            repo_type="dataset",
            token=token,
            tag_message=f"ImageNet-Clean iteration {iteration}",
        )
    except Exception as error:  # the upload is in: say exactly what is left to do
        raise PushError(
            f"uploaded commit {commit.oid} to {repo_id} but could not tag it {tag} "
            f"({type(error).__name__}); tag it with HfApi().create_tag({repo_id!r}, "
            f"tag={tag!r}, revision={commit.oid!r}, repo_type='dataset')"
        ) from error
    logger.info(
        "pushed %d files to dataset %s: commit %s, tag %s", len(files), repo_id, commit.oid, tag
    )
    return PushResult(repo_id, tag, files, commit.oid, False)
