"""The suite runner: a tiny suite end to end, resume, failure isolation, validation, dry runs."""

from __future__ import annotations

import contextlib
import json
import os
import logging
import re
from pathlib import Path

import pytest
import yaml

from benchmarks import suite as suite_mod
from benchmarks.suite import load_suite, main, plan
from pretext.config import ConfigError

from .conftest import TINY
from .test_probes import stripes

TINY_CLASSIFY = ["model.fc_widths=[16,16]", "train.batch_size=8", "train.max_steps=4", "data.workers=0",
                 "test.crops=1", "model.init=kaiming"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.root with train/ and test/ ImageFolders (horizontal vs vertical stripes)."""
    root = tmp_path_factory.mktemp("stripes")
    stripes(root / "train", 12, seed=0)
    stripes(root / "test", 6, seed=1)
    return root


def write_suite(path: Path, root: Path, **extra) -> Path:
    raw = {"name": "tiny", "seeds": [0], "data": {"root": str(root)},
           "pretrainings": {"ce": {"preset": "demo", "overrides": [*TINY, "train.max_steps=2", "mask.region_bank=null"]},
                            "random": {"preset": "demo_random", "overrides": [*TINY, "mask.region_bank=null"]}},
           "tasks": {"knn": {"k": 5}, "classify": {"preset": "classify_demo", "overrides": TINY_CLASSIFY},
                     "inpainting": {"mask": "central"}}}
    raw.update(extra)
    path.write_text(yaml.safe_dump(raw))
    return path


def run_suite(tmp_path: Path, raw: dict) -> Path:
    """Write the suite `raw` as tmp_path/<name>.yaml, run it into tmp_path/results (it must succeed)."""
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "results"
    assert main([str(path), "--out", str(out)]) == 0
    return out


def cells(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))}


@pytest.mark.slow
def test_tiny_suite_runs_resumes_and_isolates_failures(folder: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    pre = {"ce": {"preset": "demo", "overrides": [*TINY, "train.max_steps=2", "mask.region_bank=null"]},
           "random": {"preset": "demo_random", "overrides": [*TINY, "mask.region_bank=null"]},
           "broken": {"import": str(tmp_path / "missing.pth")}}
    caplog.set_level(logging.INFO, logger="cebench")
    path = write_suite(tmp_path / "tiny.yaml", folder, pretrainings=pre)
    out = tmp_path / "results"
    assert main([str(path), "--out", str(out)]) == 1  # the broken pretraining's cells failed
    got = cells(out)
    # inpainting only for the pretraining with a decoder; every other pair once (one seed)
    assert set(got) == {"ce__knn__seed0", "ce__classify__seed0", "ce__inpainting__seed0", "random__knn__seed0",
                        "random__classify__seed0", "broken__knn__seed0", "broken__classify__seed0"}
    ok = {k: c for k, c in got.items() if c["status"] == "ok"}
    assert len(ok) == 5 and all(got[k]["status"] == "failed" for k in ("broken__knn__seed0", "broken__classify__seed0"))
    assert "missing.pth" in got["broken__knn__seed0"]["error"]
    assert caplog.text.count("pretraining broken") >= 2  # recorded for each of its cells, tried once
    assert "[1/7] broken__classify__seed0 (new)\n" in caplog.text  # no estimate before a cell has finished, then one
    assert re.search(r"\[2/7\] \S+ \(new\), about \d+ s left", caplog.text), caplog.text
    knn = got["ce__knn__seed0"]
    assert knn["headline"]["name"] == "kNN top-1 (%)" and 0 <= knn["headline"]["value"] <= 100
    assert knn["method"] == "context_encoder" and knn["supervision"] == "context" and knn["pretrain_seconds"] > 0
    assert knn["git_commit"] and knn["versions"]["torch"] and knn["device"] and knn["config_hash"]
    assert got["random__classify__seed0"]["metrics"]["steps"] == 4
    inpaint = got["ce__inpainting__seed0"]
    assert inpaint["kind"] == "inpainting" and inpaint["metrics"]["psnr"] == inpaint["headline"]["value"]
    assert (out / "table2.md").is_file() and (out / "table2.csv").is_file() and (out / "failed.md").is_file()
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"bars.png", "inpainting_ce_seed0.png"} <= figures  # the inpainting grid of the encoder with a decoder
    table = (out / "table2.md").read_text()
    assert "kNN top-1 (%)" in table and "ce" in table and "random" in table

    # A re-run skips every finished cell, retries the failed ones, and still exits 1.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    caplog.clear()
    assert main([str(path), "--out", str(out)]) == 1
    assert caplog.text.count("done, skipped") == 5
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert all(after[k] == stamps[k] for k in stamps if not k.startswith("broken"))
    # --force redoes the cells and reuses the pretrained encoders
    caplog.clear()
    only_ok = write_suite(tmp_path / "ok.yaml", folder)
    assert main([str(only_ok), "--out", str(out), "--force"]) == 0
    assert "done, skipped" not in caplog.text and "done: 2 steps" not in caplog.text  # no pretraining ran
    assert "resumed" not in caplog.text  # the forced fine-tunes trained again rather than resuming a finished run
    assert "broken" not in (out / "table2.md").read_text() and not (out / "failed.md").exists()  # this plan only
    assert all(p.stat().st_mtime_ns > stamps[p.name] for p in (out / "cells").glob("ce__*.json"))
    # a changed task option re-runs that task's cells only; a changed pretraining gets a new encoder directory
    caplog.clear()
    assert main([str(only_ok), "--out", str(out), "tasks.knn.k=3"]) == 0
    assert caplog.text.count("(the task's settings changed)") == 2 and caplog.text.count("done, skipped") == 3
    assert cells(out)["ce__knn__seed0"]["options"]["k"] == 3
    assert len(list((out / "pretrain").glob("ce-*"))) == 1


@pytest.mark.parametrize("override, message", [
    ("tasks.x={task: nonsense}", "unknown task 'nonsense'"),
    ("tasks.segmentation={overrides: [loss.reduction=max]}", "tasks.segmentation: .*reduction"),
    ("tasks.detection={overrides: [sample.fg_iou=2]}", "tasks.detection: .*fg_iou"),
    ("tasks.knn={kk: 3}", "unknown option.*kk for task knn"),
    ("nonsense=1", "unknown suite key 'nonsense'"),
    ("pretrainings.ce.overrides=[max_step=3]", "pretrainings.ce: .*unknown key 'max_step'"),
    ("tasks.classify.overrides=[train.nonsense=1]", "tasks.classify: .*unknown key 'nonsense'"),
    ("seeds=[]", "seeds must be"),
    ("pretrainings.ce.tasks=[knn,nope]", "pretrainings.ce.tasks names nope, not among the suite's tasks"),
    ("start=magic", "start must be one of preset, none, data_dependent"),
    ("precision=fp8", "precision must be one of fp32, bf16, auto"),
    ("pretrainings.ce.backbone=timm:resnet18", "give one of preset, import and backbone, not preset and backbone"),
    ("pretrainings.ce.weights=x.pth", "weights is the state dict of a backbone row"),
    ("pretrainings.r={backbone: resnet18}", "backbone must be timm:NAME or torchvision:NAME"),
    ("pretrainings.r={backbone: timm:resnet18, overrides: [train.max_steps=1]}", "evaluated as it is"),
])
def test_validation_names_the_problem(folder: Path, tmp_path: Path, override: str, message: str) -> None:
    path = write_suite(tmp_path / "s.yaml", folder)
    with pytest.raises(ConfigError, match=message):
        load_suite(str(path), [override])


def test_start_and_precision_apply_to_every_row_alike(folder: Path, tmp_path: Path) -> None:
    """`start` ends every training task's overrides (after the task's own, so no row or task can differ) and
    `precision` every pretraining's and training task's; both are part of the cells' hashes."""
    own = [o for o in TINY_CLASSIFY if not o.startswith("model.init")]  # the suite's start decides the init
    tasks = {"knn": {"k": 5}, "classify": {"preset": "classify_demo", "overrides": own}}
    path = write_suite(tmp_path / "s.yaml", folder, start="data_dependent", precision="auto", tasks=tasks)
    suite = load_suite(str(path))
    _, opts = suite.tasks["classify"]
    assert opts["overrides"][-3:] == ["model.init=data_dependent", "model.rescale_encoder=true", "train.precision=auto"]
    assert suite.tasks["knn"][1].get("overrides") is None  # probes have no start
    assert suite.tasks["knn"][1]["precision"] == "auto"  # but extract their features in the suite's precision
    with pytest.raises(ConfigError, match="tasks.knn.precision is set, and so is the suite's precision"):
        load_suite(str(path), ["tasks.knn.precision=fp32"])
    assert all(p.overrides[-1] == "train.precision=auto" for p in suite.pretrainings.values())
    cfg = suite_mod._task_config("classify", opts)
    assert (cfg.model.init, cfg.model.rescale_encoder, cfg.train.precision) == ("data_dependent", True, "auto")
    with pytest.raises(ConfigError, match="tasks.classify.overrides sets model.init=gaussian, .*suite's start"):
        load_suite(str(path), ["tasks.classify.overrides=[model.init=gaussian]"])
    none = load_suite(str(path), ["start=none"]).tasks["classify"][1]
    assert suite_mod._task_config("classify", none).model.rescale_encoder is False
    preset = load_suite(str(write_suite(tmp_path / "p.yaml", folder, tasks=tasks)))
    assert preset.tasks["classify"][1]["overrides"] == own and preset.tasks["knn"][1]["precision"] == "fp32"
    data, root = suite_mod.datasets(suite, create=False)
    cell = next(c for c in plan(suite) if c.task == "classify")
    hashes = {suite_mod.cell_hash(cell, s, data, root) for s in (suite, load_suite(str(path), ["start=none"]),
                                                                 load_suite(str(path), ["precision=fp32"]))}
    assert len(hashes) == 3


