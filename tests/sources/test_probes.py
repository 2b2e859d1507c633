"""stages.sources.probes: ingest reads only new or changed images, in a process pool, and the
manifest is the same bytes as a fresh run's."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from stages.sources import probes
from stages.sources.layouts import Source
from stages.sources.manifest import IngestConfig, build_manifest
from stages.sources.probes import ProbeCache, probe_files

WNID = "n01440764"


@pytest.fixture
def split(tmp_path: Path, demo_root: Path) -> Path:
    """An imagefolder split of 6 real demo JPEGs (two classes)."""
    root = tmp_path / "split"
    files = sorted((demo_root / "ILSVRC/Data/CLS-LOC/val").glob("*.JPEG"))[:6]
    for k, source in enumerate(files):
        folder = root / ("n01440764" if k < 3 else "n01443537")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / source.name)
    return root


def ingest(root: Path, cache: ProbeCache | None, **options) -> pd.DataFrame:
    manifest, _ = build_manifest(
        Source(root, "imagefolder"), config=IngestConfig(**options), cache=cache
    )
    return manifest


def test_unchanged_images_are_reused_and_one_changed_image_is_the_only_one_read(
    tmp_path: Path, split: Path, demo_root: Path
) -> None:
    cache = ProbeCache(tmp_path / "probes.parquet")
    first = ingest(split, cache)
    assert (cache.reused, cache.probed) == (0, 6)
    again = ingest(split, cache)
    assert (cache.reused, cache.probed) == (6, 0)
    pd.testing.assert_frame_equal(again, first)
    changed = split / first.loc[4, "path"]
    other = sorted((demo_root / "ILSVRC/Data/CLS-LOC/val").glob("*.JPEG"))[10]
    shutil.copy(other, changed)  # same path, another image
    after = ingest(split, cache)
    assert (cache.reused, cache.probed) == (5, 1)
    differs = [c for c in after.columns if not after[c].equals(first[c])]
    assert set(differs) <= {"sha256", "width", "height"} and "sha256" in differs
    rows = (after["sha256"] != first["sha256"]).to_numpy()
    assert rows.tolist() == [False] * 4 + [True, False]
    pd.testing.assert_frame_equal(after, ingest(split, None))  # = a run without the cache


def test_a_touched_image_is_read_again_and_the_manifest_stays_the_same(
    tmp_path: Path, split: Path
) -> None:
    cache = ProbeCache(tmp_path / "probes.parquet")
    first = ingest(split, cache)
    image = split / first.loc[1, "path"]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = ingest(split, cache)
    assert (cache.reused, cache.probed) == (5, 1)
    pd.testing.assert_frame_equal(second, first)


def test_a_cache_made_otherwise_is_not_used(
    tmp_path: Path, split: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ProbeCache(tmp_path / "probes.parquet")
    ingest(split, cache, verify="header")
    caplog.set_level(logging.INFO, logger="stages.sources.probes")
    ingest(split, cache, verify="full")
    assert (cache.reused, cache.probed) == (0, 6)
    assert "made by another verify mode or probe code; not used" in caplog.text
    cache.path.write_bytes(b"not parquet")  # type: ignore[union-attr]
    full = ingest(split, cache)
    assert (cache.reused, cache.probed) == (0, 6)
    assert "unreadable" in caplog.text
    pd.testing.assert_frame_equal(full, ingest(split, None))


def test_a_dangling_symlink_is_never_cached_and_stays_a_skip_row(
    tmp_path: Path, split: Path
) -> None:
    (split / WNID / "gone.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    cache = ProbeCache(tmp_path / "probes.parquet")
    for _ in range(2):
        manifest = ingest(split, cache)
        assert (cache.reused + cache.probed, cache.probed >= 1) == (7, True)
    reason = manifest.set_index("image_id").loc["gone", "skip_reason"]
    assert reason.startswith("dangling symlink: gone.JPEG")


def test_a_process_pool_probes_the_same_as_one_process(tmp_path: Path, demo_root: Path) -> None:
    files = sorted((demo_root / "ILSVRC/Data/CLS-LOC/val").glob("*.JPEG"))
    paths = [f.name for f in files[: probes.IN_PROCESS_BELOW + 6]]
    (tmp_path / "broken.JPEG").write_bytes(files[0].read_bytes()[:500])
    paths.insert(7, "broken.JPEG")
    for name in paths:
        if name != "broken.JPEG":
            shutil.copy(demo_root / "ILSVRC/Data/CLS-LOC/val" / name, tmp_path / name)
    pooled = probe_files(tmp_path, paths, workers=2)
    alone = probe_files(tmp_path, paths, workers=1)
    assert pooled == alone and len(pooled) == len(paths)
    assert pooled[7][2] is not None and pooled[7][2].startswith("unreadable image")
