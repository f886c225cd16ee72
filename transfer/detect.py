"""`cebench transfer detect`: Fast R-CNN detection on an exported AlexNet encoder (Table 2's detection column), or
on one stage of any backbone (timm:NAME, torchvision:NAME).

Girshick's Fast R-CNN as the context-encoder paper ran it (`../shared/PROTOCOLS.md`): the encoder up to conv5,
RoI max pooling (`torchvision.ops.roi_pool`, which equals Caffe's) to the encoder's pool5 grid (6x6 for the
227 px AlexNet), new fc6 -> fc7 with dropout, a (C+1)-way classifier and class-specific box regression.

- Training images: shorter side a random choice of `data.scales` (longer side at most `data.max_size`), mirrored
  at random; each minibatch holds `train.batch_size` images x `sample.rois_per_image` RoIs, `sample.fg_fraction`
  of them foreground (IoU >= `sample.fg_iou` with a ground-truth box, which are added to the proposals), the
  rest background (IoU in [`bg_iou_low`, `bg_iou_high`)). Difficult boxes are left out of training, as in
  py-faster-rcnn; images without a usable box are skipped and counted.
- Loss: softmax cross-entropy over the RoIs plus smooth L1 (beta 1) on the foreground RoIs' class-specific box
  deltas, normalised by `model.bbox_stds`, summed and divided by the number of RoIs.
- Inference: every proposal of a test image at `test.scale`, softmax scores, class-specific boxes clipped to the
  image; per class score > `test.score_thresh` and NMS at `test.nms`, then at most `test.max_per_image`.
- Proposals: selective search (fast mode; `transfer.proposals`, cached on disk) or precomputed files
  (`--train-proposals` / `--test-proposals`: Fast R-CNN .mat, JSON or .npz).
- Data: a VOC-format root, or a COCO root (`annotations/instances_<split>.json`, images in `<split>/`; classes are
  its categories, crowd regions count as difficult; `transfer.coco.read_coco_detection`).
- Scores: the VOC07 detection AP (11-point and area; `transfer.detection_eval`) on the test images; on a whole
  VOC split the devkit results files `comp4_det_<split>_<cls>.txt` are written too, which
  `cebench evaluate detection` re-scores to the same numbers. On COCO data also COCO's AP@[.5:.95], AP50 and
  AP75 (pycocotools' COCOeval on the tested images) and the results file coco_results.json.

Another backbone: RoI max pooling on `model.stage` (default: the deepest stage of stride <= 16, as conv5 of AlexNet
and the C4 stage of a ResNet) at its stride, to a `model.roi_size` grid (default 7), then the same head.

Boxes inside are float [x1, y1, x2, y2] in 0-based pixel coordinates with exclusive x2/y2 (torchvision): a VOC
box xmin..xmax (1-based, inclusive) is [xmin - 1, xmax). A run directory holds config.json, checkpoint.pt (atomic;
`train.resume=true` continues exactly), metrics.csv (+ TensorBoard), detections and metrics.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, roi_pool
from tqdm import tqdm

from pretext.config import ConfigError, _opt
from pretext.data.dataset import SampleKey, build_loader
from pretext.data.images import load_rgb
from pretext.engine.checkpoint import atomic_write_text
from pretext.init import data_dependent_init
from pretext.models.kernels import to_channels_last

from .backbones import encoder_stages
from .coco import coco_detection_metrics, is_coco_root, read_coco_detection, to_coco_results
from .detection_eval import ImageObjects, read_detection_annotations, voc_detection_ap, write_det_results
from .features import is_voc_root
from .finetune import (NORM_EVAL_DOC, FrozenBlocks, ImageLoading, TaskCommand, TaskConfig, TaskData, TaskInputs,
                       TaskTuner, fc_block, run_fine_tune, root_to_test)
from .finetune import RESUME_FREE as FINE_TUNE_RESUME_FREE
from .proposals import ProposalSettings, compute_proposals, load_precomputed
from .voc import read_class_list, read_split_ids

log = logging.getLogger("cebench")

BACKBONE_ROI_SIZE = 7  # RoI grid on another backbone's stage (torchvision's Faster R-CNN heads: 7 x 7)


# --- configuration ------------------------------------------------------------------------------

@dataclass
class DetDataConfig(ImageLoading):
    """Image scales, mirrors and loading."""

    scales: list[int] = _opt([600], min=8, doc="training shorter sides, one drawn per image")
    max_size: int = _opt(1000, min=8, doc="cap on the longer side")


@dataclass
class ProposalConfig:
    """Selective search (when no precomputed proposals are given)."""

    mode: str = _opt("fast", choices=("fast", "quality"))
    min_size: int = _opt(20, min=1, doc="drop proposals narrower or lower than this (px)")
    max_boxes: int = _opt(2000, min=1)
    max_side: int | None = _opt(500, min=16, doc="run on a copy with the longer side at most this; null = full size")
    workers: int = _opt(2, min=0, doc="processes computing missing proposals")
    cache_dir: str | None = _opt(None, doc="null = $CEBENCH_CACHE/proposals or ~/.cache/cebench/proposals")


@dataclass
class DetModelConfig:
    """The new layers."""

    fc_widths: list[int] = _opt([4096, 4096], min=1, doc="fc6 and fc7 widths")
    dropout: float = _opt(0.5, min=0.0, max=0.99)
    roi_size: int | None = _opt(None, min=1, doc="RoI pooling grid; null = the encoder's pool5 grid (AlexNet), 7 "
                                                 "for another backbone")
    norm_eval: bool = _opt(True, doc=NORM_EVAL_DOC)
    stage: str | None = _opt(None, doc="encoder stage the RoIs are pooled from; null = conv5 of the suite's AlexNets, "
                                       "the deepest stage of stride <= 16 of another backbone")
    init: str = _opt("gaussian", choices=("gaussian", "data_dependent"),
                     doc="fc6/fc7 N(0, 0.01) (Fast R-CNN: the classifier's ImageNet fc layers; here new), or "
                         "Krahenbuhl et al.'s data-dependent start of them and of the classifier on training RoIs")
    cls_std: float = _opt(0.01, min=0.0, doc="N(0, cls_std) of the classifier")
    bbox_std: float = _opt(0.001, min=0.0, doc="N(0, bbox_std) of the box regressor")
    rescale_encoder: bool = _opt(False, doc="with init=data_dependent, rescale the encoder's conv layers too")
    init_images: int = _opt(8, min=1, doc="training images whose sampled RoIs drive the data-dependent init")
    init_iterations: int = _opt(10, min=0)
    bbox_stds: list[float] = _opt([0.1, 0.1, 0.2, 0.2], min=1e-6, doc="box-delta normalisation (dx, dy, dw, dh)")


@dataclass
class SampleConfig:
    """RoIs of one training image."""

    rois_per_image: int = _opt(64, min=1)
    fg_fraction: float = _opt(0.25, min=0.0, max=1.0)
    fg_iou: float = _opt(0.5, min=0.0, max=1.0, doc="foreground: IoU >= this with a ground-truth box")
    bg_iou_low: float = _opt(0.1, min=0.0, max=1.0, doc="background: IoU in [bg_iou_low, bg_iou_high)")
    bg_iou_high: float = _opt(0.5, min=0.0, max=1.0)


@dataclass
class DetTestConfig:
    """Inference and scoring."""

    scale: int | None = _opt(None, min=8, doc="test shorter side; null = the largest of data.scales")
    score_thresh: float = _opt(0.05, min=0.0, max=1.0)
    nms: float = _opt(0.3, min=0.0, max=1.0)
    max_per_image: int = _opt(100, min=1)
    roi_batch: int = _opt(1000, min=1, doc="RoIs per forward pass of the head")
    iou: float = _opt(0.5, min=0.01, max=1.0, doc="IoU of a true positive (VOC: 0.5)")


@dataclass
class DetectConfig(TaskConfig):
    """Everything `cebench transfer detect` needs besides its inputs."""

    PRESETS = "detect"

    data: DetDataConfig = field(default_factory=DetDataConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    model: DetModelConfig = field(default_factory=DetModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    test: DetTestConfig = field(default_factory=DetTestConfig)

    def test_scale(self) -> int:
        """The test shorter side."""
        return self.test.scale or max(self.data.scales)

    def check_task(self) -> None:
        """Training scales, the RoI sampler's IoU bands in order, two hidden widths and four box-delta scales."""
        if not self.data.scales:
            raise ConfigError("data.scales must list at least one shorter side")
        s = self.sample
        if s.bg_iou_low > s.bg_iou_high or s.bg_iou_high > s.fg_iou:
            raise ConfigError(f"need sample.bg_iou_low ({s.bg_iou_low}) <= bg_iou_high ({s.bg_iou_high}) <= fg_iou "
                              f"({s.fg_iou})")
        if len(self.model.fc_widths) != 2 or len(self.model.bbox_stds) != 4:
            raise ConfigError("model.fc_widths must list 2 widths and model.bbox_stds 4 numbers")


