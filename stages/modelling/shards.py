"""Resumable shards: a run's results kept shard by shard outside the folder DVC hashes.

Work is cut into shards of `shard_size` manifest rows. `ShardBuffers` collects batch results per
(output, shard) and hands a shard on once all its usable rows are in; `ShardStore` keeps an
output's finished shards in its work folder (`work_folder`: `<root>/.work/<split>/<stem>/`, beside
the output folder but outside it) under a `fingerprint.json` of everything their bytes depend on,
and streams them into the final memory-mappable .npy with an atomic rename. A run killed at any
point resumes with the missing shards only; shards of another fingerprint are never reused. Used
for predict's probabilities and features (`stages.modelling.predictor`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts.formats import NUM_CLASSES, atomic_path, percent, write_json, write_npy
from stages.contracts.sidecars import topk_hits

logger = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
ShardSink = Callable[[str, int, np.ndarray], None]


class ShardBuffers:
    """Collects batch results per (output, shard); hands a shard on once all its usable rows are
    in.

    usable: (N,) bool; pending: output name -> shard indices to compute; on_shard(name, shard,
    values (rows of the shard, width)) receives each complete shard (NaN rows for skip rows).
    Every output is (rows, 1000) probabilities in `dtype` unless `layouts` gives it another
    (width, dtype), as for features (`features_name`).
    """

    def __init__(
        self,
        usable: np.ndarray,
        pending: Mapping[str, set[int]],
        *,
        shard_size: int,
        dtype: type[np.floating],
        on_shard: ShardSink,
        layouts: Mapping[str, tuple[int, type[np.floating]]] | None = None,
    ) -> None:
        self.usable, self.pending, self.on_shard = usable, pending, on_shard
        self.shard_size, self.dtype = shard_size, dtype
        self.layouts = dict(layouts or {})
        self.shards = sorted(set().union(*pending.values())) if pending else []
        self.waiting = {
            s: int(usable[s * shard_size : (s + 1) * shard_size].sum()) for s in self.shards
        }
        self.buffers: dict[tuple[str, int], np.ndarray] = {}

    def _buffer(self, name: str, shard: int) -> np.ndarray:
        if (name, shard) not in self.buffers:
            rows = min(self.shard_size, len(self.usable) - shard * self.shard_size)
            width, dtype = self.layouts.get(name, (NUM_CLASSES, self.dtype))
            self.buffers[name, shard] = np.full((rows, width), np.nan, dtype=dtype)
        return self.buffers[name, shard]

    def wants(self, name: str, shard: int) -> bool:
        """Whether output `name` is to be computed for `shard`."""
        return shard in self.pending.get(name, ())

    def add(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Store a batch: rows (B,) manifest row indices within one shard, values (B, width)."""
        shard = int(rows[0]) // self.shard_size
        self._buffer(name, shard)[rows - shard * self.shard_size] = values

    def rows_done(self, shard: int, count: int) -> None:
        """Count `count` rows of `shard` as computed by every model pending it."""
        self.waiting[shard] -= count
        if self.waiting[shard] == 0:
            for name, shards in self.pending.items():
                if shard in shards:
                    self.on_shard(name, shard, self._buffer(name, shard))
                    del self.buffers[name, shard]

    def flush_empty(self) -> None:
        """Hand on the shards without usable rows (all skip rows): nothing to compute."""
        for shard in self.shards:
            if self.waiting[shard] == 0:
                self.rows_done(shard, 0)


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """A digest of what predictions depend on in a manifest: row order, ids, paths, skip rows and
    the images' bytes (their sha256), so shards of a killed run never outlive a changed image."""
    digest = hashlib.sha256(str(len(manifest)).encode())
    for column in ("image_id", "path", "skip_reason", "sha256"):
        values = manifest[column].astype(object).where(manifest[column].notna(), "\x01")
        digest.update("\x00".join(map(str, values)).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def features_name(output: str) -> str:
    """The buffer and store name of an output's features (`<model>.<view>:features`)."""
    return f"{output}:features"


def work_folder(out: str | Path) -> Path:
    """A model's work folder for its output `<root>/<split>/<model>.npy`:
    `<root>/.work/<split>/<model>/`, beside the output folder but outside it, so that a killed run
    leaves nothing in the folder that DVC hashes (vote's and evaluate's dependency) and the next
    run, after DVC deleted the outputs, still finds its shards."""
    out = Path(out)
    return out.parent.parent / ".work" / out.parent.name / out.stem


class ShardStore:
    """A model's work folder (`work_folder`) with `fingerprint.json` and one `shard-NNNNNN.npy`
    per shard of (rows, width) values: probabilities (width 1000) or features (width D).

    Shards are written atomically; the folder is wiped when its fingerprint differs from this
    run's, so stale shards of another model, preprocessing, manifest or option set are never used.
    The final file is assembled in the work folder too, and only renamed into the output folder.
    """

    def __init__(
        self,
        out: str | Path,
        fingerprint: dict[str, Any],
        *,
        n_rows: int,
        shard_size: int,
        dtype: type[np.floating],
        width: int = NUM_CLASSES,
    ) -> None:
        self.out, self.fingerprint, self.n_rows = Path(out), fingerprint, n_rows
        self.shard_size, self.dtype, self.width = shard_size, np.dtype(dtype), width
        self.folder = work_folder(self.out)
        self.n_shards = -(-n_rows // shard_size)

    def path(self, shard: int) -> Path:
        """The file of shard number `shard`."""
        return self.folder / f"shard-{shard:06d}.npy"

    def _rows(self, shard: int) -> int:
        return min(self.shard_size, self.n_rows - shard * self.shard_size)

    def _valid(self, shard: int) -> bool:
        try:
            array = np.load(self.path(shard), mmap_mode="r")
        except (OSError, ValueError):
            return False
        return array.shape == (self._rows(shard), self.width) and array.dtype == self.dtype

    def open(self) -> set[int]:
        """Prepare the work folder (wiped when its fingerprint differs) -> the missing shards."""
        self.prepare()
        return self.missing()

    def prepare(self) -> None:
        """Wipe the work folder when its fingerprint differs from this run's, remove files of
        writes that were killed, and save the fingerprint. Under torchrun only rank 0 calls this,
        before the others look at the folder."""
        for stale in self.out.parent.glob(f".{self.out.name}.*.tmp"):
            stale.unlink()  # an assembly killed before its rename (by an older version)
        legacy = self.out.parent / f".{self.out.stem}.partial"
        if legacy.is_dir():
            shutil.rmtree(legacy)  # an older version's work folder inside the output folder
        saved = self.folder / FINGERPRINT
        if self.folder.exists() and (
            not saved.is_file() or json.loads(saved.read_text()) != self.fingerprint
        ):
            logger.warning(
                "%s: its shards belong to another model, preprocessing, manifest or "
                "option set; discarding them",
                self.folder,
            )
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink()  # a shard write killed before its rename
        if not saved.is_file():
            write_json(self.fingerprint, saved)

    def missing(self) -> set[int]:
        """The shards not yet in the (prepared) work folder."""
        missing = {s for s in range(self.n_shards) if not self._valid(s)}
        if len(missing) < self.n_shards:
            logger.info(
                "%s: resuming; %d of %d shards already done, computing %d",
                self.out.name,
                self.n_shards - len(missing),
                self.n_shards,
                len(missing),
            )
        return missing

    def write(self, shard: int, values: np.ndarray) -> None:
        """Atomically store one complete shard: values (rows of the shard, width)."""
        write_npy(values, self.path(shard))

    def _stream(self, usable: np.ndarray, visit: Callable[[slice, np.ndarray], None]) -> np.ndarray:
        """Stream the shards into the final .npy (atomic rename), calling visit(rows, shard) on
        each -> the (U,) usable rows left NaN (images that could not be decoded). Holds one shard
        in RAM at a time."""
        unreadable = []
        with atomic_path(self.out, within=self.folder) as tmp:
            array = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=self.dtype, shape=(self.n_rows, self.width)
            )
            for shard in range(self.n_shards):
                rows = slice(shard * self.shard_size, shard * self.shard_size + self._rows(shard))
                values = np.load(self.path(shard))
                array[rows] = values
                visit(rows, values)
                if self.width:  # a (N, 0) store has no values to be NaN
                    nan = np.isnan(values[:, 0])
                    unreadable.append(np.flatnonzero(usable[rows] & nan) + rows.start)
            array.flush()
            del array
        return np.concatenate(unreadable) if unreadable else np.empty(0, dtype=np.int64)

    def assemble(
        self, labels: np.ndarray, usable: np.ndarray
    ) -> tuple[float | None, float | None, np.ndarray]:
        """Stream probability shards into the final .npy -> (top-1, top-5) in percent and the
        (U,) usable rows whose predictions are NaN.

        labels: (N,) float (NaN where unknown); usable: (N,) bool.
        """
        totals = np.zeros(3, dtype=np.int64)  # top-1 hits, top-5 hits, rows scored

        def count(rows: slice, probs: np.ndarray) -> None:
            hits, scored = topk_hits(probs, labels[rows], usable[rows])
            totals[:2] += hits
            totals[2] += scored

        missing = self._stream(usable, count)
        scored = int(totals[2])
        return percent(int(totals[0]), scored), percent(int(totals[1]), scored), missing

    def assemble_features(self, usable: np.ndarray) -> np.ndarray:
        """Stream feature shards into the final .npy -> the (U,) usable rows without features.

        usable: (N,) bool."""
        return self._stream(usable, lambda rows, values: None)

    def write_sidecar(self, sidecar: dict[str, Any]) -> None:
        """Write the output's JSON sidecar `<stem>.json`, its temporary file in the work folder."""
        write_json(sidecar, self.out.with_suffix(".json"), within=self.folder)

    def remove(self) -> None:
        """Delete the work folder (after the final file and its sidecar are in place), and its
        parents `.work/<split>/` and `.work/` once empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in (self.folder.parent, self.folder.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: another model's work is in progress
