"""The documentation: README as a short front door, docs/ as a site that builds offline and
cannot go stale (the layout page is generated from the tree, README's links land on real pages)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250


def test_layout_page_is_generated_from_the_tree() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "layout.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    committed = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    assert committed == result.stdout, (
        "docs/layout.md is stale: run `python docs/layout.py > docs/layout.md`"
    )


def test_layout_page_names_every_module() -> None:
    text = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    modules = [
        p
        for p in (ROOT / "stages").rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    ]
    missing = [
        p.relative_to(ROOT).as_posix()
        for p in modules
        if f"`{p.relative_to(ROOT).as_posix()}`" not in text
    ]
    assert not missing, f"docs/layout.md misses {missing}"


def readme_doc_links(readme: str) -> list[tuple[str, str]]:
    """(page, anchor) of every Markdown link from README into docs/."""
    links = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        path, _, anchor = target.partition("#")
        if path.startswith("docs/"):
            links.append((unquote(path[len("docs/") :]), anchor))
    return links


def test_readme_is_a_short_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail into docs/"
    )
    assert readme_doc_links(readme), "README.md links to no docs/ page"


def test_docs_build_offline_and_readme_links_land(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        "NO_PROXY": "*",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(site),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"

    pages = sorted(site.glob("*.html"))
    assert (site / "index.html").is_file() and len(pages) > 10
    for page in pages:
        html = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="((?:https?:)?//[^"]+)"', html)
        assert not remote, f"{page.name} loads {remote} from the network"

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page, anchor in readme_doc_links(readme):
        source = ROOT / "docs" / page
        assert source.is_file(), f"README links to docs/{page}, which does not exist"
        if not page.endswith(".md"):
            continue
        built = site / (page[: -len(".md")] + ".html")
        assert built.is_file(), f"docs/{page} is not part of the built site (mkdocs.yml nav?)"
        if anchor:
            html = built.read_text(encoding="utf-8")
            assert f'id="{anchor}"' in html, (
                f"README links to docs/{page}#{anchor}, but that page has no such heading"
            )


INTEGRATION = {
    "test_docs",
    "test_dvc_contract",
    "test_errors",
    "test_hermetic",
    "test_pipeline",
    "test_pipeline_ingest",
    "test_review_browser",
}
"""Top-level test files of the whole pipeline rather than of one module."""


def test_tests_mirror_the_module_tree() -> None:
    """Every module `stages/<package>/<name>.py` has `tests/<package>/test_<name>.py`, every door
    `stages/<name>.py` has `tests/test_<name>.py`, and no test file names a module that is gone."""
    stages = ROOT / "stages"
    modules = {
        p.relative_to(stages).with_suffix("")
        for p in stages.rglob("*.py")
        if p.name != "__init__.py" and p.stem != "cli"
    }
    wanted = {m.with_name(f"test_{m.name}") for m in modules} | {Path("test_cli")}
    found = {
        p.relative_to(ROOT / "tests").with_suffix("") for p in (ROOT / "tests").rglob("test_*.py")
    }
    assert sorted(map(str, wanted - found)) == []
    assert sorted(map(str, found - wanted - {Path(n) for n in INTEGRATION})) == []
