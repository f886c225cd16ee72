"""Image datasets (resize, crop, flip), unlabelled or with a label per image, and a resumable, rank-sharded
infinite sampler.

Every random choice of the pipeline comes from a key the sampler yields with the index
(seed, epoch, position), so a run restarted at step s sees exactly the batches it would have seen,
whatever the number of loader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from .images import DEFAULT_MAX_PIXELS, BadImageError, load_rgb

log = logging.getLogger(__name__)
SampleKey = tuple[int, tuple[int, int, int]]
MAX_SKIP_TRIES = 32


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side equals `size` (antialiased bilinear)."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img if new == (w, h) else img.resize(new, Image.BILINEAR)


def crop_flip(img: Image.Image, size: int, rng: np.random.Generator | None, flip: bool) -> Image.Image:
    """Random (rng given) or centre square crop, then a random horizontal flip."""
    w, h = img.size
    if rng is None:
        x, y = (w - size) // 2, (h - size) // 2
    else:
        x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    img = img.crop((x, y, x + size, y + size))
    if rng is not None and flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 (3, H, W); normalisation happens on the device."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


class UnlabelledImages(Dataset):
    """Images from a list of paths; items are keyed by `SampleKey` (train) or a plain index (centre crop)."""

    def __init__(self, paths: Sequence[Path], load_size: int, fine_size: int, flip: bool = True,
                 on_bad_image: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be error or skip, got {on_bad_image!r}")
        if load_size < fine_size:
            raise ValueError(f"load_size {load_size} < fine_size {fine_size}")
        self.paths = list(paths)
        self.load_size, self.fine_size, self.flip = load_size, fine_size, flip
        self.on_bad_image, self.max_pixels = on_bad_image, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        """One preprocessed image; raises BadImageError."""
        img = load_rgb(self.paths[index], self.max_pixels, min_side=self.load_size)
        img = crop_flip(resize_shorter(img, self.load_size), self.fine_size, rng, self.flip)
        return to_uint8_tensor(img)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, tuple[str, ...]]:
        _, image, skipped = self.first_readable(key)
        return image, skipped

    def first_readable(self, key: int | SampleKey) -> tuple[int, torch.Tensor, tuple[str, ...]]:
        """(index of the image loaded, the image, paths skipped on the way): with data.on_bad_image=skip an
        unreadable image gives way to the next readable one."""
        index, aug = (key, None) if isinstance(key, int) else key
        rng = None if aug is None else np.random.default_rng(list(aug))
        skipped: list[str] = []
        for attempt in range(MAX_SKIP_TRIES):
            i = (index + attempt) % len(self.paths)
            try:
                return i, self.load(i, rng), tuple(skipped)
            except BadImageError as exc:
                if self.on_bad_image == "error":
                    raise BadImageError(f"{exc} (set data.on_bad_image=skip to skip unreadable images)") from exc
                log.warning("skipping unreadable image: %s", exc)
                skipped.append(str(self.paths[i]))
        raise BadImageError(f"{MAX_SKIP_TRIES} consecutive unreadable images from {self.paths[index]}; last: {skipped[-1]}")


def collate(items: list[tuple[torch.Tensor, tuple[str, ...]]]) -> dict:
    """Stack images; carry the paths of skipped files so the trainer can count them."""
    return {"images": torch.stack([t for t, _ in items]), "skipped": [p for _, s in items for p in s]}


class ImagesWithLabels(UnlabelledImages):
    """Images with a label each: (N,) class indices or (N, C) multi-label rows. An image skipped as unreadable
    gives way to the next one together with its label."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, load_size: int, fine_size: int, flip: bool = True,
                 on_bad_image: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(paths, load_size, fine_size, flip, on_bad_image, max_pixels)
        if len(labels) != len(self.paths):
            raise ValueError(f"{len(labels)} labels for {len(self.paths)} images")
        self.labels = torch.from_numpy(np.ascontiguousarray(labels))

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor]:
        index, image, skipped = self.first_readable(key)
        return image, skipped, self.labels[index]