# --- data ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionSet:
    """Images of one VOC-format or COCO split with their ground truth (1-based inclusive boxes)."""

    root: Path
    split: str
    ids: tuple[str, ...]
    paths: tuple[Path, ...]
    gt: dict[str, ImageObjects]  # as read: 1-based inclusive boxes
    classes: tuple[str, ...]
    kind: str = "voc"  # "voc" or "coco"
    coco_ids: dict[str, int] | None = None  # COCO: image id of each id
    category_ids: tuple[int, ...] = ()  # COCO: category id of each class

    def describe(self, max_images: int | None) -> dict:
        """Root, split and size, as metrics.json records an image set."""
        return {"root": str(self.root), "split": self.split, "kind": self.kind, "n_images": len(self.ids),
                "max_images": max_images}


def open_detection_set(root: Path, split: str, classes: list[str], max_images: int | None, seed: int) -> DetectionSet:
    """A VOC-format split (ImageSets/Main/<split>.txt, Annotations/<id>.xml, JPEGImages/<id>.jpg) or a COCO split
    (annotations/instances_<split>.json, <split>/<file_name>; its categories are the classes and `classes` is not
    used), optionally the seed's fixed subset of `max_images` images."""
    from pretext.data.sources import fixed_subset

    root = Path(root)
    if is_coco_root(root) and not is_voc_root(root):  # a root with both layouts is read as VOC, as probes do
        return _open_coco_set(root, split, max_images, seed)
    ids = read_split_ids(root, split)
    ids = [ids[i] for i in fixed_subset(len(ids), max_images, seed)]
    paths = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    _check_images(root, split, paths)
    gt = read_detection_annotations(root, split, classes)
    return DetectionSet(root, split, tuple(ids), tuple(paths), {i: gt[i] for i in ids}, tuple(classes))


