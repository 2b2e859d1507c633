"""stages.modelling.shards: a store's shards resume only under their fingerprint and assemble into
the output file with its top-k; buffers hand a shard on, at its width, once all its rows are in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.contracts.formats import NUM_CLASSES
from stages.modelling import shards


def _ranked_rows(n: int) -> np.ndarray:
    """(n, 1000) float32: classes 10..15 hold 0.5, 0.2, 0.1, 0.08, 0.07, 0.05 on every row."""
    probs = np.zeros((n, NUM_CLASSES), dtype=np.float32)
    probs[:, 10:16] = [0.5, 0.2, 0.1, 0.08, 0.07, 0.05]
    return probs


def test_shard_store_resumes_under_its_fingerprint_and_assembles_the_rows(tmp_path: Path) -> None:
    out = tmp_path / "preds" / "m.npy"
    fingerprint = {"model": "m", "weights": "abc", "shard_size": 2}
    probs = _ranked_rows(5)
    probs[3:] = np.nan  # row 3: an image that could not be decoded; row 4: a skip row
    labels = np.array([10, 14, 15, 10, np.nan])  # top-1 hit, top-5 hit (5th), miss (6th)
    usable = np.array([True, True, True, True, False])

    def store(under: dict) -> shards.ShardStore:
        return shards.ShardStore(out, under, n_rows=5, shard_size=2, dtype=np.float32)

    first = store(fingerprint)
    assert first.open() == {0, 1, 2}
    first.write(0, probs[0:2])
    first.write(2, probs[4:5])
    resumed = store(dict(fingerprint))
    assert resumed.open() == {1}  # a killed run's shards are kept under the same fingerprint
    resumed.write(1, probs[2:4])
    top1, top5, unreadable = resumed.assemble(labels, usable)
    assert (top1, top5) == (33.3333, 66.6667)  # rows 0..2 scored: 1 and 2 of 3
    assert unreadable.tolist() == [3]
    np.testing.assert_array_equal(np.load(out), probs)
    resumed.remove()
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.npy"]

    store(fingerprint).open()
    store(fingerprint).write(0, probs[0:2])
    other = store({**fingerprint, "weights": "another model"})
    assert other.open() == {0, 1, 2}  # shards of another fingerprint are discarded, not reused
    assert not other.path(0).exists()


def test_buffers_hand_each_output_its_shard_at_its_own_width() -> None:
    usable = np.array([True, False, True, True, True])  # row 1: a skip row
    done: list[tuple[str, int, tuple[int, ...]]] = []
    buffers = shards.ShardBuffers(
        usable,
        {"m.full": {0, 1, 2}, shards.features_name("m.full"): {0}},
        shard_size=2,
        dtype=np.float32,
        on_shard=lambda name, shard, values: done.append((name, shard, values.shape)),
        layouts={shards.features_name("m.full"): (8, np.float16)},
    )
    buffers.add("m.full", np.array([0]), np.zeros((1, 1000), np.float32))
    buffers.add(shards.features_name("m.full"), np.array([0]), np.ones((1, 8), np.float16))
    assert buffers.wants(shards.features_name("m.full"), 0)
    assert not buffers.wants(shards.features_name("m.full"), 1)
    buffers.rows_done(0, 1)  # shard 0: its one usable row
    assert done == [("m.full", 0, (2, 1000)), ("m.full:features", 0, (2, 8))]
