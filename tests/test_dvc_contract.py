"""dvc.yaml declares what each stage reads, so DVC alone decides what re-runs.

Fast: every stage's deps name its module and every project module it imports (transitively, also
inside functions). Slow: every params key a stage's code reads while it runs (recorded on the real
pipeline of a demo slice) is one that dvc.yaml declares for that stage, and every path a params
value names is one of the stage's deps (a split's image root counts as tracked through the split's
manifest, which records each image's sha256; ingest, which writes it, is `always_changed`: DVC
never hashes the image folders).
"""

from __future__ import annotations

import ast
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, copy_project, run_in, stale_stages

STAGES = ROOT / "stages"


def module_file(name: str) -> Path | None:
    """The source file of a project module (`stages.method.votes` -> stages/method/votes.py)."""
    parts = name.split(".")
    if parts[0] != "stages":
        return None
    path = ROOT.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def direct_imports(name: str) -> set[str]:
    """The project modules `name` imports itself, wherever the import statement is."""
    found = set()
    tree = ast.parse(module_file(name).read_text())  # type: ignore[union-attr]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stages.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages"):
            for alias in node.names:
                inner = f"{node.module}.{alias.name}"
                found.add(inner if module_file(inner) else node.module)  # type: ignore[arg-type]
    return {m for m in found if module_file(m) is not None}


