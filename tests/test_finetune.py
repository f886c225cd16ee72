"""What the three fine-tuning tasks share (transfer/finetune.py): the config base with its rules and presets, the
inputs, the test-root check and run_fine_tune's class check. The tasks' training itself is tested in test_classify,
test_detect and test_segment."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pretext.config import ConfigError
from transfer.classify import ClassifyConfig, FineTuner, RunInputs
from transfer.detect import DetectConfig, DetectInputs, Detector
from transfer.finetune import TaskConfig, TaskInputs, run_fine_tune, root_to_test
from transfer.segment import SegmentConfig, SegmentInputs, Segmenter

PRESETS = Path(__file__).resolve().parents[1] / "transfer" / "presets"
TASKS = [(ClassifyConfig, "classify"), (DetectConfig, "detect"), (SegmentConfig, "segment")]


@pytest.mark.parametrize(("root", "prefix"), TASKS)
def test_each_task_lists_and_loads_its_own_presets(root: type[TaskConfig], prefix: str) -> None:
    shipped = sorted(p.stem for p in PRESETS.glob(f"{prefix}_*.yaml"))
    assert shipped and root.presets() == shipped
    for name in shipped:
        cfg = root.load(name)
        assert isinstance(cfg, root) and isinstance(cfg, TaskConfig)
        assert {"optim", "train", "data", "model", "test"} <= set(cfg.to_dict())
    with pytest.raises(ConfigError, match="nonsense"):
        root.load(shipped[0], ["train.nonsense=1"])


def test_config_hashes_do_not_depend_on_the_order_of_sections() -> None:
    """Suites key their stored cells by these hashes: a refactor that moves sections (the shared optim / train now
    come first) must not re-run every stored cell. The values are those of the configs before that refactor."""
    assert ClassifyConfig.load("classify_cifar").hash() == "cecd5893357d"
    assert DetectConfig.load("detect_demo").hash() == "74ba535baa0d"
    assert SegmentConfig.load("segment_demo").hash() == "08b70e7d03e7"


@pytest.mark.parametrize(("root", "prefix"), [(DetectConfig, "detect"), (SegmentConfig, "segment")])
def test_a_validation_split_is_refused_where_it_is_not_implemented(root: type[TaskConfig], prefix: str) -> None:
    with pytest.raises(ConfigError, match="validation split is implemented for classification only"):
        root.load(f"{prefix}_demo", ["train.val_images=4"])
    assert ClassifyConfig.load("classify_demo", ["train.val_images=4"]).train.val_images == 4


@pytest.mark.parametrize(("root", "prefix"), [(ClassifyConfig, "classify"), (DetectConfig, "detect")])
def test_rescaling_the_encoder_needs_the_data_dependent_start(root: type[TaskConfig], prefix: str) -> None:
    with pytest.raises(ConfigError, match="rescale_encoder=true needs model.init=data_dependent"):
        root.load(f"{prefix}_demo", ["model.rescale_encoder=true", "model.init=gaussian"])
    cfg = root.load(f"{prefix}_demo", ["model.rescale_encoder=true", "model.init=data_dependent"])
    assert cfg.model.rescale_encoder


@pytest.mark.parametrize(("root", "preset", "overrides", "message"), [
    (ClassifyConfig, "classify_demo", ["data.scale_min=3"], "data.scale_min"),
    (ClassifyConfig, "classify_demo", ["model.fc_widths=[8]"], "2 widths"),
    (DetectConfig, "detect_demo", ["sample.bg_iou_high=0.6"], "bg_iou_low"),
    (DetectConfig, "detect_demo", ["data.scales=[]"], "at least one shorter side"),
    (SegmentConfig, "segment_demo", ["model.init=data_dependent", "model.fc_from=run"], "choose one"),
    (SegmentConfig, "segment_demo", ["train.device=tpu"], "not auto, cpu, cuda"),
])
def test_each_task_keeps_its_own_rules(root: type[TaskConfig], preset: str, overrides: list[str],
                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        root.load(preset, overrides)


def test_a_task_adds_its_inputs_by_keyword_after_the_shared_ones(tmp_path: Path) -> None:
    shared = ("timm:resnet18", "TRAIN", "TEST", tmp_path)
    assert [f.name for f in dataclasses.fields(TaskInputs)] == ["encoder", "train", "test", "out", "max_images",
                                                                "weights"]
    assert RunInputs(*shared).val is None
    assert SegmentInputs(*shared, test_dropped=3).test_dropped == 3
    inputs = DetectInputs(*shared, (5, 2), Path("w.pt"), train_proposals={}, test_proposals={}, proposal_source={})
    assert inputs.max_images == (5, 2) and inputs.weights == Path("w.pt")
    with pytest.raises(TypeError):
        SegmentInputs(*shared, (None, None), None, 3)  # a task's own field is keyword-only


def test_the_test_root_is_never_the_training_split(tmp_path: Path) -> None:
    args = argparse.Namespace(data=tmp_path, test_data=None, train_split="train", test_split="train")
    with pytest.raises(ValueError, match="the test set is the training set"):
        root_to_test(args)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="the test set is the training set"):  # the same folder by another path
        root_to_test(argparse.Namespace(**{**vars(args), "test_data": tmp_path / "sub" / ".."}))
    assert root_to_test(argparse.Namespace(**{**vars(args), "test_split": "val"})) == tmp_path
    other = tmp_path / "other"
    assert root_to_test(argparse.Namespace(**{**vars(args), "test_data": other})) == other


def test_run_task_refuses_a_test_set_with_other_classes_before_any_work(tmp_path: Path) -> None:
    train = SimpleNamespace(root=tmp_path / "a", split="train", classes=("cat", "dog"))
    test = SimpleNamespace(root=tmp_path / "b", split="val", classes=("dog", "cat"))
    inputs = TaskInputs("no-such-encoder", train, test, tmp_path / "run")
    with pytest.raises(ValueError, match=r"has classes \['dog', 'cat'\] but .* \['cat', 'dog'\]"):
        run_fine_tune(object, ClassifyConfig.load("classify_demo"), inputs)  # building `object` would be a TypeError


# metrics.json's entries besides the task's scores, as each task wrote them before the three shared one engine
# (a short fine-tune of each at commit 240daac; the scores themselves are checked by each task's tests)
SHARED = {"task", "layers", "encoder", "encoder_sha256", "encoder_method", "encoder_arch", "stage", "train", "test",
          "classes", "steps", "seed", "config_hash", "config", "training", "precision", "device", "world_size",
          "git_commit", "versions", "train_seconds", "test_seconds", "wall_seconds"}
OWN = {FineTuner: {"pool", "crop", "start"},
       Detector: {"stride", "roi_size", "proposals", "inference_seconds_per_image", "proposal_seconds_train",
                  "proposal_seconds_test"},
       Segmenter: {"head", "conv1_pad", "crop_offset", "stride", "train_seconds_per_image",
                   "inference_seconds_per_image"}}


@pytest.mark.parametrize(("tuner", "root", "preset"), [(FineTuner, ClassifyConfig, "classify_demo"),
                                                       (Detector, DetectConfig, "detect_demo"),
                                                       (Segmenter, SegmentConfig, "segment_demo")])
def test_every_task_records_the_shared_entries_and_its_own(tuner: type, root: type[TaskConfig], preset: str,
                                                           tmp_path: Path) -> None:
    def image_set(name: str) -> SimpleNamespace:
        return SimpleNamespace(classes=("a", "b"), describe=lambda n: {"root": name, "split": "s", "n_images": 3,
                                                                       "max_images": n})

    cfg = root.load(preset)
    shared = dict(encoder="runs/enc", train=image_set("tr"), test=image_set("te"), out=tmp_path, max_images=(3, None))
    inputs = {FineTuner: lambda: RunInputs(**shared),
              Detector: lambda: DetectInputs(**shared, train_proposals={}, test_proposals={}, proposal_source={
                  "train": {"file": "p"}, "seconds": {"proposal_seconds_train": 1.0, "proposal_seconds_test": 2.0}}),
              Segmenter: lambda: SegmentInputs(**shared, test_dropped=2)}[tuner]()
    run = object.__new__(tuner)  # what `metrics` reads, without opening an encoder or data
    run.cfg, run.inputs, run.meta, run.stage, run.step = cfg, inputs, {"sha256": "abc", "arch": "alexnet"}, "pool5", 4
    run.losses, run.precision = [2.0, 1.5, 1.2, 1.0], "fp32"
    run.env = SimpleNamespace(device=torch.device("cpu"), world_size=1)
    run.pool, run.crop, run.start = "flatten", 64, {"loss": 2.3}
    run.model = SimpleNamespace(stride=16, roi_size=6, conv1_pad=100, offset=19)
    seconds = {"train_seconds": 12.3456789, "test_seconds": 1.0, "wall_seconds": 14.0,
               **({"inference_seconds_per_image": 0.1} if tuner is not FineTuner else {}),
               **(inputs.proposal_source["seconds"] if tuner is Detector else {})}
    record = run.metrics({"score": 0.5}, seconds)
    assert set(record) == SHARED | OWN[tuner] | {"score"}
    assert record["task"] == tuner.TASK and record["config_hash"] == cfg.hash() and record["steps"] == 4
    assert record["train_seconds"] == 12.3457 and record["train"]["root"] == "tr" and record["test"]["root"] == "te"
    if tuner is Segmenter:
        assert record["head"] == "stage" and record["test"]["dropped_training_images"] == 2
        assert record["train_seconds_per_image"] == round(12.3456789 / (4 * cfg.train.batch_size), 5)
    if tuner is Detector:
        assert record["proposals"]["train"] == {"file": "p"} and record["stride"] == 16
    if tuner is FineTuner:
        assert record["start"] == {"loss": 2.3} and record["crop"] == 64
