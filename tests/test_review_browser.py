"""The review page in a real browser: Debian's chromium driven by Selenium (chromedriver).

The demo pipeline runs under real `dvc repro` on a slice of the embedded demo, the review report is
built from its outputs, and `imagenet-clean review`'s server serves it. In the browser: filter by
action, relabel one image through the class-name autocomplete, then check the overrides file and
the next `decide` result. The same page opened as a file (no server) produces the same CSV rows.
`.ci/run` installs chromium and chromium-driver with apt-get when they are missing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import copy_project, run_in

from stages.contracts import formats
from stages.contracts.actions import ACTIONS
from stages.contracts.params import load_params
from stages.method.overrides import read_rows
from stages.reporting.server import ServeReviewConfig, make_server

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo slice reproduced by dvc through its review report (stage review@val)."""
    project = copy_project(tmp_path_factory.mktemp("review") / "project", 40)
    run_in(project, "dvc", "repro", "review@val")
    return project


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("Debian chromium + chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={tmp_path / 'profile'}",):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(tmp_path / "downloads"),
            "download.prompt_for_download": False,
        },
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def served(demo: Path, tmp_path: Path) -> Iterator[tuple[Any, Path, dict[str, Any]]]:
    """The demo's report served on a free port; the overrides file starts empty for each test."""
    params = load_params(demo / "params.yaml")
    path = demo / ServeReviewConfig.from_params(params, "val").overrides
    saved = path.read_bytes() if path.exists() else None
    server = make_server(ServeReviewConfig.from_params(params, "val"), port=0, root=demo)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server, path, params
    server.shutdown()
    server.server_close()
    if saved is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(saved)


def wait_ready(driver: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready') === '1'")
    )
    errors = driver.find_element("id", "message").text
    assert not errors, errors