def _open_coco_set(root: Path, split: str, max_images: int | None, seed: int) -> DetectionSet:
    """A COCO split (`transfer.coco.read_coco_detection`), optionally the seed's fixed subset."""
    from pretext.data.sources import fixed_subset

    ids, paths, gt, classes, coco_ids, category_ids = read_coco_detection(root, split)
    keep = fixed_subset(len(ids), max_images, seed)
    ids, paths = [ids[i] for i in keep], [paths[i] for i in keep]
    _check_images(root, split, paths)
    return DetectionSet(root, split, tuple(ids), tuple(paths), {i: gt[i] for i in ids}, tuple(classes), "coco",
                        {i: coco_ids[i] for i in ids}, tuple(category_ids))


def _check_images(root: Path, split: str, paths: list[Path]) -> None:
    """Every image file of the (subset of the) split must exist."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{root}: {len(missing)} image(s) of split {split} missing, e.g. {missing[0]}")


def gt_boxes(objects: ImageObjects, keep_difficult: bool) -> tuple[np.ndarray, np.ndarray]:
    """(boxes 0-based exclusive float32, labels) of an image's objects, difficult ones left out by default."""
    keep = np.ones(len(objects.labels), bool) if keep_difficult else ~objects.difficult
    boxes = objects.boxes[keep].astype(np.float32).copy()
    boxes[:, :2] -= 1  # 1-based inclusive -> 0-based with exclusive ends
    return boxes, objects.labels[keep].astype(np.int64)


def image_scale(width: int, height: int, target: int, max_size: int) -> float:
    """Fast R-CNN's factor: shorter side to `target`, unless the longer side would pass `max_size`."""
    s = target / min(width, height)
    return min(s, max_size / max(width, height))


def resize(img: Image.Image, s: float) -> Image.Image:
    """Bilinear resize by `s` (at least 1 px a side)."""
    w, h = img.size
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror 0-based exclusive boxes in an image `width` wide."""
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


# --- box coding and RoI sampling ---------------------------------------------------------------------

def encode_boxes(rois: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """R-CNN deltas (dx, dy, dw, dh) taking `rois` to `gt`, both (N, 4) xyxy."""
    pw, ph = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = (gt[:, 0] + 0.5 * gw - rois[:, 0] - 0.5 * pw) / pw
    dy = (gt[:, 1] + 0.5 * gh - rois[:, 1] - 0.5 * ph) / ph
    return torch.stack([dx, dy, torch.log(gw / pw), torch.log(gh / ph)], dim=1)


def decode_boxes(rois: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_boxes` for (N, 4) rois and (N, K, 4) deltas -> (N, K, 4) boxes."""
    pw, ph = (rois[:, 2] - rois[:, 0])[:, None], (rois[:, 3] - rois[:, 1])[:, None]
    cx, cy = rois[:, 0, None] + 0.5 * pw, rois[:, 1, None] + 0.5 * ph
    clamp = math.log(1000.0 / 16)  # as torchvision: no exp overflow from a wild prediction
    w = pw * torch.exp(deltas[..., 2].clamp(max=clamp))
    h = ph * torch.exp(deltas[..., 3].clamp(max=clamp))
    x, y = cx + deltas[..., 0] * pw, cy + deltas[..., 1] * ph
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)