def test_the_plan_has_a_cell_per_pretraining_task_and_seed(folder: Path, tmp_path: Path) -> None:
    suite = load_suite(str(write_suite(tmp_path / "s.yaml", folder)), ["seeds=[0,1,2]"])
    assert len(plan(suite)) == 3 * (3 + 2)  # inpainting only for ce


def test_shipped_suites_validate_and_the_paper_suite_dry_runs_on_a_fake_voc_tree(tmp_path: Path, capsys) -> None:
    assert {"demo", "cifar10", "cifar10_inpainting", "paper", "backbones", "backbones_cifar10"} <= set(suite_mod.suite_names())
    for name in ("demo", "cifar10", "cifar10_inpainting", "paper", "backbones", "backbones_cifar10"):
        load_suite(name)
    voc, imagenet = tmp_path / "VOC2007", tmp_path / "imagenet"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    (voc / "Annotations").mkdir()
    (imagenet / "n01").mkdir(parents=True)
    voc12 = tmp_path / "VOC2012"
    (voc12 / "SegmentationClass").mkdir(parents=True)
    assert main(["paper", f"data.root={voc}", f"data.pretrain={imagenet}", "--dry-run",
                 f"tasks.segmentation.root={voc12}"]) == 0
    text = capsys.readouterr().out
    assert "5 pretrainings x 4 tasks x 1 seeds" in text and "20 cells" in text
    assert "ce_alexnet_paper" in text and "80000 steps x 16" in text and "40000 steps x 2" in text
    assert "100000 steps x 20" in text  # segment_paper
    assert main(["paper", f"data.root={voc}", f"data.pretrain={imagenet}", "--dry-run"]) == 2  # no VOC2012 here
    assert main(["paper", f"data.root={tmp_path / 'nowhere'}", "--dry-run"]) == 2