def project_imports(module: str) -> set[str]:
    """`stages.*` modules `module` imports, transitively, wherever the import statement is."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += direct_imports(name)
    return seen


def dependency_files(module: str) -> set[str]:
    """The source files a stage runs: its door and every library module it imports (a package's
    docstring-only `__init__.py` holds no code and is left out)."""
    files = {module_file(m).relative_to(ROOT).as_posix() for m in project_imports(module)}  # type: ignore[union-attr]
    return {f for f in files if not f.endswith("__init__.py") or f == "stages/__init__.py"} - {
        "stages/__init__.py"
    }


def stage_definitions() -> Iterator[tuple[str, str, list[str]]]:
    """(stage name, module, deps) for every stage of dvc.yaml (templated deps kept as text)."""
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        module = shlex.split(body["cmd"])[2]
        yield name, module, [d if isinstance(d, str) else next(iter(d)) for d in body["deps"]]


@pytest.mark.parametrize(
    "name, module, deps", list(stage_definitions()), ids=[s[0] for s in stage_definitions()]
)
def test_stage_deps_are_exactly_the_code_it_runs(name: str, module: str, deps: list[str]) -> None:
    assert len(set(deps)) == len(deps), f"dvc.yaml stage {name} lists a dep twice"
    code = {d for d in deps if d.startswith("stages/") and d.endswith(".py")}
    needed = dependency_files(module)
    assert sorted(needed - code) == [], f"dvc.yaml stage {name} lacks these deps"
    assert sorted(code - needed) == [], f"dvc.yaml stage {name} declares code it does not import"


def test_dvc_never_hashes_an_image_folder() -> None:
    """No stage declares a split root (or a folder of images) as a dep: a `dvc status` would walk
    every file under it (1.33M on ImageNet). Ingest is `always_changed` and records each image's
    sha256 in the manifest, which the other stages depend on."""
    splits = yaml.safe_load((ROOT / "params.yaml").read_text())["splits"]
    roots = {"${item.root}", "${item.split.root}"} | {entry["root"] for entry in splits.values()}
    for name, _module, deps in stage_definitions():
        assert not [d for d in deps if d in roots or "root}" in d], f"{name} depends on a root"
    assert always_changed("ingest@val")


DOORS = sorted(p.stem for p in STAGES.glob("*.py") if p.stem not in ("__init__", "cli"))


@pytest.mark.parametrize("door", DOORS)
def test_no_door_imports_another_door(door: str) -> None:
    others = {f"stages.{d}" for d in DOORS} - {f"stages.{door}"}
    assert sorted(direct_imports(f"stages.{door}") & others) == []


def test_library_never_imports_a_door() -> None:
    doors = {f"stages.{d}" for d in DOORS}
    library = sorted(p for p in STAGES.glob("*/*.py"))
    for path in library:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        assert sorted(direct_imports(name) & doors) == [], f"{path} imports a stage door"


class Recorder(dict):
    """A params mapping that records the dotted path of every value the code reads."""

    def __init__(self, data: dict, path: str, seen: dict[str, Any]) -> None:
        super().__init__(data)
        self._path, self._seen = path, seen

    def _key(self, key: Any) -> str:
        return f"{self._path}.{key}" if self._path else str(key)

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, dict):
            return Recorder(value, self._key(key), self._seen)
        self._seen[self._key(key)] = value
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        self._seen[self._key(key)] = default
        return default

    def __iter__(self) -> Iterator[Any]:
        # not dict's own iterator: dict(x) and {**x} use __getitem__
        return iter(list(super().keys()))

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(k, self[k]) for k in super().keys()]  # noqa: SIM118 (dict's own keys)

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[k] for k in super().keys()]  # noqa: SIM118 (dict's own keys)


def declared(lock: dict, stage: str) -> set[str]:
    return set((lock["stages"][stage].get("params") or {}).get("params.yaml", {}))


def covered(key: str, keys: set[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def inside(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def through_manifest(key: str, deps: list[str]) -> bool:
    """A split's image root is tracked through the split's manifest (it records every image's
    sha256), so a stage that depends on the manifest need not declare the root itself."""
    parts = key.split(".")
    return (
        len(parts) == 3
        and parts[0] == "splits"
        and parts[2] == "root"
        and inside(f"data/manifests/{parts[1]}.parquet", deps)
    )


def always_changed(stage: str) -> bool:
    """Whether a stage (e.g. `ingest@val`) is `always_changed` in dvc.yaml: DVC runs it on every
    repro and it checks the paths it reads itself (ingest: each image's size, mtime and sha256)."""
    definition = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage.split("@")[0]]
    return bool(definition.get("do", definition).get("always_changed"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("contract") / "project", 16)
    run_in(project, "dvc", "repro")
    return project


@pytest.mark.slow
def test_stages_read_only_declared_params_and_paths(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    import stages.contracts.params

    monkeypatch.chdir(built)
    lock = yaml.safe_load((built / "dvc.lock").read_text())
    raw = yaml.safe_load((built / "params.yaml").read_text())
    problems = []
    for stage, entry in lock["stages"].items():
        seen: dict[str, Any] = {}
        loader = lambda *_a, _seen=seen, **_k: Recorder(raw, "", _seen)  # noqa: E731
        argv = shlex.split(entry["cmd"])[3:]
        module = importlib.import_module(shlex.split(entry["cmd"])[2])
        monkeypatch.setattr(stages.contracts.params, "load_params", loader)
        for mod in [m for n, m in sys.modules.items() if n.startswith("stages.")]:
            if hasattr(mod, "load_params"):
                monkeypatch.setattr(mod, "load_params", loader)
        assert module.main(argv) == 0
        keys = declared(lock, stage)
        deps = [d["path"] for d in entry.get("deps", [])]
        for key, value in seen.items():
            if through_manifest(key, deps):
                continue
            if not covered(key, keys):
                problems.append(f"{stage} reads params {key} that dvc.yaml does not declare")
            if (
                isinstance(value, str)
                and value
                and (built / value).exists()
                and not inside(value, deps)
                and not always_changed(stage)
            ):
                problems.append(f"{stage} reads the path {value} ({key}) that is not a dep")
    assert not problems, "\n".join(sorted(set(problems)))
    assert stale_stages(built) == set()


@pytest.mark.slow
def test_adding_a_split_makes_only_its_own_stages_stale(built: Path) -> None:
    """Each stage depends on the files it reads, not on their folder: a new split's manifest in
    data/manifests leaves the retrain arms (26 GPU-hours at full scale) and every other split's
    stages up to date. Only publish and the duplicates groups, whose deps are whole folders (DVC
    cannot list a file per `publish.splits` entry or per split of a `duplicates.groups` entry),
    see the new manifest."""
    params_file, lock_file = built / "params.yaml", built / "dvc.lock"
    saved = params_file.read_text(), lock_file.read_text()
    raw = yaml.safe_load(saved[0])
    raw["splits"]["extra"] = {
        **raw["splits"]["val"],
        "limit": 4,
        "labels": "iterations/extra.parquet",
        "overrides": "data/overrides/extra.csv",
    }
    raw["vote"]["extra"], raw["decide"]["extra"] = raw["vote"]["val"], raw["decide"]["val"]
    (built / "data/overrides/extra.csv").write_text("image_id,action,new_label,note\n")
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        run_in(built, "dvc", "repro", "ingest@extra")
        stale = stale_stages(built)
    finally:
        params_file.write_text(saved[0])
        lock_file.write_text(saved[1])
        for path in ("data/overrides/extra.csv", "data/manifests/extra.parquet"):
            (built / path).unlink(missing_ok=True)
        (built / "metrics/ingest/extra.json").unlink(missing_ok=True)
    assert (built / "data/manifests/val.parquet").is_file()
    others = {name for name in stale if not name.endswith("@extra")}
    folders = {"publish"} | {f"duplicates@{group}" for group in raw["duplicates"]["groups"]}
    assert others == folders, f"adding split extra made these stale: {sorted(others)}"


def test_outputs_are_linked_into_the_dvc_cache_not_copied() -> None:
    """`.dvc/config` asks for link cache types first, copy last, so that outputs (26.6 GB of
    float32 predictions at 1.33M images) are not stored twice."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    kinds = [k.strip() for k in config["cache"]["type"].split(",")]
    assert kinds[-1] == "copy" and set(kinds[:-1]) == {"reflink", "hardlink", "symlink"}