def sample_rois(proposals: np.ndarray, gt: np.ndarray, labels: np.ndarray, cfg: SampleConfig, stds: list[float],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rois, labels with 0 = background, normalised regression targets) of one image; ground truth joins the
    candidates; foreground first."""
    boxes = np.concatenate([gt, proposals]).astype(np.float32)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(gt))  # (N, G); G >= 1 for a training image
    best, match = iou.max(1)
    best, match = best.numpy(), match.numpy()
    fg = np.flatnonzero(best >= cfg.fg_iou)
    fg = rng.choice(fg, min(len(fg), round(cfg.fg_fraction * cfg.rois_per_image)), replace=False)
    bg = np.flatnonzero((best < cfg.bg_iou_high) & (best >= cfg.bg_iou_low))
    bg = rng.choice(bg, min(len(bg), cfg.rois_per_image - len(fg)), replace=False)
    keep = np.concatenate([fg, bg]).astype(np.int64)
    roi_labels = labels[match[keep]] + 1
    roi_labels[len(fg):] = 0
    targets = encode_boxes(torch.from_numpy(boxes[keep]), torch.from_numpy(gt[match[keep]])).numpy()
    targets = targets / np.asarray(stds, dtype=np.float32)
    targets[len(fg):] = 0
    return boxes[keep], roi_labels.astype(np.int64), targets.astype(np.float32)


class TrainImages(Dataset):
    """Training items keyed by the resumable sampler: a rescaled, maybe mirrored image with its sampled RoIs."""

    def __init__(self, data: DetectionSet, proposals: dict[str, np.ndarray], cfg: DetectConfig) -> None:
        self.data, self.proposals, self.cfg = data, proposals, cfg
        self.usable = [i for i, k in enumerate(data.ids) if len(gt_boxes(data.gt[k], False)[0])]

    def __len__(self) -> int:
        return len(self.usable)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        index, aug = key
        i, d = self.usable[index], self.cfg.data
        rng = np.random.default_rng(list(aug))
        img = load_rgb(self.data.paths[i], d.max_image_pixels)
        s = image_scale(*img.size, int(rng.choice(d.scales)), d.max_size)
        gt, labels = gt_boxes(self.data.gt[self.data.ids[i]], False)
        props = self.proposals[self.data.ids[i]]
        if d.flip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            gt, props = flip_boxes(gt, img.size[0]), flip_boxes(props, img.size[0])
        rois, roi_labels, targets = sample_rois(props * s, gt * s, labels, self.cfg.sample, self.cfg.model.bbox_stds,
                                                rng)
        return to_tensor(resize(img, s)), rois, roi_labels, targets


def pad_batch(images: list[torch.Tensor], fill: tuple[int, int, int]) -> torch.Tensor:
    """(B, 3, H, W) uint8 of images of different sizes, top-left aligned, padded with the encoder's mean colour."""
    h, w = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    out = torch.tensor(fill, dtype=torch.uint8).view(1, 3, 1, 1).repeat(len(images), 1, h, w)
    for k, img in enumerate(images):
        out[k, :, : img.shape[1], : img.shape[2]] = img
    return out