def test_hashes_follow_the_resolved_configs(folder: Path, tmp_path: Path) -> None:
    """An edited preset file changes what a pretraining and a fine-tune compute: neither may be reused."""
    pre, ft = tmp_path / "pre.yaml", tmp_path / "ft.yaml"
    pre.write_text("base: demo\ntrain:\n  max_steps: 2\n")
    ft.write_text("base: classify_demo\ntrain:\n  max_steps: 4\n")
    path = write_suite(tmp_path / "s.yaml", folder, pretrainings={"ce": {"preset": str(pre)}},
                       tasks={"classify": {"preset": str(ft)}})

    def hashes(*overrides: str) -> tuple[str, str]:
        suite = load_suite(str(path), list(overrides))
        data, root = suite_mod.datasets(suite, create=False)
        cell = next(c for c in plan(suite) if c.task == "classify")
        return (suite_mod.pretraining_hash(suite.pretrainings["ce"], suite, data, root),
                suite_mod.cell_hash(cell, suite, data, root))

    first = hashes()
    assert hashes("seeds=[0,1]") == first  # the seed is a directory / cell of its own, not part of the hash
    pre.write_text("base: demo\ntrain:\n  max_steps: 3\n")
    second = hashes()
    assert second[0] != first[0] and second[1] != first[1]
    ft.write_text("base: classify_demo\ntrain:\n  max_steps: 5\n")
    third = hashes()
    assert third[0] == second[0] and third[1] != second[1]
    assert hashes("pretrainings.ce.overrides=[train.progress=false]") == third  # run control only
    # the same data named by a relative path (from another working directory) finds the same cells
    relative = os.path.relpath(folder, tmp_path)
    with contextlib.chdir(tmp_path):
        assert hashes(f"data.root={relative}") == third
    assert hashes(f"data.root={folder}/../{folder.name}") == third


