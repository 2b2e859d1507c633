"""annotations: every malformed XML, CSV row, synset list or ground-truth line is named (file and
row) instead of a bare Python error, and a problem of one image stays that image's problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.contracts.errors import InputError, MissingInputError, UserError
from stages.contracts.formats import class_wnids
from stages.sources.annotations import (
    devkit_synsets,
    ground_truth,
    kaggle_solution,
    parse_voc_xml,
    read_box_xml,
)

WNID = "n01440764"


def voc(objects: str, size: str = "<size><width>100</width><height>80</height></size>") -> str:
    return f"<annotation>{size}{objects}</annotation>"


def box(
    xmin: str = "1", ymin: str = "2", xmax: str = "30", ymax: str = "40", name: str = WNID
) -> str:
    return (
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def test_good_xml_reads_objects_and_size(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(voc(box() + box("5.7", "6", "7", "8", "n01443537")))
    assert parse_voc_xml(tmp_path / "a.xml") == (
        [(WNID, [1, 2, 30, 40]), ("n01443537", [5, 6, 7, 8])],
        (100, 80),
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (voc(box(xmin="abc")), r"object 1 \(n01440764\) <xmin> is 'abc', not a number"),
        (
            voc(box(ymax="")),
            r"object 1 \(n01440764\) <ymax> is missing",
        ),  # was: cannot convert float NaN
        (voc(box(xmax="nan")), r"object 1 \(n01440764\) <xmax> is 'nan', not a finite number"),
        (
            voc(box(), size="<size><width>abc</width><height>8</height></size>"),
            r"<size><width> is 'abc', not a number",
        ),  # was: invalid literal for int()
        (voc(box(name="")), r"object 1 has no <name>"),
        ("<annotation><object>", r"not valid XML"),
    ],
)
def test_malformed_xml_names_the_file_and_the_object(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(InputError, match=f"{path}: {message}"):
        parse_voc_xml(path)
    assert read_box_xml(path, WNID)["skip_reason"].startswith(f"bad annotation: {path}: ")


def test_box_xml_gives_boxes_of_the_label_and_the_wnids_it_names(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(voc(box() + box("5", "6", "7", "8", "n01443537")))
    fields = read_box_xml(tmp_path / "a.xml", WNID)
    assert fields["boxes"] == [[1, 2, 30, 40]] and fields["annotated"] == (WNID, "n01443537")
    assert read_box_xml(tmp_path / "missing.xml", WNID) == {} and read_box_xml(None, WNID) == {}


def solution(tmp_path: Path, body: str, header: str = "ImageId,PredictionString") -> Path:
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text(header + "\n" + body)
    return path


def test_bad_csv_rows_become_reasons_naming_file_and_line(tmp_path: Path) -> None:
    path = solution(
        tmp_path,
        f"good,{WNID} 1 2 3 4\n"
        f"letters,{WNID} 1 2 abc 4\n"  # was: invalid literal for int()
        "nothing\n"  # was: 'NoneType' has no attribute 'split'
        f"short,{WNID} 1 2\n"
        f"good,{WNID} 5 6 7 8\n"
        f",{WNID} 1 2 3 4\n",
    )
    rows = kaggle_solution(path)
    assert rows["good"] == f"bad annotation: {path}: good is on line 2 and again on {path} line 6"
    assert rows["letters"] == (
        f"bad annotation: {path} line 3: {WNID} coordinate is 'abc', not a number"
    )
    assert rows["nothing"].startswith(
        f"bad annotation: {path} line 4: PredictionString None is not"
    )
    assert rows["short"].startswith(f"bad annotation: {path} line 5: PredictionString")
    assert "" not in rows


def test_csv_with_the_wrong_header_is_an_input_error(tmp_path: Path) -> None:
    path = solution(tmp_path, "x,y\n", header="id,labels")
    with pytest.raises(InputError, match=f"{path}: the header must be 'ImageId,PredictionString'"):
        kaggle_solution(path)
    path.write_bytes(b"ImageId,PredictionString\n\xff\xfe,z\n")
    with pytest.raises(UserError, match="not a readable CSV"):
        kaggle_solution(path)


def test_synset_list_must_be_1000_distinct_known_wnids(tmp_path: Path) -> None:
    wnids = class_wnids()
    path = tmp_path / "synsets.txt"
    path.write_text("\n".join(wnids[:-1]) + "\n")
    with pytest.raises(
        InputError, match=r"synsets.txt: expected the 1000 distinct .* got 999 lines"
    ):
        devkit_synsets(path)
    path.write_text("\n".join(wnids[:-1] + ["n99999999"]) + "\n")
    with pytest.raises(InputError, match="unknown e.g. 'n99999999'"):
        devkit_synsets(path)
    with pytest.raises(MissingInputError, match="synset file .*nope.mat does not exist"):
        devkit_synsets(tmp_path / "nope.mat")
    (tmp_path / "broken.mat").write_bytes(b"not a mat file")
    with pytest.raises(InputError, match="broken.mat: not a devkit meta.mat"):
        devkit_synsets(tmp_path / "broken.mat")


def test_ground_truth_lines_that_are_not_ids_are_reasons(tmp_path: Path) -> None:
    path = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    path.write_text("65\nabc\n0\n1000\n\n")
    ids = ground_truth(path, 1000)
    assert ids[0] == 65 and ids[3] == 1000 and len(ids) == 4
    assert ids[1] == f"bad annotation: {path} line 2: 'abc' is not an ILSVRC2012_ID 1..1000"
    assert ids[2].startswith(f"bad annotation: {path} line 3: '0'")