class Collate:
    """Minibatch: padded images, (R, 5) RoIs [image index, x1, y1, x2, y2], labels, targets."""

    def __init__(self, fill: tuple[int, int, int]) -> None:
        self.fill = fill

    def __call__(self, items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rois = [np.concatenate([np.full((len(r), 1), k, np.float32), r], 1) for k, (_, r, _, _) in enumerate(items)]
        return (pad_batch([it[0] for it in items], self.fill), torch.from_numpy(np.concatenate(rois)),
                torch.from_numpy(np.concatenate([it[2] for it in items])),
                torch.from_numpy(np.concatenate([it[3] for it in items])))


# --- model --------------------------------------------------------------------------------------

def conv5_stride(encoder: nn.Module) -> int:
    """Product of the strides up to conv5 (16 for the 227 px AlexNet)."""
    stride = 1
    for layer in encoder.stage_layers("conv5"):
        s = getattr(layer, "stride", 1)
        stride *= s[0] if isinstance(s, tuple) else s
    return stride


class FastRCNN(FrozenBlocks):
    """encoder conv5 -> RoI max pooling -> fc6 -> fc7 -> (C+1) scores and (C+1) x 4 box deltas."""

    BLOCKS = ("encoder", "fc6", "fc7", "cls_score", "bbox_pred")
    TRAINED = {"fc8": ("cls_score", "bbox_pred"), "fc6-8": ("fc6", "fc7", "cls_score", "bbox_pred"), "all": BLOCKS}

    def __init__(self, encoder: nn.Module, roi_size: int, widths: list[int], classes: int, dropout: float,
                 stage: str = "conv5", channels: int | None = None, stride: int | None = None,
                 norm_eval: bool = False) -> None:
        super().__init__()
        self.encoder, self.roi_size, self.stage, self.norm_eval = encoder, roi_size, stage, norm_eval
        self.stride = stride or conv5_stride(encoder)
        self.fc6 = fc_block((channels or encoder.out_channels) * roi_size * roi_size, widths[0], dropout)
        self.fc7 = fc_block(widths[0], widths[1], dropout)
        self.cls_score = nn.Linear(widths[1], classes + 1)
        self.bbox_pred = nn.Linear(widths[1], 4 * (classes + 1))
        self.trained = self.BLOCKS

    def head_layers(self) -> list[nn.Linear]:
        """fc6, fc7 and the two output layers."""
        return [self.fc6.fc, self.fc7.fc, self.cls_score, self.bbox_pred]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The stage's map (conv5 of an AlexNet) of normalised (B, 3, H, W) images."""
        return self.encoder(images, out=self.stage)

    def head(self, conv5: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, C+1) logits and (R, 4(C+1)) deltas of (R, 5) RoIs in image pixels (exclusive ends)."""
        # Caffe's RoI pooling takes inclusive pixel ends; torchvision's roi_pool reproduces it given the same boxes.
        boxes = torch.cat([rois[:, :3], rois[:, 3:] - 1], dim=1)
        pooled = roi_pool(conv5, boxes.to(conv5.dtype), self.roi_size, 1.0 / self.stride)
        h = self.fc7(self.fc6(pooled.flatten(1)))
        return self.cls_score(h), self.bbox_pred(h)

    def forward(self, images: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and deltas of `rois` in `images`."""
        return self.head(self.features(images), rois)


def detection_loss(logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classification, box) losses: mean softmax cross-entropy; smooth L1 of the foreground RoIs' deltas for their
    class, summed and divided by the number of RoIs (Fast R-CNN)."""
    cls = F.cross_entropy(logits.float(), labels)
    fg = torch.nonzero(labels > 0).squeeze(1)
    pred = deltas.float().view(len(labels), -1, 4)[fg, labels[fg]]
    box = F.smooth_l1_loss(pred, targets[fg], beta=1.0, reduction="sum") / max(len(labels), 1)
    return cls, box


# --- the fine-tuning run -------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DetectInputs(TaskInputs[DetectionSet]):
    """The encoder, the training and test sets with their proposals, the run directory."""

    train_proposals: dict[str, np.ndarray]
    test_proposals: dict[str, np.ndarray]
    proposal_source: dict


def detection_stage(encoder: nn.Module, meta: dict, stage: str | None, where: str) -> tuple[str, int | None, int | None]:
    """(stage, channels, stride) the RoIs are pooled from; channels and stride None for an AlexNet's conv5."""
    if meta.get("arch") == "alexnet":
        if stage not in (None, "conv5"):
            raise ValueError(f"{where}: Fast R-CNN on an AlexNet encoder pools conv5 (the paper's protocol); "
                             f"model.stage={stage!r} is for other backbones")
        return "conv5", None, None
    geometry = meta.get("stages") or {}
    if not geometry:
        raise ValueError(f"{where}: Fast R-CNN needs an AlexNet or a backbone whose stages have strides (timm, "
                         f"torchvision, model.backbone), not a {meta.get('arch')} encoder")
    order = [s for s in encoder_stages(encoder) if s in geometry]  # depth order (encoder.json's keys are sorted)
    if stage is None:
        shallow = [s for s in order if int(geometry[s]["stride"]) <= 16]
        stage = (shallow or order)[-1]
    if stage not in geometry:
        raise ValueError(f"{where}: model.stage={stage!r} is not a stage of this {meta.get('arch')} encoder; choose "
                         f"from {', '.join(order)}")
    return stage, int(geometry[stage]["channels"]), int(geometry[stage]["stride"])


RESUME_FREE = {**FINE_TUNE_RESUME_FREE, "proposals": ("workers", "cache_dir")}


class Detector(TaskTuner):
    """Fine-tunes one encoder for detection into `inputs.out`, resumably, on the shared engine."""

    TASK, PROGRESS = "detection", "detect"
    RESUME_FREE = RESUME_FREE

    def prepare(self, encoder: nn.Module) -> None:
        inputs, cfg = self.inputs, self.cfg
        self.stage, self.channels, self.stride = detection_stage(encoder, self.meta, cfg.model.stage,
                                                                 str(inputs.encoder))
        self.fill = tuple(int(round(255 * m)) for m in self.meta["normalization"]["mean"])
        self.train_set = TrainImages(inputs.train, inputs.train_proposals, cfg)
        if len(self.train_set) == 0:
            raise ValueError(f"{inputs.train.root} (split {inputs.train.split}): no training image has a "
                             f"non-difficult box")
        skipped = len(inputs.train.ids) - len(self.train_set)
        if skipped:
            log.warning("%d training image(s) without a non-difficult box skipped", skipped)

    def predict_test(self) -> tuple[dict[str, list[np.ndarray]], dict[str, float]]:
        i = self.inputs
        detections, per_image = self.detect(i.test, i.test_proposals)
        return detections, {"inference_seconds_per_image": per_image, **i.proposal_source.get("seconds", {})}

    def score_test(self, predictions: dict[str, list[np.ndarray]]) -> dict:
        i = self.inputs
        return {**score_detections(i.test, predictions, self.cfg.test.iou),
                "results_files": write_results(i.out, i.test, predictions)}

    def metrics_extra(self, seconds: dict[str, float]) -> dict:
        return {"stride": self.model.stride, "roi_size": self.model.roi_size, "proposals": self.inputs.proposal_source}

    def record_extra(self) -> dict:
        return {"proposals": self.inputs.proposal_source.get("train")}

    def _build_model(self, encoder: nn.Module) -> FastRCNN:
        m = self.cfg.model
        torch.manual_seed(self.cfg.train.seed)
        if m.roi_size:
            roi = m.roi_size
        else:
            roi = int(encoder.feature_shapes()["pool5"][1]) if self.channels is None else BACKBONE_ROI_SIZE
        model = FastRCNN(encoder, roi, m.fc_widths, len(self.inputs.train.classes), m.dropout, self.stage,
                         self.channels, self.stride, m.norm_eval)
        for layer, std in zip(model.head_layers(), (0.01, 0.01, m.cls_std, m.bbox_std)):
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)
        model.to(self.env.device)
        start = functools.cache(self._start_batch)  # read once, for the norms and the calibration alike
        self.start_norms(model, model.features, lambda: start()[0])
        if m.init == "data_dependent" and self.state is None:
            self._data_dependent_init(model, *start())
        model.freeze(self.cfg.train.layers)
        return to_channels_last(model, self.env.device) if self.cfg.train.channels_last else model

    def _start_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `model.init_images` training images (normalised) and their RoIs: what the start sees."""
        n = min(self.cfg.model.init_images, len(self.train_set))
        items = [self.train_set[(i, (self.cfg.train.seed, 0, i))] for i in range(n)]
        images, rois, _, _ = Collate(self.fill)(items)
        return self._normalise(images), rois.to(self.env.device)

    def _data_dependent_init(self, model: FastRCNN, images: torch.Tensor, rois: torch.Tensor) -> None:
        """Krahenbuhl et al.'s start of fc6, fc7 and the classifier (and the encoder's calibration) on the RoIs of
        the start batch."""
        # New layers: fc6, fc7 and the classifier, whose logits the calibration brings to unit scale (the box
        # regressor keeps its N(0, bbox_std) start); pretrained conv layers are only scaled as a whole.
        new = [model.fc6.fc, model.fc7.fc, model.cls_score]
        layers = (self.encoder_layers(model) if self.cfg.model.rescale_encoder else []) + new
        data_dependent_init(model, images, forward=lambda x: model(x, rois)[0], layers=layers,
                            new_layers=new, iterations=self.cfg.model.init_iterations, seed=self.cfg.train.seed)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """One SGD step at the schedule's lr; a non-finite loss stops the run."""
        images, rois, labels, targets = batch
        self.begin_step()
        dev = self.env.device
        with self.autocast():
            logits, deltas = self.net(self._normalise(images), rois.to(dev))
        cls, box = detection_loss(logits, deltas, labels.to(dev), targets.to(dev))
        self.optimizer_step(self.optimizer, cls + box, self.cfg.optim.grad_clip)
        if self.scaler:
            self.scaler.update()
        self.step += 1
        return {"loss": float((cls + box).detach()), "loss_cls": float(cls.detach()), "loss_box": float(box.detach())}

    def train_loader(self) -> DataLoader:
        t = self.cfg.train
        return build_loader(self.train_set, t.batch_size, t.seed, self.cfg.data.workers, self.env.rank,
                            self.env.world_size, self.step, pin_memory=self.env.device.type == "cuda",
                            collate_fn=Collate(self.fill))

    @torch.no_grad()
    def detect(self, data: DetectionSet, proposals: dict[str, np.ndarray]) -> tuple[dict[str, list[np.ndarray]], float]:
        """Per image id, per class (K, 5) [x1, y1, x2, y2, score] in 1-based inclusive VOC coordinates; and the
        seconds per image."""
        self.model.eval()
        loader = DataLoader(TestImages(data, self.cfg), batch_size=None, num_workers=self.cfg.data.workers)
        out: dict[str, list[np.ndarray]] = {}
        t0 = time.perf_counter()
        for index, image, s, size in tqdm(loader, desc="detect", disable=not self.cfg.train.progress,
                                          dynamic_ncols=True):
            image_id = data.ids[index]
            out[image_id] = self._detect_one(image, float(s), tuple(size), proposals[image_id])
        self.model.train()
        return out, (time.perf_counter() - t0) / max(len(data.ids), 1)

    def _detect_one(self, image: torch.Tensor, s: float, size: tuple[int, int], props: np.ndarray) -> list[np.ndarray]:
        rois = torch.from_numpy(props.astype(np.float32) * s).to(self.env.device)
        return detect_image(self.model, self._normalise(image[None]), rois, s, size, len(self.inputs.train.classes),
                            self.cfg.test, self.cfg.model.bbox_stds, self.autocast)