@pytest.mark.slow
def test_table1_rows_share_their_images_and_holes(folder: Path, tmp_path: Path) -> None:
    """Table 1 of a suite with inpainting and nn_inpainting: mean fill, NN inpainting with HOG and with the
    encoder's features, and the context encoder, all on the same --max-images subset (drawn by the seed)."""
    pre = {"ce": {"preset": "demo", "overrides": [*TINY, "train.max_steps=2", "mask.region_bank=null"]},
           # trained with another overlap; scored on the suite's holes; listed tasks only
           "adv": {"preset": "demo", "overrides": [*TINY, "train.max_steps=2", "mask.kind=central", "mask.overlap=2",
                                                   "loss.adversarial_weight=0.001"], "tasks": ["inpainting"]}}
    tasks = {"inpainting": {"mask": "central", "max_images": 5}, "nn_inpainting": {"max_images": [20, 5]}}
    path = write_suite(tmp_path / "t1.yaml", folder, pretrainings=pre, tasks=tasks, seeds=[3])
    out = tmp_path / "results"
    assert main([str(path), "--out", str(out)]) == 0
    got = cells(out)
    assert set(got) == {"ce__inpainting__seed3", "ce__nn_inpainting__seed3", "adv__inpainting__seed3"}
    nn, ce = got["ce__nn_inpainting__seed3"], got["ce__inpainting__seed3"]
    assert got["adv__inpainting__seed3"]["metrics"]["row"] == "context encoder (L2 + adversarial)"
    assert set(ce["metrics"]["mean_fill"]) == {"mean_l1", "mean_l2", "psnr", "ssim"}
    for key in ("ce__inpainting__seed3", "adv__inpainting__seed3"):  # the same holes: the suite's overlap, 4 px
        work = next((out / "work").glob(f"{key}-*"))
        assert json.loads((work / "metrics.json").read_text())["overlap"] == 4
    assert nn["metrics"]["row"] == "NN inpainting (context encoder features)" and nn["metrics"]["n_images"] == 5
    assert set(nn["metrics"]["nn_hog"]) == {"mean_l1", "mean_l2", "psnr"}
    table = (out / "table1.csv").read_text()
    for row in ("mean fill", "NN inpainting (HOG)", "NN inpainting (context encoder features)", "context encoder (L2)",
                "context encoder (L2 + adversarial)"):
        assert row in table
    assert (out / "figures" / "nn_inpainting_ce_seed3.png").is_file()
    # the NN queries are the eval-inpainting images: the seed's fixed subset of the test listing
    from pretext.data.sources import fixed_subset, list_images

    listing = list_images(folder / "test")
    expected = {listing[i].resolve() for i in fixed_subset(len(listing), 5, 3)}
    queries = json.loads(next((out / "work").glob("ce__nn_inpainting__seed3-*/encoder/neighbours.json")).read_text())
    assert {Path(q["path"]).resolve() for q in queries} == expected


