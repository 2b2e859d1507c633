"""stages.hub.publishing: moved from test_publish.py."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from hub_inputs import (
    SplitInputs,
    build,
)

from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.hub.publishing import PublishOptions, build_hub_folder


def test_bad_options_and_inputs_are_named(inputs, tmp_path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        build(inputs, tmp_path / "hub", mode="pixels")
    with pytest.raises(ValueError, match="max_shard_bytes must be a positive int"):
        build(inputs, tmp_path / "hub", max_shard_bytes=0)
    with pytest.raises(
        ConfigError,
        match="max_shard_bytes=50000 leaves no room for rows: every "
        "default shard takes [0-9]+ bytes",
    ):
        build(inputs, tmp_path / "hub", max_shard_bytes=50_000)
    renamed = SplitInputs("val-v2", inputs.manifest, inputs.ledger, inputs.clean, inputs.root)
    with pytest.raises(ConfigError, match="not a valid Hub split name"):
        build_hub_folder([renamed], out=tmp_path / "hub")
    pq.write_table(pq.read_table(inputs.manifest).slice(1), inputs.manifest)
    with pytest.raises(InputError, match="does not align with manifest"):
        build(inputs, tmp_path / "hub")
    with pytest.raises(
        ConfigError, match="`publish.mode` must be one of labels, images, got 'pixels'"
    ):
        PublishOptions(mode="pixels")


def test_images_mode_names_a_missing_image(inputs, tmp_path) -> None:
    moved = SplitInputs("val", inputs.manifest, inputs.ledger, inputs.clean, tmp_path / "nowhere")
    with pytest.raises(MissingInputError, match="not found under .*nowhere.*splits.<split>.root"):
        build_hub_folder([moved], mode="images", out=tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_publish_config_is_checked_like_every_stage() -> None:
    with pytest.raises(
        ConfigError, match="`publish` has an unknown key 'privat'; did you mean 'private'"
    ):
        PublishOptions.from_params({"publish": {"splits": ["val"], "privat": True}})
    with pytest.raises(ConfigError, match="`publish.push` must be true or false, got 'yes'"):
        PublishOptions.from_params({"publish": {"push": "yes"}})
    with pytest.raises(ConfigError, match="`publish.splits` must be a non-empty list of distinct"):
        PublishOptions.from_params({"publish": {"splits": ["val", "val"]}})
