"""What the three fine-tuning tasks share (transfer/finetune.py): the config base with its rules and presets, the
inputs, the test-root check and run_task's class check. The tasks' training itself is tested in test_classify,
test_detect and test_segment."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretext.config import ConfigError
from transfer.classify import ClassifyConfig, RunInputs
from transfer.detect import DetectConfig, DetectInputs
from transfer.finetune import TaskConfig, TaskInputs, run_task, root_to_test
from transfer.segment import SegmentConfig, SegmentInputs

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
    d = ClassifyConfig.load("classify_cifar").to_dict()
    assert ClassifyConfig.from_dict(dict(reversed(list(d.items())))).hash() == "cecd5893357d"


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
    with pytest.raises(ValueError, match="the test set is the training set"):
        root_to_test(argparse.Namespace(**{**vars(args), "test_data": tmp_path / "."}))
    assert root_to_test(argparse.Namespace(**{**vars(args), "test_split": "val"})) == tmp_path
    other = tmp_path / "other"
    assert root_to_test(argparse.Namespace(**{**vars(args), "test_data": other})) == other


def test_run_task_refuses_a_test_set_with_other_classes_before_any_work(tmp_path: Path) -> None:
    train = SimpleNamespace(root=tmp_path / "a", split="train", classes=("cat", "dog"))
    test = SimpleNamespace(root=tmp_path / "b", split="val", classes=("dog", "cat"))
    inputs = TaskInputs("no-such-encoder", train, test, tmp_path / "run")
    with pytest.raises(ValueError, match=r"has classes \['dog', 'cat'\] but .* \['cat', 'dog'\]"):
        run_task(object, ClassifyConfig.load("classify_demo"), inputs)  # the tuner is never built
    assert not (tmp_path / "run").exists()