@pytest.mark.slow
def test_inpainting_rows_on_every_kind_of_hole(demo_root: Path, tmp_path: Path) -> None:
    """The free-form inpainting model and a whole-image context encoder scored on central, region and free-form
    holes: Table 1 grouped by kind of hole, the same region shapes (the test data's masks) for both models, SSIM,
    a figure per task and the attention maps; the gated model's coarse encoder also feeds kNN."""
    from .test_gated import TINY_GATED

    pre = {"ce": {"preset": "demo", "overrides": [*TINY, "train.max_steps=2", "mask.kind=mixed",
                                                  "mask.region_bank=null"]},
           "gated": {"preset": "demo_gated", "overrides": [*TINY_GATED, "train.max_steps=2"]}}
    tasks = {"inpainting": {"mask": "central", "max_images": 6},
             "inpainting_region": {"task": "inpainting", "mask": "region", "max_images": 6},
             "inpainting_freeform": {"task": "inpainting", "mask": "freeform", "max_images": 6},
             "knn": {"k": 3}}
    raw = {"name": "holes", "seeds": [0], "data": {"root": str(demo_root), "check_images": 0},
           "pretrainings": pre, "tasks": tasks}
    out = run_suite(tmp_path, raw)
    got = cells(out)
    assert got["gated__inpainting_freeform__seed0"]["metrics"]["row"] == "gated inpainting (L1 + adversarial)"
    assert got["gated__knn__seed0"]["status"] == "ok"
    for kind, task in (("central", "inpainting"), ("region", "inpainting_region"), ("freeform", "inpainting_freeform")):
        scored = [json.loads(next((out / "work").glob(f"{p}__{task}__seed0-*/metrics.json")).read_text())
                  for p in ("ce", "gated")]
        assert {m["mask"] for m in scored} == {kind} and all(0 <= m["ssim"] <= 1 for m in scored)
        # mean fill on the very same holes for both models
        assert scored[0]["baseline_mean_fill"] == scored[1]["baseline_mean_fill"]
        assert (out / "figures" / f"{task}_gated_seed0.png").is_file()
        assert (out / "figures" / f"attention_{task}_gated_seed0.png").is_file()
    table = (out / "table1.md").read_text()
    assert "| holes" in table and "SSIM" in table and "freeform" in table and "region" in table