def detect_image(model: FastRCNN, image: torch.Tensor, rois: torch.Tensor, s: float, size: tuple[int, int],
                 classes: int, t: DetTestConfig, bbox_stds: list[float],
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[np.ndarray]:
    """The test pass of one normalised (1, 3, H, W) image scaled by `s` from `size` (w, h), with (R, 4) xyxy
    proposals in scaled pixels: per class (K, 5) detections in 1-based VOC coordinates of the original image."""
    rois = torch.cat([torch.zeros(len(rois), 1, device=rois.device), rois], 1)
    with autocast():
        conv5 = model.features(image)
        parts = [model.head(conv5, rois[i: i + t.roi_batch]) for i in range(0, len(rois), t.roi_batch)]
    scores = torch.cat([p[0] for p in parts]).float().softmax(1)[:, 1:]  # (R, C)
    deltas = torch.cat([p[1] for p in parts]).float().view(len(rois), -1, 4)[:, 1:]
    deltas = deltas * torch.tensor(bbox_stds, device=deltas.device)
    boxes = decode_boxes(rois[:, 1:], deltas) / s  # (R, C, 4) in original pixels
    boxes = clip_boxes_to_image(boxes, (size[1], size[0]))
    return postprocess(boxes.cpu(), scores.cpu(), classes, t)


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, classes: int, t: DetTestConfig) -> list[np.ndarray]:
    """Score threshold, per-class NMS and the per-image cap; per class (K, 5) arrays in VOC 1-based coordinates."""
    cls = torch.arange(classes).expand_as(scores)
    valid = (scores > t.score_thresh) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    b, sc, c = boxes[valid], scores[valid], cls[valid]
    kept = batched_nms(b, sc, c, t.nms)[: t.max_per_image]  # sorted by score, best first
    b, sc, c = b[kept], sc[kept], c[kept]
    voc = torch.cat([b[:, :2] + 1, b[:, 2:], sc[:, None]], 1).double().numpy()  # 0-based exclusive -> 1-based
    return [voc[(c == k).numpy()] for k in range(classes)]


