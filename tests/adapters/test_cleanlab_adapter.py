"""The cleanlab adapter: the only place that touches cleanlab's private functions. These tests fail
loudly when the installed cleanlab is one whose private code was not read and tested."""

from __future__ import annotations

import cleanlab
import numpy as np
import pytest

from stages.adapters import cleanlab_adapter


def test_installed_cleanlab_is_a_supported_version() -> None:
    cleanlab_adapter.check_version()  # raises UnsupportedCleanlab on an untested cleanlab
    assert ".".join(cleanlab.__version__.split(".")[:2]) in cleanlab_adapter.SUPPORTED


@pytest.mark.parametrize("version", ["2.10.0", "3.0.0", "2.8.1"])
def test_other_versions_are_refused_with_the_fix(version: str) -> None:
    with pytest.raises(
        cleanlab_adapter.UnsupportedCleanlab,
        match=rf"cleanlab {version} is not supported.*cleanlab>=2.9,<2.10",
    ):
        cleanlab_adapter.check_version(version)


def test_private_functions_exist_with_the_shapes_used() -> None:
    for name in cleanlab_adapter.private_names():
        module, _, attr = name.rpartition(".")
        assert hasattr(__import__(module, fromlist=[attr]), attr), name
    joint = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 10]])
    prune = cleanlab_adapter.prune_count_matrix(joint, frac_noise=1.0)
    assert prune.shape == (3, 3) and prune[1, 0] == 2 and prune[0, 1] == 1
    probs = np.array([[0.2, 0.8, 0.0], [0.9, 0.1, 0.0], [0.7, 0.3, 0.0]], dtype=np.float32)
    flags = cleanlab_adapter.prune_by_count(0, probs, prune[:, 0])
    assert flags.tolist() == [True, False, True]
    assert cleanlab_adapter.reduce_issues(probs, np.array([0, 0, 0])).tolist() == [
        False,
        True,
        True,
    ]
