"""A published split built on 20 real demo images, shared by the tests of publish, card, hub and
shards: the real ingest manifest, a ledger and cleaned split written with explicit pyarrow schemas
matching the contracts, and the metrics evaluate writes. Everything loads through the installed
`datasets` offline, with its cache in a tmp dir. The Hub itself cannot be reached from tests, so
push tests replace HfApi's network methods with a recording fake (`RecordingHub`).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
import yaml
from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants

from stages.contracts import formats
from stages.hub.publishing import HubFolder, SplitInputs, build_hub_folder

ROWS = 20
KEEP, FIX, REMOVE, SKIP, MERGED = range(12), range(12, 15), range(15, 18), 18, 19
EXEMPTED = 5
ITERATION = 1
TOKEN = "hf_publishTestSecretToken0123456789"
SECONDARY = {3: [5, 7], 12: [2]}  # image index -> secondary labels (a keep and a fix)
DUPLICATES = {1: 4, 13: 4, 16: 9}  # image index -> duplicate group (a keep, a fix, a removal)
CLEAN_SCHEMA = formats.CLEAN_SCHEMA
LEDGER_SCHEMA = formats.LEDGER_FULL_SCHEMA
METRICS = {
    "counts": {"keep": 13, "fix": 3, "remove": 3, "skip": 1, "merge": 1},
    "models": {  # evaluate's shape, then the other nesting (the card reads both)
        "mobilenetv1_025": {
            "cl_label_errors": 4,
            "original": {"top1": 41.5, "top5": 66.0, "rows": 19},
            "cleaned": {"top1": 44.25, "top5": 69.75, "rows": 16},
        },
        "mobilenetv1_050": {
            "top1": {"original": 50.0, "cleaned": 52.0},
            "top5": {"original": 70.0, "cleaned": 72.0},
        },
    },
    "reference": {"agreement_before": 81.25, "agreement_after": 87.5, "fix_precision": 66.7},
    "evidence": {
        "noise": 0.1,
        "expected_label_accuracy_before": 0.9411,
        "expected_label_accuracy_after": 0.9644,
    },
}


def ledger_rows(manifest: list[dict], wnids: list[str]) -> list[dict]:
    keyboard = wnids.index("n03085013")  # Table A.1: typewriter keyboard -> computer keyboard
    rows = []
    for index, item in enumerate(manifest):
        label = item["label"]
        action, new_label, reason = "keep", label, "kept: no vote against the label"
        candidates, misses, exempted = [], 0, False
        if index in FIX:
            action, new_label, reason = "fix", (label + 1) % 1000, "fixed: 3 candidates agree"
            candidates = [(label + 1) % 1000] * 3
        elif index in REMOVE:
            action, new_label, reason = "remove", None, "removed: 3 unique candidates"
            candidates, misses = [1, 2, 3], 4
        elif index == SKIP:
            action, new_label, reason = "skip", None, "skip: unreadable image: test"
        elif index == EXEMPTED:
            misses, exempted, reason = 4, True, "kept: exempted by CAMs"
        elif index == MERGED:
            new_label, reason = keyboard, "kept; merged (Table A.1)"
        rows.append(
            {
                "image_id": item["image_id"],
                "label": label,
                "action": action,
                "new_label": new_label,
                "cl_candidates": candidates,
                "top5_misses": misses,
                "exempted": exempted,
                "reason": reason,
                "secondary_labels": SECONDARY.get(index, []),
                "duplicate_group": DUPLICATES.get(index),
                "original_label": label,
                "iteration": ITERATION,
                "merged": index == MERGED,
                "override": False,
                "exemptions": int(exempted),
            }
        )
    return rows


def clean_rows(manifest: list[dict], ledger: list[dict], wnids: list[str]) -> list[dict]:
    rows = [
        {
            "image_id": item["image_id"],
            "path": item["path"],
            "label": decided["new_label"],
            "original_label": item["label"],
            "wnid": wnids[decided["new_label"]],
            "action": decided["action"],
            "placeholder": False,
            "merged": decided["merged"],
            "boxes": item["boxes"],
            "width": item["width"],
            "height": item["height"],
            "iteration": ITERATION,
            "secondary_labels": decided["secondary_labels"],
        }
        for item, decided in zip(manifest, ledger, strict=True)
        if decided["action"] in ("keep", "fix")
    ]
    for wnid in ("n04505470", "n04264628"):  # classes emptied by the merges
        rows.append(
            {
                "image_id": f"placeholder_{wnid}",
                "path": None,
                "label": wnids.index(wnid),
                "original_label": None,
                "wnid": wnid,
                "action": "placeholder",
                "placeholder": True,
                "merged": False,
                "boxes": [],
                "width": 224,
                "height": 224,
                "iteration": ITERATION,
                "secondary_labels": [],
            }
        )
    return rows


@pytest.fixture
def inputs(tmp_path: Path, small_manifest, demo_root: Path) -> SplitInputs:
    """A split `val` of 20 real demo images: manifest, ledger, cleaned split and metrics."""
    manifest = [dict(row) for row in small_manifest.head(ROWS).to_dict("records")]
    for row in manifest:
        row["boxes"] = [list(map(int, box)) for box in row["boxes"]]
    manifest[SKIP]["skip_reason"] = "unreadable image: test"
    wnids = formats.class_wnids()
    ledger = ledger_rows(manifest, wnids)
    split = SplitInputs(
        "val",
        tmp_path / "manifests/val.parquet",
        tmp_path / "decisions/val.parquet",
        tmp_path / "clean/val.parquet",
        demo_root,
        tmp_path / "metrics/val.json",
    )
    formats.write_table(
        pa.Table.from_pylist(manifest, schema=formats.MANIFEST_SCHEMA), split.manifest
    )
    formats.write_table(pa.Table.from_pylist(ledger, schema=LEDGER_SCHEMA), split.ledger)
    formats.write_table(
        pa.Table.from_pylist(clean_rows(manifest, ledger, wnids), schema=CLEAN_SCHEMA), split.clean
    )
    formats.write_json(METRICS, split.metrics)
    return split


@pytest.fixture
def cache(tmp_path: Path) -> str:
    """`datasets` cache for this test only (never ~/.cache)."""
    return str(tmp_path / "hf-cache")


def build(inputs: SplitInputs, out: Path, **options) -> HubFolder:
    options = {
        "mode": "labels",
        "include_placeholders": False,
        "max_shard_bytes": 500_000_000,
        **options,
    }
    return build_hub_folder([inputs], out=out, **options)


def front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


class RecordingHub:
    """Stands in for the Hub, which tests cannot reach: records HfApi's network calls."""

    def __init__(self, tags: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.tags = tags

    def install(self, monkeypatch: pytest.MonkeyPatch) -> RecordingHub:
        for name in ("create_repo", "list_repo_refs", "upload_folder", "create_tag"):
            monkeypatch.setattr(HfApi, name, getattr(self, f"fake_{name}"))
        return self

    def fake_create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def fake_list_repo_refs(self, *args, **kwargs):
        self.calls.append(("list_repo_refs", args, kwargs))
        return SimpleNamespace(tags=[SimpleNamespace(name=tag) for tag in self.tags], branches=[])

    def fake_upload_folder(self, *args, **kwargs):
        folder = Path(kwargs["folder_path"])
        kwargs["files"] = sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
        )
        self.calls.append(("upload_folder", args, kwargs))
        return SimpleNamespace(oid="0123abcd" * 5, commit_url="https://hub.invalid/commit")

    def fake_create_tag(self, *args, **kwargs):
        self.calls.append(("create_tag", args, kwargs))


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch offline mode off (the fake stands in for the network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)


def project_dir(tmp_path: Path, inputs: SplitInputs, params: dict, **publish) -> Path:
    """A project folder laid out as the stage expects (data/..., metrics/, params.yaml)."""
    project = tmp_path / "project"
    for source, target in [
        (inputs.manifest, formats.manifest_path("val")),
        (inputs.ledger, formats.ledger_path("val")),
        (inputs.clean, formats.clean_path("val")),
        (inputs.metrics, formats.metrics_path("val")),
    ]:
        (project / target).parent.mkdir(parents=True, exist_ok=True)
        (project / target).write_bytes(source.read_bytes())
    params["splits"]["val"]["root"] = str(inputs.root)
    params["publish"].update(publish)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project
