"""`cebench transfer segment`: FCN-32s semantic segmentation on an exported AlexNet encoder (Table 2's third column),
or an FCN head on one stage of any backbone (timm:NAME, torchvision:NAME).

Long et al.'s FCN-32s on AlexNet, as the context-encoder paper ran it (`../shared/PROTOCOLS.md`):

- The encoder with conv1 padded by 100 px (`model.conv1_pad`; the 64 px small variant gets the equivalent padding,
  half its pool5 receptive grid in pixels) and every max pooling in ceil mode; fc6 as a k x k convolution over
  pool5 (k = the encoder's pool5 grid: 6 for the 227 px AlexNet), fc7 as 1 x 1, both ReLU + dropout; a 1 x 1
  score layer (C classes, background included; zero-initialised as FCN); a fixed bilinear up-convolution (stride
  S, the encoder's total stride, 32 for AlexNet; kernel 2S - 1 = 63 as FCN's released AlexNet net, which makes the
  offset whole, where "64" in the protocol text would leave output and input half a pixel apart) and the crop
  back to the input size at the offset that aligns output and input pixels (computed from the layers as FCN's
  coord_map: 18 for AlexNet). fc6/fc7 are new (N(0, `model.fc_std`)) or converted from a classifier's fully
  connected weights
  (`model.fc_from`: a `cebench transfer classify` run, or a torchvision AlexNet state dict).
- Loss: per-pixel softmax cross-entropy, label 255 ignored, averaged over an image's labelled pixels
  (`loss.reduction=mean`, as FCN's released AlexNet net) or summed (`sum`, FCN's later unnormalised loss, which
  needs a learning rate smaller by about the pixels per image);
  each update averages the gradients of `train.batch_size` images (gradient accumulation: images of any size,
  one at a time). SGD with momentum; Caffe's 2x bias learning rate in the paper preset.
- Training images at their size (FCN) or with the shorter side at `data.scale` (the CPU presets), mirrored at
  random; label maps resized with nearest neighbours.
- Test: every image at the test scale; scores upsampled (bilinear) to the original size where it was rescaled,
  argmax; one confusion matrix over the split gives mIoU, pixel accuracy, mean accuracy and per-class IoU
  (`transfer.segmentation_eval`); the predictions are written as VOC-palette PNGs, with the scored ids in
  predictions/ids.txt, that `cebench evaluate segmentation --ids predictions/ids.txt` re-scores to the same
  numbers. Test images that are also training images (by id) are dropped and counted.

Data: any layout of `transfer.segmentation_data` (VOC SegmentationClass, SBD, COCO masks, images/ + masks/).
Any other backbone, or another stage than an AlexNet's pool5 (`model.stage`): fc6 as a 3 x 3 convolution (padding 1)
on the stage's map, fc7 and the score layer 1 x 1 as above (`model.fc_widths=[]`: the score layer alone, a linear
probe of every position), and the scores upsampled bilinearly from the stage's stride to the input size (no
padding or crop: the backbone's own geometry).

A run directory holds config.json, checkpoint.pt (atomic; `train.resume=true` continues exactly), metrics.csv
(+ TensorBoard), predictions/ and metrics.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pretext.config import ConfigError, _opt
from pretext.data.dataset import SampleKey, build_loader
from pretext.engine.checkpoint import CHECKPOINT, atomic_write_text
from pretext.init import within_layer_init
from pretext.models.kernels import to_channels_last

from .backbones import default_layer, encoder_stages
from .finetune import (NORM_EVAL_DOC, FrozenBlocks, ImageLoading, TaskCommand, TaskConfig, TaskData, TaskInputs,
                       TaskTuner, run_fine_tune, root_to_test)
from .segmentation_data import IGNORE, SegmentationSet, open_segmentation_set, write_label_png
from .segmentation_eval import confusion, segmentation_scores

log = logging.getLogger("cebench")

PAPER_CONV1_PAD = 100  # FCN's padding of conv1 for the 227 px AlexNet


# --- configuration ------------------------------------------------------------------------------

@dataclass
class SegDataConfig(ImageLoading):
    """Image scale, mirrors and loading."""

    scale: int | None = _opt(None, min=8, doc="shorter side of training images; null = their own size (FCN)")
    max_size: int = _opt(1000, min=8, doc="with data.scale: cap on the longer side")


@dataclass
class SegModelConfig:
    """The new layers."""

    fc_widths: list[int] = _opt([4096, 4096], min=1, doc="fc6 and fc7 widths (as convolutions); [] = the score "
                                                           "layer alone on the stage (another backbone's stage only)")
    norm_eval: bool = _opt(True, doc=NORM_EVAL_DOC)
    stage: str | None = _opt(None, doc="encoder stage the head reads; null = pool5 of the suite's AlexNets (FCN-32s), "
                                       "the deepest stage of another backbone (timm:NAME, torchvision:NAME)")
    dropout: float = _opt(0.5, min=0.0, max=0.99)
    fc_std: float = _opt(0.01, min=0.0, doc="N(0, fc_std) of new fc6/fc7")
    init: str = _opt("gaussian", choices=("gaussian", "data_dependent"),
                     doc="new fc6/fc7: N(0, fc_std), or data_dependent: then scaled to unit pre-activations on "
                         "training images (Krahenbuhl et al.'s within-layer init), whatever the encoder's scale; the "
                         "score layer starts at zero either way")
    init_images: int = _opt(8, min=1, doc="training images (whole, at the training scale) for data_dependent")
    fc_from: str | None = _opt(None, doc="fc6/fc7 converted from a classifier: a `transfer classify` run directory "
                                         "(or its checkpoint.pt) or a torchvision AlexNet state dict (.pth)")
    conv1_pad: int | None = _opt(None, min=0, doc="conv1 padding; null = 100 (227 px AlexNet) or the small "
                                                   "variant's equivalent")


@dataclass
class SegLossConfig:
    """Per-pixel softmax cross-entropy."""

    reduction: str = _opt("mean", choices=("mean", "sum"), doc="over an image's labelled pixels; images of an update "
                                                               "are averaged")


@dataclass
class SegTestConfig:
    """Inference."""

    scale: int | None = _opt(None, min=8, doc="test shorter side; null = data.scale")
    save_predictions: bool = _opt(True, doc="write predictions/<id>.png (VOC palette)")


@dataclass
class SegmentConfig(TaskConfig):
    """Everything `cebench transfer segment` needs besides its inputs."""

    PRESETS = "segment"

    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    test: SegTestConfig = field(default_factory=SegTestConfig)

    def test_scale(self) -> int | None:
        """The test shorter side (None = original size)."""
        return self.test.scale if self.test.scale is not None else self.data.scale

    def check_task(self) -> None:
        """Two hidden widths or none, and new fc6/fc7 either calibrated or converted from a classifier."""
        if len(self.model.fc_widths) not in (0, 2):
            raise ConfigError(f"model.fc_widths must list 2 widths (fc6, fc7) or none (the score layer alone), got "
                              f"{self.model.fc_widths}")
        if self.model.init == "data_dependent" and self.model.fc_from:
            raise ConfigError("model.init=data_dependent starts new fc6/fc7; with model.fc_from they are converted "
                              "from a classifier instead: choose one")


# --- the model ------------------------------------------------------------------------------------

def bilinear_kernel(size: int) -> torch.Tensor:
    """(size, size) bilinear interpolation weights of an up-convolution (FCN's upsample_filt)."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    w = 1 - (og - centre).abs() / factor
    return (w[:, None] * w[None, :]).float()


def _kernel_stride_pad(layer: nn.Module) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of a conv or pooling layer; None for pointwise layers (ReLU, LRN)."""
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
        k, s, p = (v[0] if isinstance(v, tuple) else v for v in (layer.kernel_size, layer.stride, layer.padding))
        return int(k), int(s), int(p)
    return None


def coord_map(layers: list[tuple[int, int, int]]) -> tuple[int, float]:
    """(a, b) with input pixel = a * output pixel + b through a chain of (kernel, stride, padding) layers, the
    centre of each receptive field (FCN's coord_map)."""
    a, b = 1, 0.0
    for k, s, p in layers:
        b += a * ((k - 1) / 2 - p)
        a *= s
    return a, b


def up_geometry(stride: int, b: float) -> tuple[int, int]:
    """(kernel, crop offset) of the up-convolution for scores whose cell j is centred on input pixel stride * j + b.
    Up-convolution pixel y sits at input pixel y - (kernel - 1) / 2 + b, so the crop is (kernel - 1) / 2 - b: the
    odd kernel 2S - 1 when that is a whole number (FCN-AlexNet's 63: offset 18, exactly aligned), else 2S; a
    fractional offset left by unusual layers is rounded (half a pixel off)."""
    for kernel in (2 * stride - 1, 2 * stride):
        offset = (kernel - 1) / 2 - b
        if offset == int(offset):
            return kernel, int(offset)
    return 2 * stride, int(np.floor(offset + 0.5))


class SegmentationHead(FrozenBlocks):
    """encoder -> fc6 -> fc7 -> score; blocks outside `trained` are frozen and in eval mode."""

    BLOCKS = ("encoder", "fc6", "fc7", "score")
    TRAINED = {"fc8": ("score",), "fc6-8": ("fc6", "fc7", "score"), "all": BLOCKS}
    trained = BLOCKS


class FCN(SegmentationHead):
    """FCN-32s on an AlexNet encoder: conv1..pool5 (padded, ceil-mode pools) -> fc6 (k x k conv) -> fc7 (1 x 1)
    -> score (1 x 1) -> fixed bilinear up-convolution -> crop to the input size."""

    def __init__(self, encoder: nn.Module, widths: list[int], classes: int, dropout: float,
                 conv1_pad: int | None = None) -> None:
        super().__init__()
        grid = int(encoder.feature_shapes()["pool5"][1])  # at the encoder's own input size, before padding
        conv1 = encoder.features[0]
        if conv1_pad is None:
            if encoder.spec.small:
                a, _ = coord_map([t for t in map(_kernel_stride_pad, encoder.features) if t])
                conv1_pad = a * grid // 2 + (conv1.kernel_size[0] - 1) // 2
            else:
                conv1_pad = PAPER_CONV1_PAD
        conv1.padding = (conv1_pad, conv1_pad)
        for layer in encoder.features:
            if isinstance(layer, nn.MaxPool2d):
                layer.ceil_mode = True
        self.encoder, self.classes, self.conv1_pad = encoder, classes, conv1_pad
        self.fc6 = nn.Sequential(nn.Conv2d(encoder.out_channels, widths[0], grid), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))
        self.fc7 = nn.Sequential(nn.Conv2d(widths[0], widths[1], 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.score = nn.Conv2d(widths[1], classes, 1)
        chain = [t for t in map(_kernel_stride_pad, encoder.features) if t] + [(grid, 1, 0), (1, 1, 0), (1, 1, 0)]
        self.stride, b = coord_map(chain)
        self.up_kernel, self.offset = up_geometry(self.stride, b)
        if self.offset < 0:
            raise ValueError(f"conv1 padding {conv1_pad} is too small for this encoder (crop offset {self.offset})")
        self.register_buffer("up_weight", bilinear_kernel(self.up_kernel).expand(classes, 1, -1, -1).contiguous(),
                             persistent=False)

    def coarse(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at stride S (before the up-convolution)."""
        return self.score(self.fc7(self.fc6(self.encoder(x, out="pool5"))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) class scores of (B, 3, H, W) normalised images."""
        return self.upsample(self.coarse(x), *x.shape[-2:])

    def upsample(self, s: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Coarse scores -> the fixed bilinear up-convolution -> the (h, w) crop aligned with the input."""
        up = F.conv_transpose2d(s, self.up_weight.to(s.dtype), stride=self.stride, groups=self.classes)
        o = self.offset
        if up.shape[-2] < o + h or up.shape[-1] < o + w:
            raise ValueError(f"an input of {w}x{h} px gives {up.shape[-1]}x{up.shape[-2]} scores, too few for the crop "
                             f"at offset {o}: raise model.conv1_pad")
        return up[:, :, o: o + h, o: o + w]


class StageFCN(SegmentationHead):
    """An FCN head on one stage of any backbone: stage map -> fc6 (3 x 3 conv) -> fc7 (1 x 1) -> score (1 x 1)
    -> bilinear upsampling to the input size (the score layer alone without fc widths)."""

    conv1_pad, offset, up_kernel = None, None, None  # FCN-32s' padding and crop: not used

    def __init__(self, encoder: nn.Module, stage: str, channels: int, stride: int, widths: list[int], classes: int,
                 dropout: float) -> None:
        super().__init__()
        self.encoder, self.stage, self.stride, self.classes = encoder, stage, stride, classes
        if widths:
            self.fc6 = nn.Sequential(nn.Conv2d(channels, widths[0], 3, padding=1), nn.ReLU(inplace=True),
                                     nn.Dropout(dropout))
            self.fc7 = nn.Sequential(nn.Conv2d(widths[0], widths[1], 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        else:
            self.fc6, self.fc7 = nn.Identity(), nn.Identity()
        self.score = nn.Conv2d(widths[1] if widths else channels, classes, 1)

    def coarse(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the stage's stride."""
        return self.score(self.fc7(self.fc6(self.encoder(x, out=self.stage))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) class scores of (B, 3, H, W) normalised images."""
        return F.interpolate(self.coarse(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def head_convs(model: FCN | StageFCN) -> list[nn.Conv2d]:
    """The new fc6 and fc7 convolutions of either head (none for a score layer alone)."""
    return [b[0] for b in (model.fc6, model.fc7) if isinstance(b, nn.Sequential)]


def stage_geometry(encoder: nn.Module, meta: dict, stage: str, where: str) -> tuple[int, int]:
    """(channels, stride) of a backbone stage, checked against the encoder's stages."""
    stages = meta.get("stages") or {}
    if stage not in stages:
        names = encoder_stages(encoder) if stages else ()
        if not names:
            raise ValueError(f"{where}: an FCN head needs an AlexNet or a backbone whose stages have strides (timm, "
                             f"torchvision, model.backbone), not a {meta.get('arch')} encoder")
        raise ValueError(f"{where}: model.stage={stage!r} is not a stage of this {meta.get('arch')} encoder; choose "
                         f"from {', '.join(names)}")
    return int(stages[stage]["channels"]), int(stages[stage]["stride"])


def fc_as_conv(weight: torch.Tensor, in_channels: int, kernel: int) -> torch.Tensor:
    """A fully connected layer's (out, in_channels * k * k) weights as a (out, in_channels, k, k) convolution over
    a k x k map flattened channel-major (torch's flatten of (C, k, k)): the same function of the input."""
    if weight.shape[1] != in_channels * kernel * kernel:
        raise ValueError(f"fc weights of {weight.shape[1]} inputs cannot be a {kernel}x{kernel} convolution over "
                         f"{in_channels} channels ({in_channels * kernel * kernel} inputs)")
    return weight.reshape(weight.shape[0], in_channels, kernel, kernel)


def read_fc_weights(path: Path) -> dict[str, torch.Tensor]:
    """fc6/fc7 weights and biases of a classifier: a `transfer classify` run (checkpoint.pt) or a torchvision
    AlexNet state dict; loaded with weights_only=True."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"model.fc_from: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        raise ValueError(f"model.fc_from: cannot load {path} with weights_only=True: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    sd = state.get("model", state) if isinstance(state, dict) else {}
    names = [("fc6.fc", "fc7.fc"), ("classifier.1", "classifier.4"), ("module.classifier.1", "module.classifier.4")]
    for six, seven in names:
        keys = {f"fc6.{k}": f"{six}.{k}" for k in ("weight", "bias")} | {f"fc7.{k}": f"{seven}.{k}"
                                                                         for k in ("weight", "bias")}
        if all(v in sd for v in keys.values()):
            return {k: sd[v] for k, v in keys.items()}
    raise ValueError(f"model.fc_from: {path} has no fc6/fc7 weights (looked for fc6.fc.*/fc7.fc.* of a classify "
                     f"checkpoint and classifier.1/.4 of a torchvision AlexNet)")


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-pixel softmax cross-entropy, 255 ignored, summed over the labelled pixels or averaged over them (0 for
    an image with none)."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
    if reduction == "sum":
        return total
    return total / (labels != IGNORE).sum().clamp(min=1)


# --- data ---------------------------------------------------------------------------------------

def scale_factor(width: int, height: int, target: int | None, max_size: int) -> float:
    """Shorter side to `target` unless the longer side would pass `max_size`; 1 when `target` is None."""
    if target is None:
        return 1.0
    return min(target / min(width, height), max_size / max(width, height))


def _resized(img: Image.Image, labels: np.ndarray | None, s: float) -> tuple[Image.Image, np.ndarray | None]:
    if s == 1.0:
        return img, labels
    size = (max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s)))
    lab = None if labels is None else np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
    return img.resize(size, Image.BILINEAR), lab


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class TrainPairs(Dataset):
    """Training items keyed by the resumable sampler: (3, H, W) uint8 image and (H, W) int64 labels, rescaled and
    mirrored by the key's augmentation seed."""

    def __init__(self, data: SegmentationSet, cfg: SegmentConfig) -> None:
        self.data, self.cfg = data, cfg

    def __len__(self) -> int:
        return len(self.data.ids)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        index, aug = key
        d = self.cfg.data
        rng = np.random.default_rng(list(aug))
        img, labels = self.data.pair(index, d.max_image_pixels)
        img, labels = _resized(img, labels, scale_factor(*img.size, d.scale, d.max_size))
        if d.flip and rng.random() < 0.5:
            img, labels = img.transpose(Image.FLIP_LEFT_RIGHT), labels[:, ::-1]
        return _tensor(img), torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))


def as_list(items: list) -> list:
    """Collate that keeps a minibatch's images of different sizes apart."""
    return items


class TestImages(Dataset):
    """Item i: (i, (3, H, W) uint8 at the test scale, (H0, W0) uint8 labels at the original size)."""

    def __init__(self, data: SegmentationSet, cfg: SegmentConfig) -> None:
        self.data, self.cfg = data, cfg

    def __len__(self) -> int:
        return len(self.data.ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        d = self.cfg.data
        img, labels = self.data.pair(i, d.max_image_pixels)
        img, _ = _resized(img, None, scale_factor(*img.size, self.cfg.test_scale(), d.max_size))
        return i, _tensor(img), torch.from_numpy(labels)


# --- the fine-tuning run -------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SegmentInputs(TaskInputs[SegmentationSet]):
    """The encoder, the training and test sets, the run directory."""

    test_dropped: int = 0  # test images left out because they are training images

    def test_record(self) -> dict:
        return {**super().test_record(), "dropped_training_images": self.test_dropped}


class Segmenter(TaskTuner):
    """Fine-tunes one encoder for segmentation into `inputs.out`, resumably, on the shared engine."""

    TASK, PROGRESS = "segmentation", "segment"

    def prepare(self, encoder: nn.Module) -> None:
        self.stage = self.cfg.model.stage or default_layer(encoder)
        self._check_head(encoder)
        self.train_set = TrainPairs(self.inputs.train, self.cfg)

    def predict_test(self) -> tuple[tuple[np.ndarray, Path | None], dict[str, float]]:
        pred_dir = self.inputs.out / "predictions" if self.cfg.test.save_predictions else None
        conf, per_image = self.evaluate(self.inputs.test, pred_dir)
        return (conf, pred_dir), {"inference_seconds_per_image": per_image}

    def score_test(self, predictions: tuple[np.ndarray, Path | None]) -> dict:
        conf, pred_dir = predictions
        return {**segmentation_scores(conf, self.inputs.test.classes), "confusion": conf.tolist(),
                "predictions": str(pred_dir) if pred_dir else None}

    def metrics_extra(self, seconds: dict[str, float]) -> dict:
        images = max(self.step, 1) * self.cfg.train.batch_size * self.env.world_size
        return {"head": "fcn32s" if isinstance(self.model, FCN) else "stage",
                "conv1_pad": self.model.conv1_pad, "crop_offset": self.model.offset, "stride": self.model.stride,
                "train_seconds_per_image": round(seconds["train_seconds"] / images, 5) if self.step else None}

    def record_extra(self) -> dict:
        return {"classes": list(self.inputs.train.classes)}

    def _check_head(self, encoder: nn.Module) -> None:
        """FCN-32s on an AlexNet's pool5 (2 fc widths); the stage head on another backbone."""
        m, where = self.cfg.model, str(self.inputs.encoder)
        if self.meta.get("arch") == "alexnet":
            if self.stage != "pool5" or len(m.fc_widths) != 2:
                raise ValueError(f"{where}: FCN-32s on an AlexNet encoder reads pool5 through fc6 and fc7: set "
                                 f"model.stage to pool5 (or null) and 2 model.fc_widths, got {self.stage!r} and "
                                 f"{m.fc_widths}")
            return
        stage_geometry(encoder, self.meta, self.stage, where)
        for key, value in (("model.conv1_pad", m.conv1_pad), ("model.fc_from", m.fc_from)):
            if value is not None:
                raise ValueError(f"{where}: {key} is for FCN-32s on an AlexNet encoder, not a {self.meta.get('arch')} "
                                 f"backbone")

    def _build_model(self, encoder: nn.Module) -> FCN | StageFCN:
        m = self.cfg.model
        torch.manual_seed(self.cfg.train.seed)
        classes = len(self.inputs.train.classes)
        if self.meta.get("arch") == "alexnet":
            model = FCN(encoder, m.fc_widths, classes, m.dropout, m.conv1_pad)
        else:
            channels, stride = stage_geometry(encoder, self.meta, self.stage, str(self.inputs.encoder))
            model = StageFCN(encoder, self.stage, channels, stride, m.fc_widths, classes, m.dropout)
        model.norm_eval = m.norm_eval
        for block in head_convs(model):
            nn.init.normal_(block.weight, 0.0, m.fc_std)
            nn.init.zeros_(block.bias)
        nn.init.zeros_(model.score.weight)  # FCN: the score layer starts at zero
        nn.init.zeros_(model.score.bias)
        if m.fc_from and self.state is None:
            self._convert_fc(model, Path(m.fc_from))
        model.to(self.env.device)
        stage = getattr(model, "stage", "pool5")  # one image at a time: their statistics averaged
        self.start_norms(model, lambda xs: [model.encoder(x, out=stage) for x in xs], self._start_images)
        if m.init == "data_dependent" and self.state is None and not m.fc_from and head_convs(model):
            self._data_dependent_init(model)
        model.freeze(self.cfg.train.layers)
        return to_channels_last(model, self.env.device) if self.cfg.train.channels_last else model

    def _start_images(self) -> list[torch.Tensor]:
        """`model.init_images` training images of a fixed shuffle (normalised, one tensor each): what the start
        sees."""
        n = min(self.cfg.model.init_images, len(self.inputs.train.ids))
        order = np.random.default_rng(self.cfg.train.seed).permutation(len(self.inputs.train.ids))[:n]
        pairs = TrainPairs(self.inputs.train, dataclasses.replace(self.cfg, data=dataclasses.replace(
            self.cfg.data, flip=False)))
        return [self._normalise(pairs[(int(i), (0,))][0][None]) for i in order]

    def _data_dependent_init(self, model: FCN | StageFCN) -> None:
        """fc6 and fc7 at unit pre-activations on the start images."""
        images = self._start_images()
        was_training = model.training
        model.eval()
        try:
            within_layer_init(model, lambda xs: [model.coarse(x) for x in xs], images, layers=head_convs(model))
        finally:
            model.train(was_training)

    def _convert_fc(self, model: FCN, path: Path) -> None:
        fc = read_fc_weights(path)
        conv6, conv7 = model.fc6[0], model.fc7[0]
        w6 = fc_as_conv(fc["fc6.weight"], conv6.in_channels, conv6.kernel_size[0])
        w7 = fc_as_conv(fc["fc7.weight"], conv7.in_channels, 1)
        if w6.shape != conv6.weight.shape or w7.shape != conv7.weight.shape:
            raise ValueError(f"model.fc_from: {path} has fc6/fc7 of shapes {tuple(w6.shape)}, {tuple(w7.shape)} but "
                             f"model.fc_widths={self.cfg.model.fc_widths} needs {tuple(conv6.weight.shape)}, "
                             f"{tuple(conv7.weight.shape)}")
        with torch.no_grad():
            conv6.weight.copy_(w6)
            conv6.bias.copy_(fc["fc6.bias"])
            conv7.weight.copy_(w7)
            conv7.bias.copy_(fc["fc7.bias"])

    def train_step(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """One SGD update from the averaged gradients of the batch's images (one forward/backward each)."""
        self.begin_step()
        self.optimizer.zero_grad(set_to_none=True)
        total, labelled = 0.0, 0
        for k, (image, labels) in enumerate(batch):
            last = k == len(batch) - 1
            sync = contextlib.nullcontext() if last or self.net is self.model else self.net.no_sync()
            with sync:
                with self.autocast():
                    logits = self.net(self._normalise(image[None]))
                labels = labels[None].to(self.env.device)
                loss = segmentation_loss(logits, labels, self.cfg.loss.reduction) / len(batch)
                self.backward(loss)
            total += float(loss.detach())
            labelled += int((labels != IGNORE).sum())
        self.clip_and_step(self.optimizer, self.cfg.optim.grad_clip)
        if self.scaler:
            self.scaler.update()
        self.step += 1
        return {"loss": total, "labelled_pixels": labelled}

    def train_loader(self) -> DataLoader:
        t = self.cfg.train
        return build_loader(self.train_set, t.batch_size, t.seed, self.cfg.data.workers, self.env.rank,
                            self.env.world_size, self.step, pin_memory=self.env.device.type == "cuda",
                            collate_fn=as_list)

    @torch.no_grad()
    def predict(self, image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(H0, W0) uint8 class indices of one (3, H, W) uint8 image; scores resized to `size` (H0, W0)."""
        with self.autocast():
            logits = self.model(self._normalise(image[None]))
        logits = logits.float()
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits[0].argmax(0).to(torch.uint8).cpu().numpy()

    @torch.no_grad()
    def evaluate(self, data: SegmentationSet, predictions: Path | None) -> tuple[np.ndarray, float]:
        """Confusion matrix over `data` (and the predictions as PNGs under `predictions`); seconds per image."""
        self.model.eval()
        n = len(self.inputs.train.classes)
        conf = np.zeros((n, n), dtype=np.int64)
        if predictions is not None:
            predictions.mkdir(parents=True, exist_ok=True)
        loader = DataLoader(TestImages(data, self.cfg), batch_size=None, num_workers=self.cfg.data.workers)
        t0 = time.perf_counter()
        for index, image, labels in tqdm(loader, desc="segment", disable=not self.cfg.train.progress,
                                         dynamic_ncols=True):
            gt = labels.numpy()
            pred = self.predict(image, gt.shape)
            confusion(gt, pred, n, conf)
            if predictions is not None:
                write_label_png(predictions / f"{data.ids[int(index)]}.png", pred)
        if predictions is not None:  # the scored ids: `cebench evaluate segmentation --ids` re-scores exactly these
            atomic_write_text(predictions / "ids.txt", "\n".join(data.ids) + "\n")
        self.model.train()
        return conf, (time.perf_counter() - t0) / max(len(data.ids), 1)


def run_segment(cfg: SegmentConfig, inputs: SegmentInputs) -> dict | None:
    """Fine-tune, predict and score on rank 0, write metrics.json (+ predictions/); the record (None off rank 0)."""
    return run_fine_tune(Segmenter, cfg, inputs)


# --- the command line -----------------------------------------------------------------------------

def open_inputs(args: argparse.Namespace, cfg: SegmentConfig) -> SegmentInputs:
    """Training and test splits; testing on the training split is refused."""
    test_root = root_to_test(args)
    seed = cfg.train.seed
    train = open_segmentation_set(args.data, args.train_split, args.classes, args.max_images[0], seed)
    test = open_segmentation_set(test_root, args.test_split, args.classes, args.max_images[1], seed)
    test, dropped = drop_training_images(train, test)
    return SegmentInputs(args.encoder, train, test, args.out, args.max_images, args.weights, test_dropped=dropped)


def drop_training_images(train: SegmentationSet, test: SegmentationSet) -> tuple[SegmentationSet, int]:
    """The test set without the images (by id) that are also training images, and how many were dropped (e.g. SBD
    train against VOC2012 val, as FCN's seg11valid); a test set made only of training images is an error."""
    seen = set(train.ids)
    keep = [i for i, k in enumerate(test.ids) if k not in seen]
    dropped = len(test.ids) - len(keep)
    if not keep:
        raise ValueError(f"{test.root} (split {test.split}): every test image is also a training image "
                         f"({train.root}, split {train.split})")
    if dropped:
        example = next(k for k in test.ids if k in seen)
        log.warning("%d test image(s) of %s (split %s) are also training images and are not tested, e.g. %s",
                    dropped, test.root, test.split, example)
    return test.subset(keep), dropped


def summary(record: dict) -> str:
    """One line: the test numbers."""
    per_image = record.get("train_seconds_per_image")
    return (f"{record['layers']} fine-tuned {record['steps']} steps on {record['train']['n_images']} images"
            + (f" ({per_image:.3f} s per training image)" if per_image is not None else "")
            + f", tested on {record['test']['n_images']}: mIoU {record['miou']:.2f}, pixel accuracy "
              f"{record['pixel_acc']:.2f}, mean accuracy {record['mean_acc']:.2f} "
              f"({record['inference_seconds_per_image']:.3f} s per test image)")


COMMAND = TaskCommand(
    "FCN semantic segmentation", "segment_demo",
    TaskData("segmentation root: VOC (ImageSets/Segmentation, SegmentationClass, JPEGImages), SBD (cls/, img/), "
             "COCO (annotations/instances_<split>.json) or images/ + masks/", "train", "val",
             classes="class list for roots without classes.txt, in label-value order (background first or added; "
                     "default for VOC and SBD roots: the 20 VOC classes)"),
    SegmentConfig, lambda cfg, args: run_segment(cfg, open_inputs(args, cfg)), summary)
build_parser, main = COMMAND.build_parser, COMMAND.main


if __name__ == "__main__":
    raise SystemExit(main())