def test_an_edited_annotation_reruns_the_cells_that_read_it(demo_root: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture, capsys) -> None:
    """Relabel one test object of a VOC tree: the next run re-runs every cell (they all score the test split) and
    says why, the pretrainings (on trainval) are reused; --dry-run says the same beforehand; unchanged, all is
    reused."""
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(demo_root, root)
    raw = {"name": "edit", "seeds": [0], "data": {"root": str(root), "check_images": 0},
           "pretrainings": {"ce": {"preset": "demo", "overrides": [*TINY, "train.max_steps=2", "mask.region_bank=null"]},
                            "random": {"preset": "demo_random", "overrides": [*TINY, "mask.region_bank=null"]}},
           "tasks": {"knn": {"k": 3}}}
    out = run_suite(tmp_path, raw)
    encoders = sorted(p.name for p in (out / "pretrain").iterdir())
    assert all(c["spec_parts"]["data"] for c in cells(out).values())
    test_id = (root / "ImageSets/Main/test.txt").read_text().split()[0]
    xml = root / "Annotations" / f"{test_id}.xml"
    text = xml.read_text()
    old = text.split("<name>")[1].split("</name>")[0]
    xml.write_text(text.replace(f"<name>{old}</name>", f"<name>{'square' if old == 'circle' else 'circle'}</name>", 1))
    stat = xml.stat()
    os.utime(xml, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    capsys.readouterr()
    assert main([str(tmp_path / "edit.yaml"), "--out", str(out), "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "0 cell(s) would be reused, 2 would run" in planned and planned.count("its data changed") == 2
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main([str(tmp_path / "edit.yaml"), "--out", str(out)]) == 0
    assert caplog.text.count("(its data changed (images, labels or split lists))") == 2
    assert "done: 2 steps" not in caplog.text  # the pretrainings read trainval, which did not change
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == encoders
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main([str(tmp_path / "edit.yaml"), "--out", str(out)]) == 0
    assert caplog.text.count("done, skipped") == 2


def test_the_time_left_counts_each_remaining_cell_at_its_tasks_pace() -> None:
    from benchmarks.suite import Cell, time_left

    todo = [Cell("ce", "classify", 1), Cell("ce", "knn", 1), Cell("ae", "inpainting", 0)]
    assert time_left(todo, {}) == ""  # nothing finished: no estimate
    # classify at 100 s, knn at 2 s, inpainting (not run yet) at the mean of all cells run: (90 + 110 + 2) / 3
    assert time_left(todo, {"classify": [90.0, 110.0], "knn": [2.0]}) == ", about 2.8 min left"  # 169 s


def test_the_reason_a_cell_runs_again() -> None:
    parts = {"code_version": suite_mod.CODE_VERSION, "pretraining": "p1", "task": "t1", "data": "d1"}
    ok = {"status": "ok", "spec_parts": dict(parts), "spec_hash": suite_mod._hash(parts)}
    assert suite_mod.rerun_reason(ok, parts) is None
    assert suite_mod.rerun_reason({**ok, "status": "failed"}, parts) == "it failed"
    assert suite_mod.rerun_reason(ok, {**parts, "pretraining": "p2", "data": "d2"}) == (
        "its pretraining changed (preset, overrides or pretraining images); its data changed (images, labels or "
        "split lists)")
    older = {**ok, "spec_parts": {**parts, "code_version": parts["code_version"] - 1, "task": "t0"}}
    assert suite_mod.rerun_reason(older, parts) == "the code that computes it changed"  # alone, not every part
    legacy = {"status": "ok", "spec_hash": "0123456789"}  # a cell written before the parts were stored
    assert suite_mod.rerun_reason(legacy, parts) == "the code that computes it changed"
    assert suite_mod.rerun_reason({**legacy, "spec_hash": suite_mod._hash(parts)}, parts) is None


def test_fixed_subset_is_the_same_for_every_command(folder: Path) -> None:
    from pretext.data.sources import fixed_subset, list_images
    from transfer.features import open_labelled, subset

    listing = list_images(folder / "train")
    labelled = open_labelled(folder / "train", None)
    assert [p.resolve() for p in labelled.paths] == [p.resolve() for p in listing]
    for seed in (0, 1):
        idx = fixed_subset(len(listing), 7, seed)
        assert idx == sorted(set(idx)) and len(idx) == 7
        assert [listing[i].resolve() for i in idx] == [p.resolve() for p in subset(labelled, 7, seed).paths]
    assert fixed_subset(len(listing), 7, 0) != fixed_subset(len(listing), 7, 1)
    assert fixed_subset(4, None, 0) == fixed_subset(4, 9, 0) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=">= 1"):
        fixed_subset(4, 0, 0)


@pytest.mark.slow
def test_detection_and_segmentation_columns(tmp_path: Path) -> None:
    """A suite on a VOC root with boxes and masks: the detection and segmentation tasks fill their Table 2
    columns through the registry."""
    from .test_detect import shapes_voc

    root = shapes_voc(tmp_path / "voc", n_train=8, n_test=4, size=(60, 80), side=(16, 30))
    raw = {"name": "dense", "seeds": [0], "data": {"root": str(root)},
           "pretrainings": {"random": {"preset": "demo_random", "overrides": [*TINY, "mask.region_bank=null"]}},
           "tasks": {"detection": {"overrides": ["model.fc_widths=[16,16]", "train.max_steps=2", "data.workers=0",
                                                 "proposals.workers=0", "data.scales=[64]", "test.scale=64",
                                                 f"proposals.cache_dir={tmp_path / 'cache'}"]},
                     "segmentation": {"overrides": ["model.fc_widths=[16,16]", "train.max_steps=2", "data.workers=0",
                                                    "data.scale=48"]}}}
    out = run_suite(tmp_path, raw)
    got = cells(out)
    assert got["random__segmentation__seed0"]["headline"]["name"] == "Segmentation mIoU (%)"
    assert set(got["random__segmentation__seed0"]["per_class"]) <= {"background", "square", "disc"}
    assert got["random__detection__seed0"]["headline"]["name"] == "Detection mAP (%)"
    table = (out / "table2.md").read_text()
    assert "Detection mAP (%)" in table and "Segmentation mIoU (%)" in table


def test_a_second_run_on_the_same_results_directory_is_refused(folder: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The lock is held by another process (a child holding OUT/.lock), so this run stops with a clear message."""
    import subprocess
    import sys

    out = tmp_path / "results"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('pid 1234 on elsewhere since then'); f.flush(); print('held', flush=True); time.sleep(60)"),
        str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        path = write_suite(tmp_path / "s.yaml", folder)
        assert main([str(path), "--out", str(out)]) == 2
        assert "is in use by another suite run (pid 1234 on elsewhere since then)" in caplog.text
        assert not (out / "cells").exists()  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone (killed: no stale lock), the lock is free again
    from benchmarks.suite import results_lock

    with results_lock(out):
        assert "pid" in (out / ".lock").read_text()


def test_the_suite_checks_its_data_first(folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    broken = next((bad / "train").rglob("*.png"))
    broken.write_bytes(b"not an image")
    path = write_suite(tmp_path / "s.yaml", bad)
    assert main([str(path), "--out", str(tmp_path / "out"), "data.check_images=null"]) == 2
    assert f"data check: 1 problem(s) in {bad / 'train'}" in caplog.text and broken.name in caplog.text
    assert not (tmp_path / "out" / "cells").exists()  # nothing ran
    with pytest.raises(ConfigError, match="check_images must be"):
        load_suite(str(path), ["data.check_images=-1"])


@pytest.mark.slow
def test_a_suite_killed_mid_run_resumes_to_the_same_tables(folder: Path, tmp_path: Path) -> None:
    """kill -9 once the first cell is stored; the resumed run's Table 2 numbers equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd

    path = write_suite(tmp_path / "s.yaml", folder, tasks={"knn": {"k": 5}, "classify": {
        "preset": "classify_demo", "overrides": TINY_CLASSIFY}})
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main([str(path), "--out", str(straight)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.suite", str(path), "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not list((killed / "cells").glob("*.json")) and time.monotonic() - t0 < 240:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((killed / "cells").glob("*.json")))
    assert 1 <= done < 4  # interrupted mid-suite
    assert main([str(path), "--out", str(killed)]) == 0  # the lock died with the killed run
    a, b = (pd.read_csv(d / "table2.csv") for d in (straight, killed))
    cols = ["pretraining", "Fine-tune top-1 (%)", "kNN top-1 (%)"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_a_backbone_row_is_evaluated_as_it_is(folder: Path, tmp_path: Path) -> None:
    """`backbone: timm:NAME` rows: no pretraining, a run directory whose encoder.json names the model and seed, the
    probes on its deepest stage and the fine-tune on its averaged map; tasks that need a decoder are left out."""
    raw = yaml.safe_load(write_suite(tmp_path / "s.yaml", folder).read_text())
    raw["pretrainings"] = {"r18": {"backbone": "timm:resnet18"}}
    out = run_suite(tmp_path, {**raw, "name": "backbone"})
    got = cells(out)
    assert sorted(got) == ["r18__classify__seed0", "r18__knn__seed0"]  # no inpainting without a decoder
    assert all(c["status"] == "ok" and c["method"] == "backbone" for c in got.values()), got
    assert got["r18__knn__seed0"]["metrics"]["layer"] == "layer4"
    record = json.loads(next((out / "pretrain").glob("r18-*/seed0/encoder.json")).read_text())
    assert (record["format"], record["backbone"], record["seed"], record["weights"]) == ("backbone", "timm:resnet18",
                                                                                         0, None)
    fine_tune = json.loads(next((out / "work").glob("r18__classify__seed0-*/metrics.json")).read_text())
    assert (fine_tune["encoder_arch"], fine_tune["stage"], fine_tune["pool"]) == ("timm:resnet18", "layer4", "avg")
    assert "backbone timm:resnet18, random init" in suite_mod.dry_run(load_suite(str(tmp_path / "backbone.yaml")))