def collate_labelled(items: list[tuple[torch.Tensor, tuple[str, ...], torch.Tensor]]) -> dict:
    """`collate` of ImagesWithLabels items, with the labels stacked under "labels"."""
    return {**collate([(t, s) for t, s, _ in items]), "labels": torch.stack([y for _, _, y in items])}


class ResumableSampler(Sampler):
    """Infinite, per-epoch shuffled, rank-sharded keys, starting after `start` samples of this rank."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world_size, start
        self.per_rank = -(-n // world_size)

    def _shard(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        perm += perm[: self.per_rank * self.world - self.n]  # wrap so every rank gets as many
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[SampleKey]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            shard = self._shard(epoch)
            for i in range(offset, self.per_rank):
                yield shard[i], (self.seed, epoch, i * self.world + self.rank)
            epoch, offset = epoch + 1, 0


def build_loader(dataset: Dataset, batch_size: int, seed: int, workers: int, rank: int = 0,
                 world_size: int = 1, start_step: int = 0, pin_memory: bool = False,
                 collate_fn: Callable | None = collate) -> DataLoader:
    """Infinite loader of a dataset indexed by SampleKey that resumes at `start_step` (batches already consumed
    by this rank); `collate_fn=None` is torch's default collation."""
    sampler = ResumableSampler(len(dataset), seed, rank, world_size, start=start_step * batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      pin_memory=pin_memory, drop_last=True, persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None)


def default_workers() -> int:
    """Decoding processes for a pass over a set: one core is left to the network; at most 4."""
    import os

    return max(0, min(4, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
                      - 1))


class _Reported(Dataset):
    """`dataset[i][0]`, or for an unreadable image an empty tensor and the error's message: a worker process hands
    its errors back as data, so one pass can name every bad file."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return self.dataset[index][0], ""
        except BadImageError as exc:  # the reader's own message, without the training loop's data.on_bad_image hint
            return torch.empty(0, dtype=torch.uint8), str(exc.__cause__ if isinstance(exc.__cause__, BadImageError)
                                                          else exc)


def _collate_reported(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor | None, list[str]]:
    errors = [e for _, e in items]
    return (None if any(errors) else torch.stack([t for t, _ in items])), errors


def image_batches(dataset: Dataset, batch_size: int, workers: int | None = None, progress: bool = False,
                  desc: str = "images") -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, uint8 images) of `dataset` (items `(image, ...)`) in order, decoded by `workers` processes
    (None: `default_workers()`; none for a set of one batch), with a progress bar when `progress` and stderr is a
    terminal. An unreadable image does not stop the pass: the batches after it are still decoded (not yielded),
    and the pass ends with one BadImageError naming every bad file and the count."""
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    workers = workers if len(dataset) > batch_size else 0
    loader = DataLoader(_Reported(dataset), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate_reported, prefetch_factor=4 if workers else None)
    bad: list[str] = []
    from tqdm import tqdm

    with tqdm(total=len(dataset), desc=desc, unit="img", disable=None if progress else True, leave=False,
              dynamic_ncols=True) as bar:
        for n, (images, errors) in enumerate(loader):
            bad += [e for e in errors if e]
            if not bad:
                yield list(range(n * batch_size, n * batch_size + len(errors))), images
            bar.update(len(errors))
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise BadImageError(f"{len(bad)} of {len(dataset)} images unreadable: {shown}")


def estimate_mean(dataset: UnlabelledImages, max_images: int = 256) -> list[float]:
    """RGB mean in [0, 1] of centre crops of up to `max_images` evenly spaced images."""
    idx = np.linspace(0, len(dataset) - 1, num=min(max_images, len(dataset))).round().astype(int)
    total, count = torch.zeros(3, dtype=torch.float64), 0
    for i in dict.fromkeys(idx.tolist()):
        img = dataset[int(i)][0]
        total += img.double().mean(dim=(1, 2)) / 255.0
        count += 1
    return [round(float(v), 6) for v in total / count]