class TestImages(Dataset):
    """Item i: (i, (3, H, W) uint8 at the test scale, the scale, the original (width, height))."""

    def __init__(self, data: DetectionSet, cfg: DetectConfig) -> None:
        self.data, self.cfg = data, cfg

    def __len__(self) -> int:
        return len(self.data.ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, float, tuple[int, int]]:
        img = load_rgb(self.data.paths[i], self.cfg.data.max_image_pixels)
        s = image_scale(*img.size, self.cfg.test_scale(), self.cfg.data.max_size)
        return i, to_tensor(resize(img, s)), s, img.size


# --- scoring and results --------------------------------------------------------------------------

def score_detections(data: DetectionSet, detections: dict[str, list[np.ndarray]], iou: float) -> dict:
    """VOC07 AP per class (11-point and area, percent) on the tested images, and their means over classes with
    ground truth; on COCO data also COCOeval's coco_map (AP@[.5:.95]), coco_ap50 and coco_ap75 on those images."""
    per_class, ap11, area = {}, [], []
    for k, name in enumerate(data.classes):
        rows = [(i, d) for i in data.ids for d in detections[i][k]]
        ids = np.asarray([i for i, _ in rows], dtype=object)
        dets = np.asarray([d for _, d in rows], dtype=np.float64).reshape(-1, 5)
        r = voc_detection_ap(data.gt, k, ids, dets[:, 4], dets[:, :4], iou=iou)
        per_class[name] = {"voc07_11pt": 100 * r["ap_11pt"], "area": 100 * r["ap_area"], "npos": int(r["npos"]),
                           "n_det": int(r["n_det"])}
        if r["npos"] > 0:
            ap11.append(100 * r["ap_11pt"])
            area.append(100 * r["ap_area"])
    if not ap11:
        raise ValueError(f"{data.root} (split {data.split}): no test image has a non-difficult box; nothing to score")
    coco = {} if data.kind != "coco" else coco_detection_metrics(
        data.root, data.split, to_coco_results(detections, data.coco_ids, data.category_ids),
        [data.coco_ids[i] for i in data.ids])
    return {"map_voc07_11pt": float(np.mean(ap11)), "map_area": float(np.mean(area)), **coco, "per_class": per_class,
            "iou": iou}


