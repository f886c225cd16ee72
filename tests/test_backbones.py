"""Any backbone as an encoder: timm and torchvision models by name, weights saved by other SSL trainers, and the
probe and retrieval commands on them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from transfer.backbones import (BackboneError, default_layer, is_backbone_spec, load_backbone_weights, open_backbone,
                                open_encoder, read_state_dict)
from tests.test_probes import stripes


@pytest.fixture(scope="module")
def resnet() -> tuple[torch.nn.Module, dict]:
    return open_backbone("timm:resnet18")


def test_timm_backbone_stages_shapes_and_metadata(resnet) -> None:
    backbone, meta = resnet
    assert backbone.stages == ("act1", "layer1", "layer2", "layer3", "layer4")
    assert meta["input_size"] == 224 and meta["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["stages"]["layer3"] == {"channels": 256, "stride": 16}
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        y = backbone(x, out="layer3")
        both = backbone(x, out=("layer1", "layer4"))
    assert y.shape == (2, 256, 6, 6) and both["layer1"].shape == (2, 64, 24, 24) and both["layer4"].shape[1] == 512
    with pytest.raises(ValueError, match="layer5.*choose from act1"):
        backbone(x, out="layer5")
    assert default_layer(backbone) == "layer4"
    # random init is seeded: the same spec is the same network, and its identity says so
    again, meta2 = open_backbone("timm:resnet18")
    assert meta2["sha256"] == meta["sha256"] != open_backbone("timm:resnet18", seed=1)[1]["sha256"]
    torch.testing.assert_close(again.model.conv1.weight, backbone.model.conv1.weight)


def test_torchvision_backbone_stages_and_early_stop() -> None:
    backbone, meta = open_backbone("torchvision:resnet18")
    assert backbone.stages[-4:] == ("layer1", "layer2", "layer3", "layer4") and "fc" not in backbone.stages
    assert meta["stages"]["layer4"] == {"channels": 512, "stride": 32}
    calls = []
    backbone.model.layer4.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64), out="layer2").shape == (1, 128, 8, 8)
        assert not calls  # stopped after layer2
        assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)  # default: the last stage
    vgg, _ = open_backbone("torchvision:vgg11")
    assert vgg.stages[0] == "features.0" and all(s.startswith("features.") for s in vgg.stages)


@pytest.mark.parametrize("spec, problem", [("timm:no_such_net", "timm has no model 'no_such_net'"),
                                           ("torchvision:no_such_net", "torchvision has no classification model")])
def test_unknown_model_names(spec: str, problem: str) -> None:
    with pytest.raises(BackboneError, match=problem):
        open_backbone(spec)


def _reference(seed: int = 5) -> dict[str, torch.Tensor]:
    """The weights another trainer would have produced: a differently seeded resnet18."""
    return {k: v.clone() for k, v in open_backbone("timm:resnet18", seed=seed)[0].model.state_dict().items()}


@pytest.mark.parametrize("layout", ["solo_learn", "dino", "moco", "mocov3", "lightly_safetensors", "vissl"])
def test_weights_of_other_trainers_load_and_extras_are_listed(tmp_path: Path, layout: str) -> None:
    ref = _reference()
    junk = torch.zeros(3)
    if layout == "solo_learn":  # backbone.* beside projector.*, a momentum copy, a loss's buffer, any other head
        obj = {"state_dict": {**{f"backbone.{k}": v for k, v in ref.items()}, "projector.0.weight": junk,
                              "momentum_backbone.conv1.weight": junk, "dino_loss_func.center": junk,
                              "momentum_head.mlp.0.weight": junk}, "epoch": 3}
        expected = ["dino_loss_func.center", "momentum_backbone.conv1.weight", "momentum_head.mlp.0.weight",
                    "projector.0.weight"]
    elif layout == "dino":  # teacher and student, DDP prefixes, a head, the run's arguments; the teacher is the one
        teacher = {**{f"module.backbone.{k}": v for k, v in ref.items()}, "module.head.last_layer.weight": junk}
        student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in ref.items()}
        obj = {"teacher": teacher, "student": student, "epoch": 100, "args": argparse.Namespace(arch="resnet18")}
        expected = ["head.last_layer.weight"]
    elif layout == "mocov3":  # base and momentum encoders, a predictor
        obj = {"state_dict": {**{f"module.base_encoder.{k}": v for k, v in ref.items()},
                              "module.momentum_encoder.conv1.weight": junk, "module.predictor.0.weight": junk}}
        expected = ["momentum_encoder.conv1.weight", "predictor.0.weight"]
    elif layout == "moco":  # query encoder, key (momentum) encoder, queue
        obj = {"state_dict": {**{f"module.encoder_q.{k}": v for k, v in ref.items()},
                              **{f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in list(ref.items())[:2]},
                              "module.queue": junk}, "arch": "resnet18"}
        expected = sorted(["queue", *(f"encoder_k.{k}" for k in list(ref)[:2])])
    elif layout == "lightly_safetensors":  # a plain state dict under "backbone." in a safetensors file
        obj = {**{f"backbone.{k}": v for k, v in ref.items()}, "projection_head.layers.0.weight": junk}
        expected = ["projection_head.layers.0.weight"]
    else:  # VISSL: classy_state_dict / base_model / model / trunk, with _feature_blocks.
        obj = {"classy_state_dict": {"base_model": {"model": {"trunk": {f"_feature_blocks.{k}": v
                                                                        for k, v in ref.items()},
                                                              "heads": {"0.weight": junk}}}}}
        expected = []
    path = tmp_path / ("w.safetensors" if layout == "lightly_safetensors" else "w.pth")
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    backbone, meta = open_backbone("timm:resnet18", weights=path)
    for k, v in ref.items():
        torch.testing.assert_close(backbone.model.state_dict()[k], v, msg=k)
    assert meta["ignored_keys"] == expected and meta["weights"] == str(path) and len(meta["sha256"]) == 64


def test_weights_that_do_not_fit_are_refused_with_every_problem(tmp_path: Path) -> None:
    ref = _reference()
    bad = {k: v for k, v in ref.items() if not k.startswith("layer4")}  # missing keys
    bad["conv1.weight"] = torch.zeros(8, 3, 3, 3)  # mis-shaped
    bad["extra_block.weight"] = torch.zeros(2)  # unexpected, not a known head
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(BackboneError) as info:
        open_backbone("timm:resnet18", weights=tmp_path / "bad.pth")
    text = str(info.value)
    assert "bad.pth" in text and "missing (layer4." in text and "unexpected (extra_block.weight)" in text
    assert "conv1.weight: file (8, 3, 3, 3), model (64, 3, 7, 7)" in text
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="junk.pth: not a readable weights file"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(BackboneError, match="weights file not found"):
        read_state_dict(tmp_path / "absent.pth")
    torch.save({"epoch": 3, "args": "x"}, tmp_path / "empty.pth")
    with pytest.raises(BackboneError, match="no tensors found"):
        read_state_dict(tmp_path / "empty.pth")


def test_a_classifier_head_missing_from_the_file_is_fine(tmp_path: Path) -> None:
    """SSL checkpoints carry no classifier: the head a feature extractor never uses may be absent."""
    model = open_backbone("torchvision:resnet18")[0].model
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    torch.save(weights, tmp_path / "w.pt")
    assert load_backbone_weights(model, tmp_path / "w.pt") == {"loaded": len(weights), "ignored": []}


def test_open_encoder_dispatch(tmp_path: Path) -> None:
    assert is_backbone_spec("timm:resnet18") and is_backbone_spec("torchvision:resnet50")
    assert not is_backbone_spec("runs/ce") and not is_backbone_spec("C:/runs/ce")
    with pytest.raises(BackboneError, match="--weights is for timm"):
        open_encoder(tmp_path, weights=tmp_path / "w.pth")
    with pytest.raises(ValueError, match="encoder metadata not found"):
        open_encoder(tmp_path / "missing_run")


def test_probe_and_retrieval_commands_on_backbones(tmp_path: Path) -> None:
    from transfer.probe import main as probe_main
    from transfer.retrieve import main as retrieve_main

    train, test = stripes(tmp_path / "train", 6, seed=0), stripes(tmp_path / "test", 6, seed=1)
    ref = _reference(seed=7)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in ref.items()}}, tmp_path / "ssl.pth")
    out = tmp_path / "knn"
    assert probe_main(["knn", "--encoder", "timm:resnet18", "--weights", str(tmp_path / "ssl.pth"), "--train",
                       str(train), "--test", str(test), "--out", str(out), "--cache", str(tmp_path / "cache"),
                       "--k", "3", "--batch-size", "6"], prog="cebench probe") == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["encoder"] == "timm:resnet18" and record["layer"] == "layer4"
    assert record["encoder_method"] == "external" and record["train"]["n_images"] == 12
    assert record["encoder_weights"] == str(tmp_path / "ssl.pth") and record["encoder_ignored_keys"] == []
    out = tmp_path / "retrieval"
    assert retrieve_main(["--encoder", "torchvision:resnet18", "--layer", "layer3", "--database", str(train),
                          "--queries", str(test), "--out", str(out), "--cache", str(tmp_path / "cache"), "--k", "3"],
                         prog="cebench retrieve") == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["layer"] == "layer3" and record["encoder"] == "torchvision:resnet18"
    # a stage the backbone does not have: a clear error, exit code 2
    assert probe_main(["knn", "--encoder", "timm:resnet18", "--layer", "pool5", "--train", str(train), "--test",
                       str(test), "--out", str(tmp_path / "x"), "--cache", str(tmp_path / "cache")]) == 2


class Hyper:
    """A class a weights_only load does not know (as Lightning's hyper-parameter containers)."""


def test_a_classifier_of_another_size_is_ignored_and_arguments_objects_are_refused_clearly(tmp_path: Path) -> None:
    model = open_backbone("torchvision:resnet18")[0].model
    weights = dict(model.state_dict())
    weights["fc.weight"], weights["fc.bias"] = torch.zeros(128, 512), torch.zeros(128)  # MoCo v1's 128-d head
    torch.save({"state_dict": weights}, tmp_path / "moco_v1.pth")
    loaded = load_backbone_weights(model, tmp_path / "moco_v1.pth")
    assert loaded["ignored"] == ["fc.bias", "fc.weight"] and loaded["loaded"] == len(weights) - 2

    torch.save({"state_dict": weights, "hyper": Hyper()}, tmp_path / "lightning.ckpt")
    with pytest.raises(BackboneError, match="lightning.ckpt: holds Python objects other than tensors"):
        read_state_dict(tmp_path / "lightning.ckpt")


def test_torchvision_transformers_point_to_timm_and_timm_tags_work() -> None:
    with pytest.raises(BackboneError, match="vit_b_16 is a transformer.*timm:NAME"):
        open_backbone("torchvision:vit_b_16")
    vit, meta = open_backbone("timm:vit_tiny_patch16_224.augreg_in21k")
    assert vit.stages[-1] == "blocks.11" and meta["stages"]["blocks.11"] == {"channels": 192, "stride": 16}
    with torch.no_grad():
        assert vit(torch.randn(1, 3, 224, 224)).shape == (1, 192, 14, 14)


def test_classification_fine_tunes_any_backbone_with_its_weights(tmp_path: Path) -> None:
    """`transfer classify` on timm / torchvision models: the head on the chosen stage (average-pooled), the weights
    file loaded (the fine-tune starts from it), a linear head without fc widths; a stage the model lacks is refused."""
    from pretext.engine.checkpoint import load_checkpoint
    from transfer.classify import main as classify_main

    train, test = stripes(tmp_path / "train", 12, seed=0), stripes(tmp_path / "test", 8, seed=1)
    ref = _reference(seed=7)
    torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in ref.items()}}, tmp_path / "ssl.pth")
    tiny = ["train.batch_size=8", "train.progress=false", "data.workers=0", "test.crops=1", "data.crop=32",
            "model.init=kaiming", "optim.lr=0.01"]
    out = tmp_path / "timm"
    assert classify_main(["--encoder", "timm:resnet18", "--weights", str(tmp_path / "ssl.pth"), "--data", str(train),
                          "--test-data", str(test), "--out", str(out), *tiny, "model.fc_widths=[]",
                          "model.stage=layer3", "train.max_steps=40", "train.layers=fc8"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["encoder"], m["encoder_arch"], m["stage"], m["pool"]) == ("timm:resnet18", "timm:resnet18", "layer3",
                                                                        "avg")
    assert m["encoder_weights"] == str(tmp_path / "ssl.pth") and m["top1"] >= 75  # chance 50 %
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    assert state["fc8.weight"].shape == (2, 256)  # layer3 of resnet18: 256 channels, averaged; no fc6 / fc7
    assert not any(k.startswith(("fc6.", "fc7.")) for k in state)
    assert torch.equal(state["encoder.model.layer1.0.conv1.weight"], ref["layer1.0.conv1.weight"])  # frozen, loaded
    out = tmp_path / "tv"
    assert classify_main(["--encoder", "torchvision:resnet18", "--data", str(train), "--test-data", str(test),
                          "--out", str(out), *tiny, "model.fc_widths=[16,16]", "train.max_steps=3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["stage"], m["pool"], m["layers"]) == ("layer4", "avg", "all") and m["encoder_weights"] is None
    # a stage before the last: layer4 and the classifier get no gradient; the calibration of the whole encoder
    # (the suites' start: data_dependent) leaves them out instead of failing on them
    out = tmp_path / "tv3"
    assert classify_main(["--encoder", "torchvision:resnet18", "--data", str(train), "--test-data", str(test),
                          "--out", str(out), *tiny, "model.stage=layer3", "model.init=data_dependent",
                          "model.rescale_encoder=true", "train.max_steps=2"]) == 0
    # ... and a batch-normalised encoder sets its own scale: its layers are not rescaled (a random ResNet-18 whose
    # convolutions were diverged at its first update), the head is
    m = json.loads((out / "metrics.json").read_text())
    assert m["start"]["encoder_layers_rescaled"] == 0 and 0.5 < m["start"]["logit_std"] < 2.0
    assert classify_main(["--encoder", "timm:resnet18", "--data", str(train), "--test-data", str(test), "--out",
                          str(tmp_path / "x"), *tiny, "model.stage=pool5"]) == 2


def test_segmentation_trains_an_fcn_head_on_any_backbone_stage(tmp_path: Path) -> None:
    """`transfer segment` on a timm ResNet: fc6-fc7-score on the chosen stage, scores upsampled from its stride;
    training lifts the mIoU far above the untrained (zero) score layer; the score layer alone on a torchvision
    model; FCN-32s settings on a backbone, or another stage of an AlexNet, are refused with the reason."""
    from tests.test_detect import shapes_voc
    from transfer.segment import main as segment_main

    scenes = shapes_voc(tmp_path / "scenes", n_train=40, n_test=12, size=(64, 80), side=(20, 32))
    common = ["--data", str(scenes), "--train-split", "trainval", "--test-split", "test", "train.batch_size=2",
              "train.progress=false", "data.workers=0", "data.scale=null", "model.dropout=0", "optim.lr=0.01",
              "model.init=data_dependent"]

    def segment(out: str, *extra: str) -> dict:
        assert segment_main([*common, "--out", str(tmp_path / out), *extra]) == 0
        return json.loads((tmp_path / out / "metrics.json").read_text())

    net = ["--encoder", "timm:resnet18", "model.stage=layer2", "model.fc_widths=[32,32]"]
    before, after = segment("untrained", *net, "train.max_steps=0"), segment("trained", *net, "train.max_steps=60")
    assert (after["head"], after["stage"], after["stride"], after["encoder_arch"]) == ("stage", "layer2", 8,
                                                                                      "timm:resnet18")
    assert after["crop_offset"] is None and after["conv1_pad"] is None
    assert after["miou"] > before["miou"] + 15, (before["miou"], after["miou"])
    # norm_eval (default) keeps a random init's reset statistics; without it, the norms that train on batch
    # statistics start from the start images' (layer3 and layer4 are not reached: they stay reset)
    from pretext.engine.checkpoint import load_checkpoint
    segment("batch_norms", *net, "model.norm_eval=false", "train.max_steps=0")
    for out, reset in (("untrained", True), ("batch_norms", False)):
        state = load_checkpoint(tmp_path / out / "checkpoint.pt")["model"]
        assert bool((state["encoder.model.layer2.1.bn2.running_var"] == 1).all()) is reset
        assert bool((state["encoder.model.layer3.0.bn1.running_var"] == 1).all())
    linear = segment("linear", "--encoder", "torchvision:resnet18", "model.fc_widths=[]", "train.max_steps=2")
    assert (linear["stage"], linear["stride"], linear["head"]) == ("layer4", 32, "stage")
    assert segment_main([*common, "--out", str(tmp_path / "x"), "--encoder", "timm:resnet18", "model.conv1_pad=10",
                         "train.max_steps=1"]) == 2
    assert segment_main([*common, "--out", str(tmp_path / "y"), "--encoder", "timm:resnet18", "model.stage=pool5",
                         "train.max_steps=1"]) == 2


def test_detection_pools_rois_from_any_backbone_stage(tmp_path: Path) -> None:
    """`transfer detect` on a timm ResNet: RoIs pooled from the deepest stage of stride <= 16 (layer3) to 7 x 7 by
    default, or a chosen stage; training lifts the VOC07 mAP far above the untrained head's; another stage of an
    AlexNet is refused."""
    from tests.test_detect import TINY, shapes_voc
    from transfer.detect import main as detect_main

    root = shapes_voc(tmp_path / "voc", n_train=60, n_test=20)
    common = ["--data", str(root), *TINY, f"proposals.cache_dir={tmp_path / 'cache'}", "sample.rois_per_image=64",
              "model.fc_widths=[64,64]", "proposals.max_boxes=2000", "model.init=data_dependent", "optim.lr=0.001"]

    def detect(out: str, *extra: str) -> dict:
        assert detect_main([*common, "--out", str(tmp_path / out), *extra]) == 0
        return json.loads((tmp_path / out / "metrics.json").read_text())

    net = ["--encoder", "timm:resnet18", "model.stage=layer2"]
    before, after = detect("untrained", *net, "train.max_steps=0"), detect("trained", *net, "train.max_steps=60")
    assert (after["stage"], after["stride"], after["roi_size"], after["encoder_arch"]) == ("layer2", 8, 7,
                                                                                          "timm:resnet18")
    # measured: 12.2 -> 94.1; with the batch norms on batch statistics of 2 images (model.norm_eval=false): 20.4
    assert after["map_voc07_11pt"] > before["map_voc07_11pt"] + 40, (before["map_voc07_11pt"],
                                                                     after["map_voc07_11pt"])
    assert after["config"]["model"]["norm_eval"] is True
    # norm_eval keeps a random init's reset statistics (its norms evaluate in training too); without it, the norms
    # the encoder trains on batch statistics start from the start batch's (as in classification)
    from pretext.engine.checkpoint import load_checkpoint
    for out, reset in (("untrained", True), ("batch_norms", False)):
        if out == "batch_norms":
            detect(out, *net, "model.norm_eval=false", "train.max_steps=0")
        var = load_checkpoint(tmp_path / out / "checkpoint.pt")["model"]["encoder.model.bn1.running_var"]
        assert bool((var == 1).all()) is reset
    default = detect("default", "--encoder", "torchvision:resnet18", "train.max_steps=1")
    assert (default["stage"], default["stride"]) == ("layer3", 16)


def test_batch_norms_that_never_saw_data_get_the_start_batchs_statistics() -> None:
    """estimate_unseen_norms: a batch norm at its reset statistics (a random init's) gets the start batch's mean and
    (unbiased) variance; one with statistics of its own keeps them; modes and momenta are restored."""
    from pretext.init import estimate_unseen_norms, has_unseen_norms

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Dropout(0.5), torch.nn.Conv2d(4, 5, 3), torch.nn.BatchNorm2d(5, momentum=0.3))
    trained = net[5]
    trained.running_mean.fill_(0.25)
    trained.running_var.fill_(2.0)
    net.train()
    net[3].eval()  # a mixed state, restored as it was
    x = torch.randn(6, 3, 10, 10) * 3 + 1
    assert has_unseen_norms(net)
    assert estimate_unseen_norms(net, net, x) == 1
    h = net[0](x).detach()
    assert torch.allclose(net[1].running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(net[1].running_var, h.var((0, 2, 3)), rtol=1e-4)  # unbiased, as BatchNorm keeps it
    assert torch.equal(trained.running_mean, torch.full((5,), 0.25)) and torch.equal(trained.running_var,
                                                                                      torch.full((5,), 2.0))
    assert (net[1].momentum, trained.momentum) == (0.1, 0.3)
    assert [m.training for m in net] == [True, True, True, False, True, True] and net.training
    assert not has_unseen_norms(net) and estimate_unseen_norms(net, net, x) == 0


def test_a_random_backbones_fine_tune_starts_where_its_first_update_is(tmp_path: Path) -> None:
    """A random timm ResNet, fine-tuned with the suites' data-dependent start: its batch norms get the start batch's
    statistics before the eval-mode calibration, so the first updates (batch norms on batch statistics) see logits
    of unit scale as calibrated. Without the estimate, here: training-mode logits of std 16.7 against 0.98 in eval
    mode (checked with the estimate disabled); on CIFAR-10 at 64 px a loss of 70.9 after 25 steps (4.9 with it)."""
    from transfer.classify import main as classify_main

    train, test = stripes(tmp_path / "train", 16, seed=0), stripes(tmp_path / "test", 8, seed=1)
    out = tmp_path / "random"
    assert classify_main(["--encoder", "timm:resnet18", "--data", str(train), "--test-data", str(test), "--out",
                          str(out), "train.batch_size=8", "train.progress=false", "data.workers=0", "test.crops=1",
                          "data.crop=64", "model.init=data_dependent", "model.rescale_encoder=true",
                          "model.init_images=16", "train.max_steps=0"]) == 0
    start = json.loads((out / "metrics.json").read_text())["start"]
    assert start["norms_estimated"] == 20  # resnet18: bn1, two per basic block, three per downsampling one
    assert 0.5 < start["logit_std"] < 2.0 and 0.5 < start["train_logit_std"] < 2.0, start
    # a frozen encoder's batch norms evaluate in training too: they keep the statistics they came with
    out = tmp_path / "frozen"
    assert classify_main(["--encoder", "timm:resnet18", "--data", str(train), "--test-data", str(test), "--out",
                          str(out), "train.batch_size=8", "train.progress=false", "data.workers=0", "test.crops=1",
                          "data.crop=64", "model.init=data_dependent", "model.init_images=16", "train.layers=fc8",
                          "train.max_steps=0"]) == 0
    start = json.loads((out / "metrics.json").read_text())["start"]
    assert start["norms_estimated"] == 0 and start["train_logit_std"] == pytest.approx(start["logit_std"]), start


def test_fine_tuning_heads_keep_a_backbones_batch_norms_on_running_statistics(resnet) -> None:
    """model.norm_eval (default): in training mode the encoder's batch norms still evaluate, the head trains."""
    from transfer.detect import FastRCNN
    from transfer.segment import StageFCN

    encoder, meta = resnet
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    det = FastRCNN(encoder, 7, [8, 8], 2, 0.0, "layer3", 256, 16, norm_eval=True).train()
    assert norms and not any(m.training for m in norms) and det.fc6.training and encoder.training
    det.norm_eval = False
    assert all(m.training for m in det.train().modules() if isinstance(m, torch.nn.BatchNorm2d))
    seg = StageFCN(encoder, "layer3", 256, 16, [], 3, 0.0)
    seg.norm_eval = True
    assert not any(m.training for m in seg.train().modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        assert seg(torch.randn(1, 3, 40, 56)).shape == (1, 3, 40, 56)  # scores at the input's size, from stride 16
    encoder.eval()  # the module-wide fixture as the other tests expect it


def test_context_encoder_and_autoencoder_pretrain_a_backbone_the_transfer_tasks_take(tmp_path: Path) -> None:
    """model.backbone: the context encoder on a timm ResNet's deepest stage (channel-wise FC and decoder from its
    shape) trains, exports (arch backbone, its stages) and loads, and `transfer classify` fine-tunes the export; the
    autoencoder on a torchvision model too; other methods are refused."""
    from pretext.config import ConfigError
    from pretext.engine.trainer import train
    from pretext.export import load_encoder
    from tests.conftest import tiny_config
    from transfer.classify import main as classify_main

    images = stripes(tmp_path / "u", 6, seed=9)
    net = ["data.fine_size=64", "data.load_size=68", "mask.region_bank=null"]  # the AlexNet widths: unused
    run = tmp_path / "ce"
    result = train(tiny_config(images, "train.max_steps=3", "model.backbone=timm:resnet18", *net), run)
    assert result.step == 3
    encoder, meta = load_encoder(run)
    assert (meta["arch"], meta["spec"], meta["input_size"]) == ("backbone", {"backbone": "timm:resnet18",
                                                                              "input_size": 64}, 64)
    assert meta["stages"]["layer4"] == {"channels": 512, "stride": 32}
    with torch.no_grad():
        assert encoder.eval()(torch.zeros(1, 3, 64, 64), out="layer3").shape == (1, 256, 4, 4)
    train_set, test_set = stripes(tmp_path / "train", 8, seed=0), stripes(tmp_path / "test", 4, seed=1)
    assert classify_main(["--encoder", str(run), "--data", str(train_set), "--test-data", str(test_set), "--out",
                          str(tmp_path / "ft"), "train.max_steps=2", "train.batch_size=4", "train.progress=false",
                          "data.workers=0", "test.crops=1", "model.fc_widths=[]", "model.init=kaiming"]) == 0
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert (m["encoder_arch"], m["stage"], m["pool"], m["encoder_method"]) == ("backbone", "layer4", "avg",
                                                                               "context_encoder")
    ae = train(tiny_config(images, "train.max_steps=2", "model.backbone=torchvision:resnet18", *net,
                           preset="demo_autoencoder"), tmp_path / "ae")
    encoder, meta = load_encoder(tmp_path / "ae")
    assert ae.step == 2 and meta["method"] == "autoencoder"
    # encoder.json keeps its keys sorted (bn1, conv1, layer1 ...): detection's default stage follows the depth order
    from transfer.detect import detection_stage

    assert detection_stage(encoder, meta, None, "ae") == ("layer3", 256, 16)
    with pytest.raises(ConfigError, match="must be timm:NAME or torchvision:NAME"):
        tiny_config(images, *net, "model.backbone=resnet18")
    with pytest.raises(ConfigError, match="not of method=supervised"):
        tiny_config(images, "model.backbone=timm:resnet18", *net, preset="demo_supervised")


def test_the_layers_a_stage_does_not_reach_are_found_and_frozen() -> None:
    """unreached_parameters: a torchvision ResNet's layer4 and classifier do not reach layer3 (and would get no
    gradient, which DDP refuses); everything up to layer3 does; the gradients already there are left as they were."""
    from pretext.models.backbones import build_backbone, freeze_parameters, unreached_parameters

    backbone, _, _ = build_backbone("torchvision:resnet18")
    marker = torch.ones_like(backbone.model.conv1.weight)
    backbone.model.conv1.weight.grad = marker
    names = unreached_parameters(backbone, "layer3", 64)
    assert "model.fc.weight" in names and "model.layer4.0.conv1.weight" in names
    assert not any(n.startswith(("model.layer3.", "model.conv1.", "model.bn1.")) for n in names)
    assert backbone.model.conv1.weight.grad is marker and backbone.training
    assert unreached_parameters(backbone, "layer4", 64) == ["model.fc.weight", "model.fc.bias"]
    freeze_parameters(backbone, names)
    assert not backbone.model.fc.weight.requires_grad and backbone.model.layer3[0].conv1.weight.requires_grad
