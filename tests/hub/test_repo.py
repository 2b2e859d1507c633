"""hub: pushing a built folder (the Hub cannot be reached from tests: `RecordingHub` stands in
for HfApi's network methods and records the calls)."""

from __future__ import annotations

import logging

import pytest
from hub_inputs import TOKEN, RecordingHub, build
from huggingface_hub import HfApi

from stages.hub.repo import PushError, push


def test_push_uploads_one_commit_and_tags_it_without_writing_the_token(
    inputs, tmp_path, monkeypatch, online, caplog
) -> None:
    hub = RecordingHub().install(monkeypatch)
    built = build(inputs, tmp_path / "hub")
    caplog.set_level(logging.DEBUG)
    result = push(
        built.path, repo_id="someone/imagenet-clean", iteration=built.iteration, token=TOKEN
    )
    assert [call[0] for call in hub.calls] == [
        "create_repo",
        "list_repo_refs",
        "upload_folder",
        "create_tag",
    ]
    _, args, kwargs = hub.calls[2]
    assert kwargs["repo_id"] == "someone/imagenet-clean" and kwargs["repo_type"] == "dataset"
    assert kwargs["token"] == TOKEN and kwargs["files"] == list(built.files)
    assert "README.md" in kwargs["files"] and kwargs["delete_patterns"] == ["data/**"]
    _, args, kwargs = hub.calls[3]
    assert args == ("someone/imagenet-clean",) and kwargs["tag"] == "iteration-1"
    assert kwargs["revision"] == "0123abcd" * 5 and kwargs["repo_type"] == "dataset"
    assert result.commit == "0123abcd" * 5 and result.tag == "iteration-1"
    assert TOKEN not in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_refuses_a_published_iteration_before_uploading(
    inputs, tmp_path, monkeypatch, online
) -> None:
    hub = RecordingHub(tags=("iteration-0", "iteration-1")).install(monkeypatch)
    built = build(inputs, tmp_path / "hub")
    with pytest.raises(PushError, match="already has tag iteration-1.*nothing was uploaded"):
        push(built.path, repo_id="someone/imagenet-clean", iteration=1, token=TOKEN)
    assert "upload_folder" not in [call[0] for call in hub.calls]


def test_push_names_the_commit_when_tagging_fails(inputs, tmp_path, monkeypatch, online) -> None:
    hub = RecordingHub().install(monkeypatch)

    def refuse(*args, **kwargs):
        raise OSError("tagging refused")

    monkeypatch.setattr(HfApi, "create_tag", refuse)
    built = build(inputs, tmp_path / "hub")
    with pytest.raises(
        PushError,
        match=f"uploaded commit {'0123abcd' * 5} .* could not tag it "
        f"iteration-1 \\(OSError\\); tag it with HfApi",
    ):
        push(built.path, repo_id="someone/imagenet-clean", iteration=1, token=TOKEN)
    assert [call[0] for call in hub.calls] == ["create_repo", "list_repo_refs", "upload_folder"]


def test_push_offline_fails_cleanly(inputs, tmp_path, monkeypatch) -> None:
    hub = RecordingHub().install(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    built = build(inputs, tmp_path / "hub")
    with pytest.raises(
        PushError, match="offline mode is on \\(HF_HUB_OFFLINE=1\\).*nothing was uploaded"
    ):
        push(built.path, repo_id="someone/imagenet-clean", iteration=1, token=TOKEN)
    assert hub.calls == []


def test_push_without_token_fails_cleanly(inputs, tmp_path, monkeypatch, online) -> None:
    hub = RecordingHub().install(monkeypatch)
    built = build(inputs, tmp_path / "hub")
    with pytest.raises(PushError, match="no token. Export HF_TOKEN"):
        push(built.path, repo_id="someone/imagenet-clean", iteration=1, token=None)
    assert hub.calls == []


def test_dry_run_lists_the_upload_and_touches_nothing(
    inputs, tmp_path, monkeypatch, caplog
) -> None:
    hub = RecordingHub().install(monkeypatch)
    built = build(inputs, tmp_path / "hub")
    caplog.set_level(logging.INFO, logger="stages.hub.repo")
    result = push(
        built.path, repo_id="someone/imagenet-clean", iteration=1, token=None, dry_run=True
    )
    assert hub.calls == [] and result.commit is None and result.dry_run
    assert dict(result.files)["README.md"] == (built.path / "README.md").stat().st_size
    assert "would upload README.md" in caplog.text
    assert "to dataset someone/imagenet-clean, tagged iteration-1; nothing uploaded" in caplog.text