def write_results(out: Path, data: DetectionSet, detections: dict[str, list[np.ndarray]]) -> str | None:
    """COCO data: OUT/coco_results.json (COCO's results format, the tested images). VOC: devkit
    comp4_det_<split>_<cls>.txt files for a whole split; None (and why) otherwise."""
    if data.kind == "coco":
        path = out / "coco_results.json"
        atomic_write_text(path, json.dumps(to_coco_results(detections, data.coco_ids, data.category_ids)) + "\n")
        return str(path)
    ids = read_split_ids(data.root, data.split)
    if len(ids) != len(data.ids):
        log.warning("results files not written: the test set is a subset (%d of %d images of split %s)",
                    len(data.ids), len(ids), data.split)
        return None
    write_det_results(out / "results", data.split, list(data.classes), detections)
    return str(out / "results")


def run_detect(cfg: DetectConfig, inputs: DetectInputs) -> dict | None:
    """Fine-tune, detect and score on rank 0, write metrics.json (+ devkit files or coco_results.json); the record
    (None off rank 0)."""
    return run_fine_tune(Detector, cfg, inputs)


# --- inputs and the command line ----------------------------------------------------------------------

def default_cache() -> Path:
    """$CEBENCH_CACHE/proposals, else ~/.cache/cebench/proposals."""
    from pretext.cache import cache_root

    return cache_root() / "proposals"


def proposals_for(data: DetectionSet, given: Path | None, cfg: ProposalConfig, progress: bool) -> tuple[dict, dict]:
    """Proposals of every image (original pixels, 0-based exclusive): from a file, or selective search (cached);
    and how they were made, for metrics.json."""
    if given is not None:
        return load_precomputed(given, list(data.ids)), {"file": str(given)}
    settings = ProposalSettings(cfg.mode, cfg.min_size, cfg.max_boxes, cfg.max_side)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache()
    t0 = time.perf_counter()
    props = compute_proposals(list(data.paths), list(data.ids), cache, settings, workers=cfg.workers, progress=progress)
    return props, {"selective_search": {"mode": cfg.mode, "min_size": cfg.min_size, "max_boxes": cfg.max_boxes,
                                        "max_side": cfg.max_side, "cache_key": settings.key()},
                   "wall_seconds": time.perf_counter() - t0}


def open_inputs(args: argparse.Namespace, cfg: DetectConfig) -> DetectInputs:
    """Training and test splits with their proposals; testing on the training split is refused."""
    test_root = root_to_test(args)
    from .coco import is_coco_root

    if args.classes is not None and is_coco_root(Path(args.data)):
        raise ValueError(f"{args.data}: a COCO root brings its own categories; --classes is for VOC roots without "
                         f"classes.txt")
    classes = read_class_list(args.data, args.classes)
    seed = cfg.train.seed
    train = open_detection_set(args.data, args.train_split, classes, args.max_images[0], seed)
    test = open_detection_set(test_root, args.test_split, classes, args.max_images[1], seed)
    p = cfg.train.progress
    train_props, train_src = proposals_for(train, args.train_proposals, cfg.proposals, p)
    test_props, test_src = proposals_for(test, args.test_proposals, cfg.proposals, p)
    seconds = {f"proposal_seconds_{k}": v.pop("wall_seconds") for k, v in (("train", train_src), ("test", test_src))
               if "wall_seconds" in v}
    return DetectInputs(args.encoder, train, test, args.out, args.max_images, args.weights, train_proposals=train_props,
                        test_proposals=test_props,
                        proposal_source={"train": train_src, "test": test_src, "seconds": seconds})


def summary(record: dict) -> str:
    """One line: the test numbers."""
    return (f"{record['layers']} fine-tuned {record['steps']} steps on {record['train']['n_images']} images, "
            f"tested on {record['test']['n_images']}: mAP VOC07 11-pt {record['map_voc07_11pt']:.2f}, "
            f"area {record['map_area']:.2f}"
            + (f", COCO AP@[.5:.95] {record['coco_map']:.2f}" if "coco_map" in record else "")
            + f" ({record['inference_seconds_per_image']:.3f} s per test image)")


def _proposal_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-proposals", type=Path, default=None, metavar="FILE",
                   help="precomputed proposals (.mat as Fast R-CNN's, .json, .npz) instead of selective search")
    p.add_argument("--test-proposals", type=Path, default=None, metavar="FILE")


COMMAND = TaskCommand(
    "Fast R-CNN detection", "detect_demo",
    TaskData("VOC-format root (ImageSets/Main, Annotations, JPEGImages) or COCO root (annotations/"
             "instances_<split>.json, <split>/ images)", "trainval", "test",
             classes="class list for roots without classes.txt (default: the 20 VOC classes)",
             extra=_proposal_arguments),
    DetectConfig, lambda cfg, args: run_detect(cfg, open_inputs(args, cfg)), summary)
build_parser, main = COMMAND.build_parser, COMMAND.main


if __name__ == "__main__":
    raise SystemExit(main())