def choose(driver: Any, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    driver.execute_script("document.body.removeAttribute('data-ready')")
    Select(driver.find_element("id", select_id)).select_by_value(value)
    wait_ready(driver)


def relabel_first(driver: Any, action: str, typed: str, note: str) -> str:
    """Filter by `action`, relabel the first card to the class typed; returns its image_id."""
    from selenium.webdriver.support.ui import WebDriverWait

    choose(driver, "f-action", action)
    cards = driver.find_elements("css selector", "article.card")
    assert cards and all(f"act-{action}" in c.get_attribute("class") for c in cards)
    card = cards[0]
    image_id = card.get_attribute("data-id")
    card.find_element("css selector", "input.relabel").send_keys(typed)
    card.find_element("css selector", "input.note").send_keys(note)
    card.find_element("css selector", "button[data-do=fix]").click()
    card_id = card.get_attribute("id")
    WebDriverWait(driver, 10).until(lambda d: "override: fix" in d.find_element("id", card_id).text)
    return image_id


def test_filter_relabel_writes_overrides_that_decide_applies(
    demo, served, browser, tmp_path
) -> None:
    from stages.decide import run_decide

    server, path, params = served
    browser.get(server.url)
    wait_ready(browser)
    assert "served: corrections are written to" in browser.find_element("id", "mode").text
    ledger = pd.read_parquet(demo / formats.ledger_path("val"))
    action = "fix" if (ledger["action"] == "fix").any() else "remove"
    image_id = relabel_first(browser, action, "1 goldfish", "a goldfish, checked by eye")
    browser.save_screenshot(str(tmp_path / "review.png"))
    assert read_rows(path) == [
        {
            "image_id": image_id,
            "action": "fix",
            "new_label": "1",
            "note": "a goldfish, checked by eye",
        }
    ]
    ledger_file = demo / formats.ledger_path("val")
    saved = ledger_file.read_bytes()
    try:
        counts = run_decide("val", params, root=demo)
        after = pd.read_parquet(ledger_file).set_index("image_id")
    finally:  # the other tests pick actions from the ledger the report was built from
        ledger_file.unlink()
        ledger_file.write_bytes(saved)
    assert (after.at[image_id, "action"], after.at[image_id, "new_label"]) == ("fix", 1)
    assert after.at[image_id, "override"]
    assert after.at[image_id, "reason"] == "override: a goldfish, checked by eye"
    assert sum(counts[a] for a in ACTIONS) == len(ledger)


def test_page_opened_as_a_file_offers_the_same_rows_as_csv(demo, served, browser, tmp_path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    server, path, _ = served
    ledger = pd.read_parquet(demo / formats.ledger_path("val"))
    action = "fix" if (ledger["action"] == "fix").any() else "remove"
    browser.get((demo / "data/review/val/index.html").as_uri())
    wait_ready(browser)
    assert "opened as a file" in browser.find_element("id", "mode").text
    image_id = relabel_first(browser, action, "goldfish", "same row")
    csv_text = browser.execute_script("return window.REVIEW.csvText()")
    browser.find_element("id", "tab-corrections").click()
    browser.find_element("id", "download-csv").click()
    download = tmp_path / "downloads/val-overrides.csv"
    WebDriverWait(browser, 10).until(lambda _: download.is_file())
    assert download.read_text() == csv_text
    browser.get(server.url)  # the same correction through the server writes the same bytes
    wait_ready(browser)
    assert relabel_first(browser, action, "goldfish", "same row") == image_id
    assert csv_text == path.read_text()
    browser.find_element("id", "tab-corrections").click()
    assert image_id in browser.find_element("id", "corrections-table").text


def test_class_pairs_view_lists_pairs_and_opens_their_images(demo, served, browser) -> None:
    server, _, _ = served
    browser.get(server.url)
    wait_ready(browser)
    browser.find_element("id", "tab-pairs").click()
    rows = browser.find_elements("css selector", "#pairs-table tr")
    assert len(rows) > 1
    browser.execute_script("document.body.removeAttribute('data-ready')")
    rows[1].find_element("css selector", "button.open-pair").click()
    wait_ready(browser)
    assert "pair " in browser.find_element("id", "f-pair").text
    assert browser.find_elements("css selector", "article.card")


def test_served_page_opens_any_image_with_a_thumbnail_drawn_on_demand(
    demo, served, browser
) -> None:
    """Beyond the round the report holds: the served page looks an image up by id; the server
    reads its record and draws its thumbnail, and its buttons write overrides as any card's."""
    from selenium.webdriver.support.ui import WebDriverWait

    server, path, _ = served
    ledger = pd.read_parquet(demo / formats.ledger_path("val"))
    image_id = str(ledger.loc[ledger["action"] == "keep", "image_id"].iloc[-1])
    browser.get(server.url)
    wait_ready(browser)
    assert browser.find_element("id", "lookup").is_displayed()
    browser.find_element("id", "lookup-id").send_keys(image_id + "\n")
    WebDriverWait(browser, 10).until(
        lambda d: d.find_elements("css selector", f"article.card[data-id='{image_id}']")
    )
    card = browser.find_element("css selector", f"article.card[data-id='{image_id}']")
    assert "looked up: not in this round" in card.text
    thumb = card.find_element("css selector", "img.thumb")
    assert "api/thumb/" in thumb.get_attribute("src")
    WebDriverWait(browser, 10).until(
        lambda _: browser.execute_script("return arguments[0].naturalWidth", thumb) > 0
    )
    card.find_element("css selector", "button[data-do=remove]").click()
    WebDriverWait(browser, 10).until(lambda _: "override: remove" in card.text)
    assert read_rows(path)[0]["image_id"] == image_id
    browser.find_element("id", "lookup-id").clear()
    browser.find_element("id", "lookup-id").send_keys("no-such-image\n")
    WebDriverWait(browser, 10).until(
        lambda d: "unknown image_id 'no-such-image'" in d.find_element("id", "message").text
    )


def test_class_names_in_the_top5_tables_are_shown_whole(demo, browser) -> None:
    """Every class name in the per-model top-5 tables is shown in full (wrapped, never cut to
    "Kerry blu…"): no name's text is wider than its box."""
    browser.get((demo / "data/review/val/index.html").as_uri())
    wait_ready(browser)
    names = browser.execute_script(
        "return Array.from(document.querySelectorAll('.top5 td .name')).map(function (e) {"
        " return [e.textContent, e.scrollWidth, e.clientWidth]; })"
    )
    assert len(names) > 100
    cut = [name for name, needed, shown in names if needed > shown]
    assert cut == [], f"class names cut in the top-5 tables: {cut[:10]}"
    assert max(len(name) for name, _, _ in names) > 12  # long names are there, and whole


def test_file_mode_merges_rows_by_the_servers_rules(demo, browser) -> None:
    from stages.reporting.server import Decision, RequestError, merge_rows

    decisions = {
        "a": Decision("keep", 3, 3, (8,)),
        "b": Decision("remove", 4, None, ()),
        "c": Decision("fix", 5, 6, (9,)),
    }
    steps = [
        ("a", "secondary", "7"),
        ("a", "fix", "8"),
        ("a", "secondary", ""),
        ("a", "secondary", "2"),
        ("a", "secondary", "2"),
        ("a", "secondary", "8"),
        ("a", "remove", ""),
        ("a", "secondary", "1"),
        ("b", "secondary", "1"),
        ("b", "keep", ""),
        ("b", "secondary", "4"),
        ("b", "secondary", "5"),
        ("c", "secondary", "6"),
        ("c", "secondary", "5"),
        ("c", "fix", "9"),
        ("c", "keep", ""),
        ("c", "secondary", "5"),
        ("c", "remove", ""),
        ("c", "fix", "1"),
    ]
    rows: list[dict[str, str]] = []
    expected = []
    for image_id, action, label in steps:
        try:
            rows = merge_rows(
                rows,
                [{"image_id": image_id, "action": action, "new_label": label, "note": "n"}],
                decisions=decisions,
            )
            expected.append(rows)
        except RequestError:
            expected.append("error")
    browser.get((demo / "data/review/val/index.html").as_uri())
    wait_ready(browser)
    got = browser.execute_script(
        """
        const decisions = {}, out = [];
        Object.entries(arguments[0]).forEach(([id, d]) => {
          decisions[id] = {action: d[0], label: d[1], new: d[2], sec: d[3]}; });
        let rows = [];
        for (const [id, action, label] of arguments[1]) {
          try {
            const row = {image_id: id, action: action, new_label: label, note: "n"};
            rows = window.REVIEW.mergeRows(rows, [row], decisions);
            out.push(rows);
          } catch (e) { out.push("error"); }
        }
        return out;""",
        {k: list(v) for k, v in decisions.items()},
        steps,
    )
    assert got == expected
    assert "error" in expected and len({str(e) for e in expected}) > 10


def test_every_fix_removal_and_secondary_label_of_the_demo_is_in_the_report(demo) -> None:
    from stages.reporting.report import read_data

    ledger = pd.read_parquet(demo / formats.ledger_path("val"))
    decided = ledger["action"].isin(["fix", "remove"]) | (ledger["secondary_labels"].map(len) > 0)
    folder = demo / "data/review/val"
    meta = read_data(folder / "data/meta.js")
    ids = {
        r["id"] for k in range(meta["chunks"]) for r in read_data(folder / f"data/chunk-{k:05d}.js")
    }
    assert decided.any() and set(ledger.loc[decided, "image_id"]) <= ids
    assert (
        meta["rows"] == len(ledger)
        and meta["models"] == load_params(demo / "params.yaml")["predict"]["models"]
    )


@pytest.fixture
def duplicates_split(tmp_path: Path, params: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Split `a` of constructed cases from real demo images (tests/dedup/cases.py: a byte copy, a
    lossless and a lossy re-encode... of four demo images; split `b` shares one of them under
    another label) run through the real embed and duplicates stages and decide's duplicates
    policy; its ledger, votes and predictions are synthetic (tests/reporting/test_report.py), its
    review report is built by the real review stage."""
    from conftest import DEMO_ROOT
    from test_report import write_split

    from stages import duplicates, embed
    from stages.method.duplicates import DuplicateEvidence, DuplicatePolicy, apply_duplicates
    from stages.review import run_review
    from stages.sources.layouts import Source
    from stages.sources.manifest import build_manifest
    from tests.dedup.cases import build_cases

    images = sorted((DEMO_ROOT / "ILSVRC/Data/CLS-LOC/val").glob("*.JPEG"))[:4]
    build_cases(images, tmp_path / "images", 1)
    for split in ("a", "b"):
        folder = tmp_path / "images" / split
        manifest, _ = build_manifest(Source(folder, "imagefolder"))
        formats.write_table(
            manifest, tmp_path / formats.manifest_path(split), schema=formats.MANIFEST_SCHEMA
        )
        params["splits"][split] = {"root": str(folder), "layout": "imagefolder"}
    params["duplicates"]["groups"] = {"ab": ["a", "b"]}
    params["predict"]["workers"] = 0
    for split in ("a", "b"):
        embed.run_embed(split, params, root=tmp_path)
    duplicates.run_duplicates("ab", params, root=tmp_path)
    models = tuple(params["predict"]["models"])
    synthetic = write_split(
        tmp_path,
        0,
        split="a",
        models=models,
        manifest=manifest_of(tmp_path, "a"),
        image_root=tmp_path / "images" / "a",
    )
    params["splits"]["a"] = synthetic["splits"]["a"]
    params["review"] = {**params["review"], **synthetic["review"]}
    params["decide"]["a"] = {"duplicates": {"group": "ab", "leak_from": ["b"]}}
    monkeypatch.chdir(tmp_path)
    evidence = DuplicateEvidence(
        pd.read_parquet(formats.duplicates_path("ab")),
        pd.read_parquet(formats.duplicate_issues_path("ab")),
        DuplicatePolicy.from_params(params, "a"),
    )
    ledger = apply_duplicates(pd.read_parquet(formats.ledger_path("a")), evidence, split="a")
    formats.write_table(ledger, formats.ledger_path("a"))
    run_review("a", params)
    return params


def manifest_of(root: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(root / formats.manifest_path(split))


def test_duplicates_view_shows_groups_side_by_side_and_writes_removals(
    duplicates_split, browser, tmp_path
) -> None:
    """The Duplicates view of a split with constructed copies: the byte copy's group shows the
    copies side by side (thumbnails, labels, kind and similarity, the leak's other split); its
    remove button writes the row to the overrides file through the server."""
    from selenium.webdriver.support.ui import WebDriverWait

    params = duplicates_split
    table = pd.read_parquet(formats.duplicates_path("ab"))
    copy = table[table["image_id"].str.startswith("byte_copy_")].iloc[0]
    group = table[table["group"] == copy["group"]]
    assert copy["kind"] == "exact" and len(group) >= 2
    config = ServeReviewConfig.from_params(params, "a")
    server = make_server(config, port=0, root=tmp_path)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        browser.get(server.url)
        wait_ready(browser)
        browser.find_element("id", "tab-duplicates").click()
        box = browser.find_element("css selector", f".dup-group[data-group='{copy['group']}']")
        assert "exact" in box.find_element("tag name", "h2").text
        members = box.find_elements("css selector", ".dup-member")
        assert {m.get_attribute("data-id") for m in members} == set(group["image_id"])
        own = [m for m in members if "other-split" not in m.get_attribute("class")]
        tops = {m.location["y"] for m in own}
        lefts = {m.location["x"] for m in own}
        assert len(tops) == 1 and len(lefts) == len(own) >= 2  # side by side, one row
        kinds = group.set_index("image_id")
        for member in own:
            found = kinds.loc[member.get_attribute("data-id")]
            shown = f"{found['kind']} · similarity {found['similarity']:.3f}"
            assert shown in member.text and "label " in member.text
            thumb = member.find_element("css selector", "img.thumb")
            WebDriverWait(browser, 10).until(
                lambda _, t=thumb: browser.execute_script("return arguments[0].naturalWidth", t)
            )
        name = formats.class_names()[int(copy["label"])].split(",")[0]
        assert f"{name} ({int(copy['label'])})" in box.text
        browser.save_screenshot(str(tmp_path / "duplicates.png"))
        target = next(m for m in own if m.get_attribute("data-id") == copy["image_id"])
        target.find_element("css selector", "button[data-do=remove]").click()
        WebDriverWait(browser, 10).until(lambda _: "override: remove" in target.text)
        assert read_rows(tmp_path / config.overrides) == [
            {
                "image_id": copy["image_id"],
                "action": "remove",
                "new_label": "",
                "note": f"review: duplicate group {copy['group']}: remove this copy",
            }
        ]
    finally:
        server.shutdown()
        server.server_close()


def test_duplicates_view_says_when_no_group_is_configured(split_root, browser) -> None:
    """A split without `decide.<split>.duplicates.group`: the page still loads and the
    Duplicates view says so."""
    from stages.review import run_review

    root, params = split_root
    assert "duplicates" not in params["decide"]["val"]
    run_review("val", params)
    browser.get((root / "data/review/val/index.html").as_uri())
    wait_ready(browser)
    browser.find_element("id", "tab-duplicates").click()
    assert "No duplicates group configured" in browser.find_element("id", "duplicates").text
    assert browser.find_element("id", "n-duplicates").text == "0"
