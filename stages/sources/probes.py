"""Ingest's image checks at ImageNet scale: incremental (unchanged files are not read again) and
parallel (new or changed files are decoded and hashed by a process pool).

Every file ingest lists is probed by `images.probe_image` (size, decode check, sha256 of its
bytes). A probe is kept in the split's probe cache, `data/.work/ingest/<split>.parquet` (outside
every DVC output and ignored by git), with the file's size and modification time; the next ingest
reuses the probe of every file whose (path, size, mtime) is unchanged and probes only the others.
A cache made with another `ingest.verify` mode or another version of `stages/sources/images.py`
(the probe code) is not used, so a cached probe is always the one a fresh run would compute, and
the manifest comes out byte-identical either way. The manifest records each image's sha256, which
is what tells the downstream stages (through DVC) that an image changed; the cache only saves
reading unchanged files. Parquet-shard rows (`<shard>#<row>`) go by their shard's size and mtime.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from stages.contracts import formats
from stages.sources import images

logger = logging.getLogger(__name__)

Probe = tuple[int, int, str | None, str | None]
"""What `images.probe_image` returns: width, height, skip reason (or None), sha256 (or None)."""

CACHE_DIR = Path("data/.work/ingest")
IN_PROCESS_BELOW = 64
"""Fewer files to probe than this are probed in this process (a pool costs a second to start)."""
CHUNK = 16
"""Files per task sent to a pool worker (consecutive files: rows of one shard stay together)."""
CACHE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("reason", pa.string()),
        ("sha256", pa.string()),
    ]
)


def cache_path(split: str) -> Path:
    """`data/.work/ingest/<split>.parquet`: the split's probe cache."""
    return CACHE_DIR / f"{split}.parquet"


def fingerprint(full: bool) -> str:
    """What a cached probe depends on besides the file: the verify mode and the probe code."""
    code = Path(images.__file__).read_bytes()
    return hashlib.sha256(code + (b"full" if full else b"header")).hexdigest()


@dataclass
class ProbeCache:
    """The probe cache of one split, and what the last `probe_files` call did with it.

    Attributes:
        path: the cache file (None: no cache, every file is probed).
        reused: files whose cached probe was used. probed: files probed (read and decoded).
    """

    path: Path | None
    reused: int = 0
    probed: int = 0


def file_stamp(root: str | os.PathLike[str], path: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of a manifest path's file (a parquet row: its shard); None when it
    cannot be stat'ed (a dangling symlink, a vanished file): such a file is always probed."""
    where = images.resolve(root, path)
    try:
        stat = os.stat(where[0] if isinstance(where, tuple) else where)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class _Cached:
    """The probes of a cache file, by path."""

    index: pd.Index
    size: np.ndarray
    mtime_ns: np.ndarray
    width: np.ndarray
    height: np.ndarray
    reason: list[str | None]
    sha256: list[str | None]


def _read_cache(path: Path, key: str) -> _Cached | None:
    """The cached probes, or None: absent, unreadable or made differently."""
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        logger.warning("probe cache %s unreadable (%s); probing every file", path, error)
        return None
    if (table.schema.metadata or {}).get(b"fingerprint") != key.encode() or not table.schema.equals(
        CACHE_SCHEMA, check_metadata=False
    ):
        logger.info("probe cache %s was made by another verify mode or probe code; not used", path)
        return None
    column = lambda name: table.column(name).to_numpy()  # noqa: E731
    return _Cached(
        pd.Index(table.column("path").to_pylist(), dtype=object),
        column("size"),
        column("mtime_ns"),
        column("width"),
        column("height"),
        table.column("reason").to_pylist(),
        table.column("sha256").to_pylist(),
    )


def _write_cache(path: Path, key: str, frame: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(frame, schema=CACHE_SCHEMA, preserve_index=False)
    with formats.atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata({"fingerprint": key}), tmp)


def _probe(root: str, full: bool, path: str) -> Probe:
    """One file's probe (a pool task: module-level, so it pickles)."""
    return images.probe_image(root, path, full=full)


def _probe_many(
    root: str | os.PathLike[str], paths: list[str], *, full: bool, workers: int, desc: str
) -> list[Probe]:
    """Probe `paths` in order: in this process, or by a pool of `workers` processes."""
    task = functools.partial(_probe, str(root), full)
    bar = tqdm(total=len(paths), desc=desc, unit="img", mininterval=2.0)
    with bar:
        if workers <= 1 or len(paths) < IN_PROCESS_BELOW:
            done = []
            for path in paths:
                done.append(task(path))
                bar.update()
            return done
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            done = []
            for probe in pool.map(task, paths, chunksize=CHUNK):
                done.append(probe)
                bar.update()
            return done


def probe_files(
    root: str | os.PathLike[str],
    paths: Sequence[str],
    *,
    full: bool = True,
    workers: int = 1,
    cache: ProbeCache | None = None,
    desc: str = "ingest",
) -> list[Probe]:
    """`images.probe_image` of every manifest path under `root`, in order, reading only the files
    that the cache does not hold unchanged (see the module docstring); the cache is then rewritten
    (atomically) with every file's probe and stamp, and `cache.reused` / `cache.probed` set."""
    stamps = [file_stamp(root, p) for p in paths]
    size = np.array([s[0] if s else -1 for s in stamps], dtype=np.int64)
    mtime = np.array([s[1] if s else -1 for s in stamps], dtype=np.int64)
    key = fingerprint(full)
    old = _read_cache(cache.path, key) if cache is not None and cache.path is not None else None
    reuse = np.zeros(len(paths), dtype=bool)
    at = np.full(len(paths), -1, dtype=np.int64)
    if old is not None and len(paths):
        at = old.index.get_indexer(pd.Index(list(paths), dtype=object))
        known = at >= 0
        reuse[known] = (old.size[at[known]] == size[known]) & (
            old.mtime_ns[at[known]] == mtime[known]
        )
        reuse &= size >= 0
    todo = [p for p, r in zip(paths, reuse) if not r]
    fresh = iter(_probe_many(root, todo, full=full, workers=workers, desc=desc))
    probes: list[Probe] = []
    for k in range(len(paths)):
        if reuse[k] and old is not None:
            r = at[k]
            probes.append((int(old.width[r]), int(old.height[r]), old.reason[r], old.sha256[r]))
        else:
            probes.append(next(fresh))
    if cache is not None:
        cache.reused, cache.probed = int(reuse.sum()), len(todo)
        if cache.path is not None:
            stamped = size >= 0
            _write_cache(
                cache.path,
                key,
                pd.DataFrame(
                    {
                        "path": np.asarray(paths, dtype=object)[stamped],
                        "size": size[stamped],
                        "mtime_ns": mtime[stamped],
                        "width": np.array([p[0] for p in probes], dtype=np.int32)[stamped],
                        "height": np.array([p[1] for p in probes], dtype=np.int32)[stamped],
                        "reason": np.array([p[2] for p in probes], dtype=object)[stamped],
                        "sha256": np.array([p[3] for p in probes], dtype=object)[stamped],
                    }
                ),
            )
        logger.info(
            "%s: %d files unchanged since the last ingest (probe reused), %d probed",
            desc,
            cache.reused,
            cache.probed,
        )
    return probes
