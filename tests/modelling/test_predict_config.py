"""stages.modelling.predict_config: the `predict:` section is validated at entry, naming the bad
key and the fix; a split's config resolves its root, models and views."""

from __future__ import annotations

import numpy as np
import pytest

from stages.contracts.errors import ConfigError
from stages.modelling.predict_config import DTYPES, PredictConfig, PredictOptions


def test_the_section_gives_typed_options(params: dict) -> None:
    params["predict"].update(embeddings=True, threads=1, dtype="float16")
    options = PredictOptions.from_params(params)
    assert options.embeddings is True and options.threads == 1
    assert DTYPES[options.dtype] is np.float16


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"embeddings": "yes"}, r"`predict.embeddings` must be true or false, got 'yes'"),
        ({"embedings": True}, r"unknown key 'embedings'; did you mean 'embeddings'"),
        ({"batch_size": 0}, r"`predict.batch_size` must be an int >= 1, got 0"),
    ],
)
def test_bad_options_name_the_key(params: dict, change: dict, match: str) -> None:
    params["predict"].update(change)
    with pytest.raises(ConfigError, match=match):
        PredictOptions.from_params(params)


def test_a_split_config_resolves_root_models_and_views(params: dict) -> None:
    config = PredictConfig.from_params(params, "val", ["mobilenetv1_025"], ["full", "hflip"])
    assert config.root == params["splits"]["val"]["root"]
    assert [s.name for s in config.specs] == ["mobilenetv1_025"]
    assert config.views == ("full", "hflip")
    with pytest.raises(ConfigError, match=r"views \['full', 'full'\]: give distinct names"):
        PredictConfig.from_params(params, "val", ["mobilenetv1_025"], ["full", "full"])
