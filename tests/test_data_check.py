"""`cebench data check` on a generated corpus of bad inputs: every problem is found and names its file; a clean
root passes. Property tests: the annotation parsers only ever raise ValueError naming the file; mask generators
stay within their coverage bounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from transfer.data_check import check_dataset, detect_format, main
from transfer.segmentation_data import write_label_png


def _voc(root: Path, n: int = 6) -> Path:
    for d in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    ids = [f"{i:03d}" for i in range(n)]
    for i in ids:
        Image.new("RGB", (40, 30), (90, 120, 150)).save(root / "JPEGImages" / f"{i}.jpg")
        (root / "Annotations" / f"{i}.xml").write_text(
            "<annotation><size><width>40</width><height>30</height></size><object><name>cat</name>"
            "<difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>25</ymax></bndbox>"
            "</object></annotation>")
        write_label_png(root / "SegmentationClass" / f"{i}.png", np.ones((30, 40), np.uint8))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets" / "Segmentation" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root


def test_a_clean_voc_root_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _voc(tmp_path / "voc")
    assert detect_format(root) == "voc"
    assert main(["check", str(root), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "0 problem(s)" in out and "split Main/trainval: 6 image(s)" in out and "cat 6" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] and report["images_checked"] == 6 and report["image_sizes"]["median"] == [40, 30]
    # an annotation without objects alone: exit 0 with a warning; 1 when the task needs objects
    (root / "Annotations" / f"{sorted(p.stem for p in (root / 'Annotations').glob('*.xml'))[0]}.xml").write_text(
        "<annotation></annotation>")
    assert main(["check", str(root), "--json", str(tmp_path / "r.json")]) == 0
    assert "1 warning(s) (not problems):" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert main(["check", str(root), "--require-objects"]) == 1


def test_every_bad_input_of_the_corpus_is_reported_with_its_file(tmp_path: Path, capsys) -> None:
    root = _voc(tmp_path / "voc", n=12)
    jpg, ann, seg = root / "JPEGImages", root / "Annotations", root / "SegmentationClass"
    (jpg / "000.jpg").write_bytes(b"")  # empty file
    data = (jpg / "001.jpg").read_bytes()
    (jpg / "001.jpg").write_bytes(data[: len(data) // 2])  # truncated
    Image.new("RGB", (3000, 3000)).save(jpg / "002.jpg")  # over the pixel limit given below
    (ann / "003.xml").write_text("<annotation><object><name>cat</name>")  # malformed XML
    (ann / "004.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>30</xmin><ymin>3</ymin>"
                                 "<xmax>20</xmax><ymax>25</ymax></bndbox></object></annotation>")  # inverted box
    (ann / "005.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
                                 "<xmax>90</xmax><ymax>25</ymax></bndbox></object></annotation>")  # outside
    (ann / "006.xml").write_text("<annotation><object><name>zebra</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
                                 "<xmax>9</xmax><ymax>25</ymax></bndbox></object></annotation>")  # unknown class
    (ann / "007.xml").write_text("<annotation></annotation>")  # no boxes
    write_label_png(seg / "008.png", np.ones((29, 40), np.uint8))  # wrong size
    stray = np.ones((30, 40), np.uint8)
    stray[0, 0] = 9
    write_label_png(seg / "009.png", stray)  # stray value
    (jpg / "010.jpg").unlink()  # listed, missing
    Image.new("CMYK", (40, 30)).save(jpg / "011.jpg")  # CMYK: decodes fine, not a problem
    # a split list with a path-traversal id and a duplicate: reported, and every other problem still is
    (root / "ImageSets" / "Main" / "test.txt").write_text("../etc/passwd\n000\n000\n")
    assert main(["check", str(root), "--max-pixels", "1000000"]) == 1
    out = capsys.readouterr().out
    expected = {"000.jpg": "", "001.jpg": "", "002.jpg": "exceeds the limit", "003.xml": "malformed XML",
                "004.xml": "", "005.xml": "outside the 40x30 image", "006.xml": "unknown class 'zebra'",
                "008.png": "label map is 40x29", "009.png": "label value(s) [9]",
                "010.jpg": "missing"}
    problems = [line for line in out[:out.index("warning(s)")].splitlines() if line.startswith("  /")]
    for name, words in expected.items():
        assert any(name in p and words in p for p in problems), (name, problems)
    assert not any("011.jpg" in p for p in problems)
    # an image without objects: a warning, listed apart, not counted among the problems
    assert not any("007.xml" in p for p in problems)
    warnings = out[out.index("warning(s) (not problems):"):]
    assert "007.xml: no <object>" in warnings and len(check_dataset(root).warnings) == 1
    # ... unless the task needs objects
    assert any("007.xml: no <object> (detection needs objects)" in p
               for p in check_dataset(root, require_objects=True).problems)
    assert any("test.txt:1: invalid image id '../etc/passwd'" in p for p in problems)
    assert any("test.txt:3: duplicate image id '000'" in p for p in problems)
    # bad lists: a duplicate id, a path-traversal id
    (root / "ImageSets" / "Main" / "bad.txt").write_text("000\n000\n")
    assert any("duplicate image id" in p for p in check_dataset(root).problems)
    (root / "ImageSets" / "Main" / "bad.txt").write_text("../../etc/passwd\n")
    assert any("invalid image id" in p for p in check_dataset(root).problems)


def test_coco_and_folders(tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val").mkdir()
    Image.new("RGB", (20, 10)).save(coco / "val" / "a.jpg")
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 12}],
           "categories": [{"id": 3, "name": "cat"}],
           "annotations": [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [15, 2, 10, 4], "area": 40,
                            "iscrowd": 0}]}
    (coco / "annotations" / "instances_val.json").write_text(json.dumps(doc))
    report = check_dataset(coco)
    assert report.format == "coco" and report.splits == {"val": 1} and report.classes["cat"] == 1
    assert any("is 20x10 but the JSON says 20x12" in p for p in report.problems)
    assert any("annotation 5: bbox [15, 2, 10, 4]" in p for p in report.problems)
    doc["annotations"][0]["image_id"] = 99  # dangling
    (coco / "annotations" / "instances_val.json").write_text(json.dumps(doc))
    assert any("unknown image id 99" in p for p in check_dataset(coco).problems)

    folder = tmp_path / "imf"
    for c in ("a", "b"):
        (folder / "train" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "train" / c / "x.png")
    (folder / "train" / "b" / "y.png").write_bytes(b"\x89PNG garbage")
    report = check_dataset(folder)
    assert report.format == "imagefolder" and report.classes == {"a": 1, "b": 2}
    assert len(report.problems) == 1 and "y.png" in report.problems[0]
    flat = tmp_path / "flat"
    flat.mkdir()
    assert check_dataset(flat, "folder").problems == [f"{flat}: no image files (.bmp, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp)"]


_XML_PIECES = st.sampled_from(["<annotation>", "</annotation>", "<object>", "</object>", "<name>cat</name>",
                               "<name></name>", "<difficult>1</difficult>", "<difficult>x</difficult>",
                               "<bndbox>", "</bndbox>", "<xmin>3</xmin>", "<xmin>-1e9</xmin>", "<ymin>nan</ymin>",
                               "<xmax>10</xmax>", "<ymax>7</ymax>", "<ymax></ymax>", "garbage", "<"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(_XML_PIECES, max_size=14))
def test_annotation_parsers_fail_only_with_a_named_value_error(pieces: list[str], tmp_path: Path) -> None:
    from transfer.detection_eval import read_boxes
    from transfer.voc import read_objects

    path = tmp_path / "a.xml"
    path.write_text("".join(pieces))
    for parse in (read_objects, read_boxes):
        try:
            parse(path)
        except ValueError as exc:
            assert str(path) in str(exc)


@settings(max_examples=40, deadline=None)
@given(size=st.sampled_from([32, 48, 64, 96]), kind=st.sampled_from(["central", "block", "region"]),
       max_coverage=st.sampled_from([0.1, 0.25, 0.4]), seed=st.integers(0, 10_000))
def test_masks_cover_what_their_settings_promise(size: int, kind: str, max_coverage: float, seed: int) -> None:
    import torch

    from pretext.masks import build_mask_generator, mask_coverage

    gen = build_mask_generator(kind, max_coverage=max_coverage, min_coverage=0.05, seed=seed)
    masks = gen(6, size, size, torch.Generator().manual_seed(seed))
    assert masks.shape == (6, 1, size, size) and masks.dtype == torch.bool
    coverage = mask_coverage(masks)
    assert (coverage > 0).all()
    if kind == "central":  # the central quarter, shrunk by the overlap ring
        assert (coverage <= 0.25 + 1e-6).all()
    else:  # at most max_coverage; min_coverage is the drawn target, which overlapping blocks may fall short of
        assert (coverage <= max_coverage + 1e-6).all(), coverage
