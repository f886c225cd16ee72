"""`cebench transfer classify`: fine-tune an exported encoder for image classification.

The Krahenbuhl et al. (2016) protocol the context-encoder paper reports (Table 2, VOC2007 classification):
encoder -> flattened pool5 -> new fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> fc8, trained with SGD
on random rescales (0.5-2), random crops and mirrors; tested on the mean of random crops of each image.

- Single-label data (an ImageFolder, e.g. CIFAR-10): softmax cross-entropy -> top-1 accuracy.
- Multi-label data (VOC-style (N, C) labels in {1, 0 = difficult only, -1}): sigmoid cross-entropy summed over
  the non-difficult entries and divided by the batch size (as their Caffe layer) -> the three VOC mAPs, and
  the devkit results files that `cebench evaluate classification` re-scores.
- `train.layers`: fc8 | fc6-8 | all receive gradients; frozen blocks stay in eval mode (no dropout).
- `data.scale_of`: the random rescale factor multiplies the crop side (shorter side = s * crop, for small
  images such as CIFAR's 32 px) or the original image size (as Krahenbuhl et al.'s code does); a rescaled image
  smaller than the crop is padded with the encoder's mean colour.
- Test: `test.crops` random rescales, crops and mirrors of each image (the training distribution, or the
  range of `test.scale_min/max`), deterministic by seed, their logits averaged; 1 = one centre crop at the
  geometric middle of the scale range.

A run directory holds config.json, checkpoint.pt (atomic; `train.resume=true` continues it exactly),
metrics.csv (+ TensorBoard) and metrics.json. Bad input is one error line and exit code 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pretext.config import ConfigError, _opt
from pretext.data.dataset import SampleKey, build_loader, crop_flip, resize_shorter, to_uint8_tensor
from pretext.data.images import DEFAULT_MAX_PIXELS, load_rgb
from pretext.engine.distributed import DistEnv
from pretext.init import data_dependent_init
from pretext.losses import classification_loss
from pretext.models.kernels import to_channels_last

from .backbones import default_layer, encoder_stages
from .features import LabelledImages, check_train_test, open_labelled, subset
from .finetune import (FrozenBlocks, ImageLoading, TaskCommand, TaskConfig, TaskData, TaskInputs, TaskTuner, fc_block,
                       run_fine_tune)
from .metrics import classification_metrics, top1_accuracy
from .voc import read_split_ids, write_cls_results

log = logging.getLogger("cebench")

# --- configuration ------------------------------------------------------------------------------

@dataclass
class AugmentConfig(ImageLoading):
    """Training views: random rescale, square crop, mirror."""

    crop: int | None = _opt(None, min=8, doc="crop side; null = the encoder's input size")
    scale_of: str = _opt("crop", choices=("crop", "image"),
                         doc="the rescale factor multiplies the crop side (shorter side = s * crop) or the image size")
    scale_min: float = _opt(0.5, min=0.01, doc="random rescale factor s ~ uniform [scale_min, scale_max]")
    scale_max: float = _opt(2.0, min=0.01)
    decoded_cache_mb: int = _opt(256, min=0, doc="decoded images kept in memory per process (each loader worker "
                                                 "keeps its own), so later views of an image skip the file; 0 = off")


@dataclass
class HeadConfig:
    """The new fully-connected layers."""

    fc_widths: list[int] = _opt([4096, 4096], min=1, doc="fc6 and fc7 widths; [] = one linear layer (fc8) on the "
                                                           "pooled stage, the usual head of a ResNet or ViT")
    stage: str | None = _opt(None, doc="encoder stage the head reads; null = pool5 of the suite's AlexNets, the "
                                       "deepest stage of another backbone (timm:NAME, torchvision:NAME)")
    pool: str = _opt("auto", choices=("auto", "flatten", "avg"),
                     doc="how the stage's map becomes the head's input: flatten (the paper's pool5 -> fc6), global "
                         "average; auto = flatten for an AlexNet's pool5, average otherwise")
    dropout: float = _opt(0.5, min=0.0, max=0.99)
    init: str = _opt("gaussian", choices=("gaussian", "kaiming", "data_dependent"),
                     doc="gaussian N(0, init_std) with bias init_bias; data_dependent = Krahenbuhl et al.: fc6-fc8 "
                         "scaled to unit pre-activations on training images (within-layer), then every calibrated "
                         "layer's rate of change equalised and the logits brought to unit scale (between-layer)")
    init_std: float = _opt(0.01, min=0.0)
    init_bias: float = _opt(0.1, doc="bias of the Gaussian init (Krahenbuhl et al.'s code: 0.1)")
    init_images: int = _opt(64, min=2, doc="training images (centre views) for data_dependent")
    init_iterations: int = _opt(10, min=0, doc="data_dependent between-layer iterations; 0 = within-layer scaling only")
    rescale_encoder: bool = _opt(False, doc="with init=data_dependent, calibrate the encoder's conv layers with the "
                                            "head (Krahenbuhl et al.'s rescaling of pretrained networks: one scale per "
                                            "layer, biases following; the features themselves are unchanged)")


@dataclass
class TestConfig:
    """Test-time views."""

    crops: int = _opt(10, min=1, doc="random views averaged per image; 1 = one centre crop")
    scale_min: float | None = _opt(None, min=0.01, doc="test rescale range; null = data.scale_min")
    scale_max: float | None = _opt(None, min=0.01, doc="null = data.scale_max")
    batch_size: int = _opt(32, min=1, doc="images per forward pass (each with `crops` views)")


@dataclass
class ClassifyConfig(TaskConfig):
    """Everything `cebench transfer classify` needs besides its inputs."""

    PRESETS, VALIDATION_SPLIT = "classify", True

    data: AugmentConfig = field(default_factory=AugmentConfig)
    model: HeadConfig = field(default_factory=HeadConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def test_scales(self) -> tuple[float, float]:
        """Test rescale range: test.scale_min/max, defaulting to the training range."""
        t, d = self.test, self.data
        return (d.scale_min if t.scale_min is None else t.scale_min, d.scale_max if t.scale_max is None else t.scale_max)

    def check_task(self) -> None:
        """Scale ranges, and a head of two hidden widths or none."""
        ranges = (("data", (self.data.scale_min, self.data.scale_max)), ("test", self.test_scales()))
        for where, (low, high) in ranges:
            if low > high:
                raise ConfigError(f"{where}.scale_min ({low}) must be <= {where}.scale_max ({high})")
        if len(self.model.fc_widths) not in (0, 2):
            raise ConfigError(f"model.fc_widths must list 2 widths (fc6, fc7) or none (a linear head), got "
                              f"{self.model.fc_widths}")


# --- images -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewSpec:
    """How one image becomes encoder-sized uint8 views."""

    crop: int
    scales: tuple[float, float]
    scale_of: str  # "crop" or "image"
    flip: bool
    fill: tuple[int, int, int]  # the encoder's mean colour: padding normalises to zero
    max_pixels: int = DEFAULT_MAX_PIXELS

    def middle_scale(self) -> float:
        """Geometric middle of the scale range (1.0 for 0.5-2): the scale of a single centre view."""
        return math.sqrt(self.scales[0] * self.scales[1])


def rescale(img: Image.Image, s: float, crop: int, scale_of: str) -> Image.Image:
    """Shorter side s * crop (`scale_of` crop), or both sides times s (`scale_of` image)."""
    if scale_of == "crop":
        return resize_shorter(img, max(1, round(s * crop)))
    size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    return img if size == img.size else img.resize(size, Image.BILINEAR)


def pad_to(img: Image.Image, size: int, fill: tuple[int, int, int], rng: np.random.Generator | None) -> Image.Image:
    """The image on a canvas at least `size` square in `fill` colour, at a random (or centred) offset."""
    w, h = img.size
    if w >= size and h >= size:
        return img
    canvas = Image.new("RGB", (max(w, size), max(h, size)), fill)
    free_x, free_y = canvas.width - w, canvas.height - h
    x, y = (int(rng.integers(0, free_x + 1)), int(rng.integers(0, free_y + 1))) if rng else (free_x // 2, free_y // 2)
    canvas.paste(img, (x, y))
    return canvas


class DecodedImages:
    """Decoded images of this process, kept up to a byte budget (first come, first kept): a fine-tune views each
    image dozens of times, and decoding it each time costs the data-loader workers as much CPU as the training step
    on small images. Each loader worker keeps its own. An image is decoded once per spec (JPEG at the reduced scale
    that still covers the spec's largest rescaled crop), so a kept image is exactly what a fresh decode returns."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget, self.used = budget_bytes, 0
        self.kept: dict[tuple[Path, int | None, int], Image.Image] = {}

    def load(self, path: Path, spec: ViewSpec) -> Image.Image:
        """The decoded image; BadImageError names the file."""
        min_side = max(1, math.ceil(spec.scales[1] * spec.crop)) if spec.scale_of == "crop" else None
        key = (path, min_side, spec.max_pixels)
        img = self.kept.get(key)
        if img is None:
            img = load_rgb(path, spec.max_pixels, min_side=min_side)
            size = img.width * img.height * 3
            if self.used + size <= self.budget:
                self.kept[key], self.used = img, self.used + size
        return img


def random_view(path: Path, spec: ViewSpec, rng: np.random.Generator, images: DecodedImages | None = None,
                ) -> torch.Tensor:
    """(3, crop, crop) uint8: random rescale in the spec's range, random crop, random mirror."""
    s = float(rng.uniform(*spec.scales))
    img = (images or DecodedImages(0)).load(path, spec)
    img = pad_to(rescale(img, s, spec.crop, spec.scale_of), spec.crop, spec.fill, rng)
    return to_uint8_tensor(crop_flip(img, spec.crop, rng, spec.flip))


def centre_view(path: Path, spec: ViewSpec, images: DecodedImages | None = None) -> torch.Tensor:
    """(3, crop, crop) uint8: rescale at the middle scale, centre crop, no mirror."""
    s = spec.middle_scale()
    img = pad_to(rescale((images or DecodedImages(0)).load(path, spec), s, spec.crop, spec.scale_of), spec.crop,
                 spec.fill, None)
    return to_uint8_tensor(crop_flip(img, spec.crop, None, False))


class TrainViews(Dataset):
    """Training items keyed by the resumable sampler: (random view, label row) of one image."""

    def __init__(self, data: LabelledImages, spec: ViewSpec, cache_bytes: int = 0) -> None:
        self.paths, self.labels, self.spec = data.paths, torch.from_numpy(np.asarray(data.labels)), spec
        self.images = DecodedImages(cache_bytes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        index, aug = key
        view = random_view(self.paths[index], self.spec, np.random.default_rng(list(aug)), self.images)
        return view, self.labels[index]


class EvalViews(Dataset):
    """Item i: (crops, 3, S, S) uint8, random views seeded by (seed, i), or one centre view."""

    def __init__(self, paths: tuple[Path, ...], spec: ViewSpec, crops: int, seed: int) -> None:
        self.paths, self.spec, self.crops, self.seed = paths, spec, crops, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.crops == 1:
            return centre_view(self.paths[index], self.spec)[None]
        rng, images = np.random.default_rng([self.seed, index]), DecodedImages(self.spec.max_pixels * 3)  # 1 image
        return torch.stack([random_view(self.paths[index], self.spec, rng, images) for _ in range(self.crops)])


def _loader_kwargs(workers: int, device: torch.device) -> dict:
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "prefetch_factor": 4 if workers else None}


def train_loader(data: LabelledImages, spec: ViewSpec, cfg: ClassifyConfig, env: DistEnv, start_step: int) -> DataLoader:
    """Infinite, rank-sharded loader of training views that resumes at `start_step`."""
    t = cfg.train
    views = TrainViews(data, spec, cfg.data.decoded_cache_mb << 20)
    return build_loader(views, t.batch_size, t.seed, cfg.data.workers, env.rank, env.world_size,
                        start_step, pin_memory=env.device.type == "cuda", collate_fn=None)


# --- model and loss -----------------------------------------------------------------------------

def pooled(feats: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, H, W) stage output -> (B, D) head input: flattened, or averaged over positions."""
    return feats.flatten(1) if pool == "flatten" else feats.mean((2, 3))


class FineTuneClassifier(FrozenBlocks):
    """encoder -> one stage's map, flattened or averaged -> fc6 -> fc7 -> fc8 (or fc8 alone without fc widths);
    blocks outside `trained` are frozen and in eval mode."""

    BLOCKS = ("encoder", "fc6", "fc7", "fc8")
    TRAINED = {"fc8": ("fc8",), "fc6-8": ("fc6", "fc7", "fc8"), "all": BLOCKS}

    def __init__(self, encoder: nn.Module, in_dim: int, widths: list[int], classes: int, dropout: float,
                 stage: str = "pool5", pool: str = "flatten") -> None:
        super().__init__()
        self.encoder, self.stage, self.pool = encoder, stage, pool
        self.fc6 = fc_block(in_dim, widths[0], dropout) if widths else nn.Identity()
        self.fc7 = fc_block(widths[0], widths[1], dropout) if widths else nn.Identity()
        self.fc8 = nn.Linear(widths[1] if widths else in_dim, classes)
        self.trained = self.BLOCKS

    def head_layers(self) -> list[nn.Linear]:
        """The new linear layers: fc6, fc7, fc8 (fc8 alone for a linear head)."""
        return [b.fc for b in (self.fc6, self.fc7) if isinstance(b, nn.Sequential)] + [self.fc8]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, C) logits."""
        return self.fc8(self.fc7(self.fc6(pooled(self.encoder(x, out=self.stage), self.pool))))


@torch.no_grad()
def start_statistics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The fine-tuning start on a batch of training images: the loss and the std of the logits in eval mode (the
    mode the data-dependent calibration runs in), and the std of the logits of the same images in training mode
    without dropout (the batch norms that learn on the batch's statistics; on a copy, so the model's running
    statistics stay). A start far from unit logits begins with a large loss, or with gradients too small to move
    the encoder; the two stds part when learning batch norms' running statistics are not the data's (a random
    init's reset ones: the calibration then holds for eval mode only)."""
    was_training = model.training
    model.eval()
    try:
        logits = model(images).float()
        model.train()  # frozen blocks (and norm_eval norms) evaluate, as in training
        learning = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    finally:
        model.train(was_training)
    train_logits = logits
    if learning:
        as_trained = copy.deepcopy(model).train()
        for m in as_trained.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd) or "DropPath" in type(m).__name__:
                m.eval()
        train_logits = as_trained(images).float()
    return {"loss": float(classification_loss(logits, labels)), "logit_std": float(logits.std()),
            "train_logit_std": float(train_logits.std()), "images": int(images.shape[0])}


def head_input_dim(encoder: nn.Module, stage: str, pool: str, crop: int) -> int:
    """Size of the head's input (the stage's map, flattened or averaged) for a crop side; a crop the encoder cannot
    take is a ValueError."""
    with torch.no_grad():
        try:
            feats = encoder.eval()(torch.zeros(1, 3, crop, crop), out=stage)
        except (RuntimeError, AssertionError) as exc:  # timm's size checks assert
            raise ValueError(f"data.crop={crop} does not fit the encoder: {str(exc).splitlines()[0]}") from None
    if feats.dim() != 4:
        raise ValueError(f"stage {stage!r} gives a {feats.dim()}-d output, not a (B, C, H, W) feature map")
    return int(pooled(feats, pool).shape[1])


def head_stage(encoder: nn.Module, meta: dict, cfg: HeadConfig, where: str) -> tuple[str, str]:
    """(stage, pool) the head reads: model.stage or the encoder's default, checked against its stages."""
    stage = cfg.stage or default_layer(encoder)
    stages = encoder_stages(encoder)
    if stage not in stages:
        raise ValueError(f"{where}: model.stage={stage!r} is not a stage of this {meta.get('arch')} encoder; "
                         f"choose from {', '.join(stages)}")
    pool = cfg.pool if cfg.pool != "auto" else "flatten" if stage == "pool5" else "avg"
    return stage, pool


# --- the fine-tuning run -------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class RunInputs(TaskInputs[LabelledImages]):
    """What the command line names: the encoder, the labelled sets and the run directory."""

    val: LabelledImages | None = None  # train.val_images held out of `train`


class FineTuner(TaskTuner):
    """Fine-tunes one encoder on one labelled training set into `inputs.out`, resumably, on the shared engine."""

    TASK, PROGRESS, UNTAGGED = "classification", "classify", "classification"

    # --- set-up -----------------------------------------------------------------------------
    def prepare(self, encoder: nn.Module) -> None:
        self.stage, self.pool = head_stage(encoder, self.meta, self.cfg.model, str(self.inputs.encoder))
        self.crop = self.cfg.data.crop or int(self.meta["input_size"])
        self.train_spec, self.test_spec = self._view_specs()

    def _view_specs(self) -> tuple[ViewSpec, ViewSpec]:
        d = self.cfg.data
        fill = tuple(int(round(255 * m)) for m in self.meta["normalization"]["mean"])
        train = ViewSpec(self.crop, (d.scale_min, d.scale_max), d.scale_of, d.flip, fill, d.max_image_pixels)
        return train, dataclasses.replace(train, scales=self.cfg.test_scales())

    def predict_test(self) -> tuple[np.ndarray, dict[str, float]]:
        return self.predict(self.inputs.test), {}

    def score_test(self, predictions: np.ndarray) -> dict:
        i = self.inputs
        result = {**score(predictions, i.test), "results_files": write_results_files(i.out, i.test, predictions)}
        if i.val is not None:
            result["val"] = {**score(self.predict(i.val), i.val), "n_images": len(i.val.paths)}
        return result

    def metrics_extra(self, seconds: dict[str, float]) -> dict:
        return {"pool": self.pool, "crop": self.crop, "start": self.start}

    def record_extra(self) -> dict:
        # the data order and the effective batch depend on world_size; what train.precision=auto resolved to must
        # be the same on resume
        return {"precision": self.precision}

    def state_extra(self) -> dict:
        return {"start": self.start}

    def log_extra(self) -> dict:
        t = self.cfg.train
        return {"epoch": self.step * t.batch_size * self.env.world_size / len(self.inputs.train.paths)}

    def _build_model(self, encoder: nn.Module) -> FineTuneClassifier:
        h = self.cfg.model
        torch.manual_seed(self.cfg.train.seed)  # the same new layers for a given seed, on every rank
        model = FineTuneClassifier(encoder, head_input_dim(encoder, self.stage, self.pool, self.crop), h.fc_widths,
                                   len(self.inputs.train.classes), h.dropout, self.stage, self.pool)
        for layer in model.head_layers():
            if h.init == "kaiming":
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
            else:
                nn.init.normal_(layer.weight, 0.0, h.init_std)
                nn.init.constant_(layer.bias, h.init_bias)
        model.to(self.env.device)
        if self.state is None:
            images, labels = self._init_batch()
            norms = self.start_norms(model, lambda x: model.encoder(x, out=self.stage), lambda: images)
            rescaled = self.encoder_layers(model) if h.init == "data_dependent" and h.rescale_encoder else []
            if h.init == "data_dependent":
                data_dependent_init(model, images, layers=rescaled + model.head_layers(),
                                    new_layers=model.head_layers(), iterations=h.init_iterations,
                                    seed=self.cfg.train.seed)
            model.freeze(self.cfg.train.layers)
            self.start = {**start_statistics(model, images, labels), "encoder_layers_rescaled": len(rescaled),
                          "norms_estimated": norms}
        else:
            self.start = self.state.get("start", {})
        model.freeze(self.cfg.train.layers)
        return to_channels_last(model, self.env.device) if self.cfg.train.channels_last else model

    def _init_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre views (normalised) and labels of the first `model.init_images` training images of a fixed
        shuffle: the images the data-dependent init and the start statistics see."""
        paths = self.inputs.train.paths
        order = np.random.default_rng(self.cfg.train.seed).permutation(len(paths))[: self.cfg.model.init_images]
        views = torch.stack([centre_view(paths[i], self.train_spec) for i in order])
        labels = torch.from_numpy(np.asarray(self.inputs.train.labels)[order]).to(self.env.device)
        return self._normalise(views), labels

    # --- one step ---------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One SGD step at the schedule's lr; a non-finite loss stops the run."""
        self.begin_step()
        with self.autocast():
            loss = classification_loss(self.net(self._normalise(images)), labels.to(self.env.device))
        self.optimizer_step(self.optimizer, loss, self.cfg.optim.grad_clip)
        if self.scaler:
            self.scaler.update()
        self.step += 1
        return float(loss.detach())

    # --- the loop ---------------------------------------------------------------------------
    def train_loader(self) -> DataLoader:
        return train_loader(self.inputs.train, self.train_spec, self.cfg, self.env, self.step)

    def step_values(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        return {"loss": self.train_step(*batch)}

    @torch.no_grad()
    def predict(self, data: LabelledImages) -> np.ndarray:
        """(N, C) float64 test scores: logits averaged over `test.crops` views of each image."""
        t = self.cfg.test
        self.model.eval()
        loader = DataLoader(EvalViews(data.paths, self.test_spec, t.crops, self.cfg.train.seed), batch_size=t.batch_size,
                            **_loader_kwargs(self.cfg.data.workers, self.env.device))
        chunks = []
        for views in tqdm(loader, desc="test", disable=not self.cfg.train.progress, dynamic_ncols=True):
            b, k = views.shape[:2]
            with self.autocast():
                logits = self.model(self._normalise(views.flatten(0, 1)))  # (B * K, C)
            chunks.append(logits.float().view(b, k, -1).mean(1).cpu().double().numpy())
        self.model.train()
        return np.concatenate(chunks)


# --- results --------------------------------------------------------------------------------------

def score(scores: np.ndarray, data: LabelledImages) -> dict:
    """Top-1 accuracy (single-label) or the three VOC mAPs with per-class APs (multi-label)."""
    if not data.multilabel:
        return {"top1": top1_accuracy(scores, data.labels)}
    with warnings.catch_warnings(record=True) as caught:  # classes without positives: say so in the log
        warnings.simplefilter("always")
        metrics = classification_metrics(scores, data.labels, list(data.classes))
    for warning in caught:
        log.warning("%s", warning.message)
    return metrics


def write_results_files(out: Path, data: LabelledImages, scores: np.ndarray) -> str | None:
    """Devkit comp1_cls_<split>_<cls>.txt files for a whole VOC split; None (and why) otherwise."""
    if data.kind != "voc":
        return None
    ids = read_split_ids(data.root, data.split)
    if len(ids) != len(data.paths):
        log.warning("results files not written: the test set is a subset (%d of %d images of split %s), which "
                    "`cebench evaluate` would refuse", len(data.paths), len(ids), data.split)
        return None
    write_cls_results(out, data.split, data.classes, ids, scores)
    return str(out)


def run_classify(cfg: ClassifyConfig, inputs: RunInputs) -> dict | None:
    """Fine-tune, test on rank 0, write metrics.json (+ VOC results files); returns the record (None off rank 0)."""
    return run_fine_tune(FineTuner, cfg, inputs)


def hold_out(data: LabelledImages, n: int, seed: int) -> tuple[LabelledImages, LabelledImages | None]:
    """(training images, `n` validation images drawn by `seed`) from one labelled set; (data, None) for n = 0."""
    if n == 0:
        return data, None
    if n >= len(data.paths):
        raise ValueError(f"train.val_images={n} leaves no training image of the {len(data.paths)} of {data.name}")
    held = set(np.random.default_rng([seed, 7]).permutation(len(data.paths))[:n].tolist())

    def pick(keep: bool) -> LabelledImages:
        rows = np.asarray([i for i in range(len(data.paths)) if (i in held) != keep], dtype=np.int64)
        return dataclasses.replace(data, paths=tuple(data.paths[i] for i in rows), labels=data.labels[rows])

    return pick(True), pick(False)


def open_inputs(args: argparse.Namespace, seed: int, val_images: int = 0) -> RunInputs:
    """Labelled training and test sets (subsets by --max-images, then `val_images` of the training subset held out
    for validation); refuses to test on the training split."""
    train = open_labelled(args.data, args.train_split)
    test = open_labelled(args.test_data or args.data, args.test_split)
    check_train_test(train, test)
    train, test = subset(train, args.max_images[0], seed), subset(test, args.max_images[1], seed)
    train, val = hold_out(train, val_images, seed)
    if train.multilabel and np.any((train.labels == 1).sum(0) == 0):
        missing = [c for c, n in zip(train.classes, (train.labels == 1).sum(0)) if n == 0]
        log.warning("classes without positive training images: %s", ", ".join(missing))
    return RunInputs(args.encoder, train, test, args.out, args.max_images, args.weights, val=val)


def summary(record: dict) -> str:
    """One line: the test numbers."""
    head = (f"{record['layers']} fine-tuned {record['steps']} steps on {record['train']['n_images']} images, "
            f"tested on {record['test']['n_images']} ({record['config']['test']['crops']} crops): ")
    if "top1" in record:
        return head + f"top-1 {record['top1']:.2f}%"
    return head + (f"mAP VOC07 11-pt {record['map_voc07_11pt']:.2f}, area {record['map_area']:.2f}, "
                   f"sklearn {record['map_sklearn']:.2f}")


COMMAND = TaskCommand(
    "image classification", "classify_demo",
    TaskData("VOC-format root (has ImageSets/Main) or training ImageFolder DIR/<class>/<image>", "trainval", "test"),
    ClassifyConfig,
    lambda cfg, args: run_classify(cfg, open_inputs(args, cfg.train.seed, cfg.train.val_images)), summary)
build_parser, main = COMMAND.build_parser, COMMAND.main


if __name__ == "__main__":
    raise SystemExit(main())
