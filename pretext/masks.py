"""Hole masks for inpainting pretext tasks: central square, random blocks, random regions, free-form strokes.

A mask is a bool tensor (B, 1, H, W) with True marking the hole the model cannot see.
Every generator draws all of its randomness from the `torch.Generator` it is given, so
the same generator state yields the same masks (exact resume relies on this).
"""

from __future__ import annotations

import abc
import functools
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MASK_KINDS = ("central", "block", "region", "freeform", "mixed")

_log = logging.getLogger(__name__)

# Object ids in VOC SegmentationObject PNGs: 0 is background, 255 the void band around objects.
_BACKGROUND_ID = 0
_VOID_ID = 255
# The VOC void band is ~5 px wide; growing an object this far into it closes the band.
_VOID_DILATION = 2
# Random rectangles and pasted shapes get an aspect ratio in [1/_MAX_ASPECT, _MAX_ASPECT].
_MAX_ASPECT = 2.0
# Control points per side of the random displacement field.
_WARP_CELLS = 4
# Region images outside (0, max_coverage] are re-rendered this often, over-cap ones shrunk each time.
_REGION_RETRIES = 4
_RETRY_SHRINK = 0.6
# Free-form images whose first stroke is over the cap, or whose strokes are all empty, are redrawn this often.
_STROKE_RETRIES = 4
# Bounds on stroke pixels (images x strokes x H x W) and on segment-window pixels handled at once, so memory stays
# flat at any image and batch size; larger chunks issue fewer, bigger ops.
_STROKE_CHUNK = 1 << 23
_SEGMENT_CHUNK = 1 << 21


class MaskGenerator(abc.ABC):
    """Batch mask generator; subclasses implement `generate`."""

    def __call__(
        self,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Return a bool hole mask (batch_size, 1, height, width) on `device`."""
        for name, value in (("batch_size", batch_size), ("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return self.generate(batch_size, height, width, generator, torch.device(device))

    @abc.abstractmethod
    def generate(
        self, batch_size: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Build the bool (B, 1, H, W) masks for validated arguments."""


class CentralMask(MaskGenerator):
    """The central quarter of the image, shrunk by `overlap` px so its ring stays visible context."""

    def __init__(self, overlap: int = 4) -> None:
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        self.overlap = overlap

    def generate(
        self, batch_size: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Same hole for every image: rows/cols [size//4 + overlap, size//4 + size//2 - overlap)."""
        if self.overlap >= min(height, width) // 4:
            raise ValueError(
                f"overlap {self.overlap} must be < min(height, width) // 4 = {min(height, width) // 4} "
                f"for images of {height}x{width}"
            )
        top, left = height // 4 + self.overlap, width // 4 + self.overlap
        mask = torch.zeros(1, 1, height, width, dtype=torch.bool, device=device)
        mask[..., top : top + height // 2 - 2 * self.overlap, left : left + width // 2 - 2 * self.overlap] = True
        return mask.expand(batch_size, -1, -1, -1).contiguous()


class BlockMask(MaskGenerator):
    """Per image 1..max_blocks random, possibly overlapping rectangles covering at most max_coverage."""

    def __init__(self, max_coverage: float = 0.25, min_coverage: float = 0.05, max_blocks: int = 6) -> None:
        _check_coverage(min_coverage, max_coverage)
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self.max_coverage, self.min_coverage, self.max_blocks = max_coverage, min_coverage, max_blocks

    def generate(
        self, batch_size: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Sample block sizes and positions, then paint them all at once."""
        _check_fits(self.max_coverage, height, width)
        target = _uniform(generator, (batch_size,), self.min_coverage, self.max_coverage)
        blocks = _sample_blocks(target, self.max_blocks, height, width, generator)
        return _paint_blocks(*(t.to(device) for t in blocks), height, width)


class RegionMask(MaskGenerator):
    """Bank shapes (object silhouettes or blobs), randomly scaled, rotated, flipped, deformed and pasted."""

    def __init__(
        self,
        bank: torch.Tensor | None = None,
        max_coverage: float = 0.25,
        min_coverage: float = 0.05,
        deform: float = 0.15,
        bank_size: int = 64,
        seed: int = 0,
    ) -> None:
        _check_coverage(min_coverage, max_coverage)
        if deform < 0:
            raise ValueError(f"deform must be >= 0, got {deform}")
        if bank is None:
            bank = blob_bank(bank_size, 64, torch.Generator().manual_seed(seed))
        self.bank = _check_bank(bank)
        # Area fraction of each shape inside its square: turns a coverage target into a scale.
        self.areas = self.bank.mean(dim=(1, 2)).double()
        self.max_coverage, self.min_coverage, self.deform = max_coverage, min_coverage, deform
        self.fallbacks = 0  # images that needed the block-mask fallback, for the curious caller
        self._bank_on: dict[torch.device, torch.Tensor] = {}

    def generate(
        self, batch_size: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Render shapes, re-render the images outside (0, max_coverage] smaller, then fall back to blocks."""
        _check_fits(self.max_coverage, height, width)
        target = _uniform(generator, (batch_size,), self.min_coverage, self.max_coverage)
        masks = self._render(target, height, width, generator, device)
        for attempt in range(1, _REGION_RETRIES + 1):
            empty, over = _coverage_faults(masks, self.max_coverage)
            if not bool((empty | over).any()):
                return masks
            masks = self._retry(masks, empty, over, _RETRY_SHRINK**attempt, generator)
        return self._fallback(masks, generator)

    def _retry(
        self, masks: torch.Tensor, empty: torch.Tensor, over: torch.Tensor, shrink: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Re-render only the faulty images; those over the cap get a smaller coverage target."""
        bad = empty | over
        target = _uniform(generator, (int(bad.sum()),), self.min_coverage, self.max_coverage)
        target = torch.where(over[bad].to(target.device), target * shrink, target)
        masks[bad.to(masks.device)] = self._render(target, masks.shape[2], masks.shape[3], generator, masks.device)
        return masks

    def _fallback(self, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Replace images still outside (0, max_coverage] by a single block, keeping the hard guarantee."""
        self.fallbacks += _replace_faults(masks, BlockMask(self.max_coverage, self.min_coverage, 1), generator)
        return masks

    def _render(
        self, target: torch.Tensor, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """One batched grid_sample pass pasting a random bank shape per image."""
        n = target.shape[0]
        index = torch.randint(len(self.bank), (n,), generator=generator, device=generator.device)
        theta = _shape_affine(target, self.areas.to(index.device)[index], height, width, generator)
        noise = self.deform * _uniform(generator, (n, 2, _WARP_CELLS, _WARP_CELLS), -1.0, 1.0)
        # A smooth displacement field in shape coordinates bends the silhouette without tearing it.
        grid = _smooth_grid(_affine_lattice(theta, height, width) + noise, height, width, device)
        shapes = self._bank_device(device)[index.to(device)].unsqueeze(1)
        return F.grid_sample(shapes, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5

    def _bank_device(self, device: torch.device) -> torch.Tensor:
        """The bank on `device`, copied once per device."""
        if device not in self._bank_on:
            self._bank_on[device] = self.bank.to(device)
        return self._bank_on[device]


class FreeFormMask(MaskGenerator):
    """Free-form brush strokes (Yu et al., ICCV 2019, Algorithm 1): thick zig-zag polylines with round joints.

    Per image 1..max_strokes strokes (bounds inclusive, as for vertices). A stroke starts at a random point and
    takes min_vertices..max_vertices segments (one vertex more, as in the released generator) whose directions
    alternate between mean_angle and 2*pi - mean_angle (each within a spread drawn up to angle_range), turned by a
    random rotation, with lengths ~ N(r, r/2) clipped to [0, 2r], r = sqrt(H^2 + W^2) / 8; each vertex is clipped
    to the image. Pixels whose centre lies within half the brush width (drawn in [min_width, max_width] * min(H, W))
    of a segment are hole. Images are then flipped at random horizontally and vertically.

    Coverage follows from the strokes, so there is no min_coverage. max_coverage is a hard cap: an image keeps its
    first k strokes for the largest k under the cap; an image whose first stroke is already over the cap (or whose
    kept strokes miss every pixel centre) is redrawn up to _STROKE_RETRIES times, then replaced by a single block
    (counted in `fallbacks`).
    """

    def __init__(
        self,
        max_strokes: int = 4,
        min_vertices: int = 4,
        max_vertices: int = 12,
        min_width: float = 12 / 256,
        max_width: float = 40 / 256,
        mean_angle: float = 2 * math.pi / 5,
        angle_range: float = 2 * math.pi / 15,
        max_coverage: float = 0.25,
    ) -> None:
        _check_strokes(max_strokes, min_vertices, max_vertices, min_width, max_width)
        if not 0 < max_coverage <= 1:
            raise ValueError(f"max_coverage must be in (0, 1], got {max_coverage}")
        if angle_range < 0:
            raise ValueError(f"angle_range must be >= 0, got {angle_range}")
        self.max_strokes, self.min_vertices, self.max_vertices = max_strokes, min_vertices, max_vertices
        self.min_width, self.max_width = min_width, max_width
        self.mean_angle, self.angle_range, self.max_coverage = mean_angle, angle_range, max_coverage
        self.fallbacks = 0  # images that needed the block-mask fallback, for the curious caller

    def generate(
        self, batch_size: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Draw and render strokes, redraw the images with no stroke under the cap, then fall back to a block."""
        _check_fits(self.max_coverage, height, width)
        masks = self._render(*self._draw(batch_size, height, width, generator), height, width, device)
        for _ in range(_STROKE_RETRIES):
            empty, over = _coverage_faults(masks, self.max_coverage)
            bad = empty | over
            if not bool(bad.any()):
                return masks
            strokes = self._draw(int(bad.sum()), height, width, generator)
            masks[bad] = self._render(*strokes, height, width, device)
        return self._fallback(masks, generator)

    def _fallback(self, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Replace images still outside (0, max_coverage] by one block covering half the cap to all of it."""
        # Most of these drew strokes over the cap, so a block near the cap is the closest stand-in.
        block = BlockMask(self.max_coverage, self.max_coverage / 2, max_blocks=1)
        self.fallbacks += _replace_faults(masks, block, generator)
        return masks

    def _draw(
        self, n: int, height: int, width: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Segments (n, S, V, 4) as x0, y0, x1, y1 px, their active flags (n, S, V), brush radii (n, S)."""
        strokes, vertices, device = self.max_strokes, self.max_vertices, generator.device
        count = torch.randint(1, strokes + 1, (n, 1, 1), generator=generator, device=device)
        length = torch.randint(self.min_vertices, vertices + 1, (n, strokes, 1), generator=generator, device=device)
        stroke, segment = torch.arange(strokes, device=device), torch.arange(vertices, device=device)
        active = (stroke[:, None] < count) & (segment < length)
        angle = self._angles(n, generator)
        r = math.hypot(height, width) / 8
        step = torch.randn((n, strokes, vertices), generator=generator, device=device, dtype=torch.float64)
        step = (r + r / 2 * step).clamp(0, 2 * r)
        size = torch.tensor([width, height], device=device, dtype=torch.float64)
        start = _uniform(generator, (n, strokes, 2), 0, 1) * size
        radius = _uniform(generator, (n, strokes), self.min_width, self.max_width) * min(height, width) / 2
        points = _clipped_walk(start, step[..., None] * torch.stack([angle.cos(), angle.sin()], -1), size)
        # x -> W - x mirrors pixel centres exactly, so flipping the vertices flips the rendered mask.
        flip = (_uniform(generator, (n, 1, 1, 2), 0, 1) < 0.5).expand_as(points)
        points = torch.where(flip, size - points, points)
        return torch.cat([points[:, :, :-1], points[:, :, 1:]], -1), active, radius

    def _angles(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Segment directions (n, S, V): alternating around mean_angle and 2*pi - mean_angle, then rotated."""
        shape = (n, self.max_strokes, self.max_vertices)
        spread = _uniform(generator, (n, self.max_strokes, 2, 1), 0, self.angle_range)
        low, high = self.mean_angle - spread[:, :, 0], self.mean_angle + spread[:, :, 1]
        angle = low + (high - low) * _uniform(generator, shape, 0, 1)
        even = torch.arange(self.max_vertices, device=angle.device) % 2 == 0
        angle = torch.where(even, 2 * math.pi - angle, angle)
        # The released generator has no rotation, so all its strokes drift rightwards; rotating spreads them.
        return angle + _uniform(generator, (n, self.max_strokes, 1), 0, 2 * math.pi)

    def _render(
        self,
        segments: torch.Tensor,
        active: torch.Tensor,
        radius: torch.Tensor,
        height: int,
        width: int,
        device: torch.device,
    ) -> torch.Tensor:
        """Per image, the union of its first k strokes for the largest k under the cap, bool (n, 1, H, W)."""
        n, strokes = active.shape[:2]
        masks = torch.zeros(n, 1, height, width, dtype=torch.bool, device=device)
        chunk = max(1, _STROKE_CHUNK // (strokes * height * width))
        segments, active, radius = segments.to(device), active.to(device), radius.to(device)
        for first in range(0, n, chunk):
            part = slice(first, first + chunk)
            # (c, S, H, W): stroke k alone, then, OR-ed in place, strokes 1..k.
            union = _paint_strokes(segments[part], active[part], radius[part], height, width)
            for k in range(1, strokes):
                union[:, k] |= union[:, k - 1]
            kept = (mask_coverage(union.flatten(0, 1)[:, None]).view(-1, strokes) <= self.max_coverage).sum(1)
            # kept == 0 (the first stroke is over the cap) leaves the image empty, to be redrawn.
            pick = union[torch.arange(len(kept), device=device), (kept - 1).clamp(min=0)]
            masks[part, 0] = pick & (kept > 0)[:, None, None]
        return masks


class MixedMask(MaskGenerator):
    """Each image's mask from one of several generators (kinds), drawn uniformly per image."""

    def __init__(self, kinds: dict[str, MaskGenerator] | list[MaskGenerator] | tuple[MaskGenerator, ...]) -> None:
        named = dict(kinds) if isinstance(kinds, dict) else {str(i): kind for i, kind in enumerate(kinds)}
        if not named:
            raise ValueError("MixedMask needs at least one mask generator, got none")
        for name, kind in named.items():
            if not isinstance(kind, MaskGenerator):
                raise ValueError(f"MixedMask kind {name!r} must be a MaskGenerator, got {type(kind).__name__}")
        self.kinds = named

    @property
    def fallbacks(self) -> int:
        """Block-mask fallbacks of the component generators, summed."""
        return sum(getattr(kind, "fallbacks", 0) for kind in self.kinds.values())

    def generate(
        self, batch_size: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Draw a kind per image, ask each kind once for its images' masks, scatter them back."""
        choice = torch.randint(len(self.kinds), (batch_size,), generator=generator, device=generator.device).cpu()
        masks = torch.zeros(batch_size, 1, height, width, dtype=torch.bool, device=device)
        for index, kind in enumerate(self.kinds.values()):
            rows = torch.nonzero(choice == index).flatten()
            if len(rows):
                masks[rows.to(device)] = kind.generate(len(rows), height, width, generator, device)
        return masks


def prediction_region(mask: torch.Tensor, overlap: int) -> torch.Tensor:
    """Dilate the hole by `overlap` px with a square element: the pixels the model must predict."""
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool (B, 1, H, W) tensor, got {mask.dtype} {tuple(mask.shape)}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if overlap == 0:
        return mask
    grown = F.max_pool2d(mask.float(), kernel_size=2 * overlap + 1, stride=1, padding=overlap)
    return grown > 0.5


def mask_coverage(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of hole pixels per image, float64 (B,)."""
    if mask.dim() != 4 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool (B, 1, H, W) tensor, got {mask.dtype} {tuple(mask.shape)}")
    return _hole_pixels(mask).double() / mask[0].numel()


def build_mask_generator(
    kind: str,
    *,
    overlap: int = 4,
    max_coverage: float = 0.25,
    min_coverage: float = 0.05,
    max_blocks: int = 6,
    region_bank: str | None = None,
    deform: float = 0.15,
    seed: int = 0,
    strokes: int = 4,
    vertices: tuple[int, int] | list[int] = (4, 12),
    brush_width: tuple[float, float] | list[float] = (12 / 256, 40 / 256),
    mix: list[str] | tuple[str, ...] = ("central", "region", "freeform"),
) -> MaskGenerator:
    """Build the mask generator named `kind` (one of MASK_KINDS) from flat config values.

    `strokes`, `vertices` (min, max) and `brush_width` (min, max, fractions of the shorter image side) set the
    free-form strokes; `mix` names the kinds a "mixed" generator draws from, each built from the same values.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    _check_coverage(min_coverage, max_coverage)
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if max_blocks < 1:
        raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
    if deform < 0:
        raise ValueError(f"deform must be >= 0, got {deform}")
    vertices, brush_width = _check_pair("vertices", vertices), _check_pair("brush_width", brush_width)
    _check_strokes(strokes, *vertices, *brush_width)
    _check_mix(mix)
    settings = dict(overlap=overlap, max_coverage=max_coverage, min_coverage=min_coverage, max_blocks=max_blocks,
                    region_bank=region_bank, deform=deform, seed=seed, strokes=strokes, vertices=vertices,
                    brush_width=brush_width)
    if kind == "mixed":
        return MixedMask({name: build_mask_generator(name, **settings) for name in mix})
    if kind == "central":
        return CentralMask(overlap)
    if kind == "block":
        return BlockMask(max_coverage, min_coverage, max_blocks)
    if kind == "freeform":
        return FreeFormMask(strokes, *vertices, *brush_width, max_coverage=max_coverage)
    bank = None if region_bank is None else _cached_bank(str(Path(region_bank).resolve()))
    return RegionMask(bank, max_coverage, min_coverage, deform, seed=seed)


def blob_bank(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Procedural star-shaped blobs, centred and non-empty, float (n, size, size) in {0, 1}."""
    if n < 1 or size < 4:
        raise ValueError(f"blob_bank needs n >= 1 and size >= 4, got n={n}, size={size}")
    harmonics = torch.arange(1, 6, dtype=torch.float64)
    # Amplitudes fall as 1/k so outlines stay smooth; their sum < 1 keeps every radius positive.
    amplitude = _uniform(generator, (n, 5), 0.0, 0.4).cpu() / harmonics
    phase = _uniform(generator, (n, 5), 0.0, 2 * math.pi).cpu()
    coords = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    angle, radius = torch.atan2(y, x), torch.hypot(x, y)
    wave = torch.cos(harmonics[:, None, None] * angle + phase[:, :, None, None])  # (n, 5, S, S)
    outline = 0.6 * (1.0 + (amplitude[:, :, None, None] * wave).sum(1))
    blobs = radius <= outline
    return torch.stack([_square_shape(blob, size) for blob in blobs])


@functools.lru_cache(maxsize=4)
def _cached_bank(root: str) -> torch.Tensor:
    """load_region_bank with the defaults, read once per process and folder (a suite scores many models on it)."""
    return load_region_bank(root)


def load_region_bank(root: str | Path, size: int = 64, max_shapes: int = 2000, min_pixels: int = 64) -> torch.Tensor:
    """Object silhouettes from VOC SegmentationObject PNGs, float (N, size, size) in {0, 1}."""
    if size < 1 or max_shapes < 1 or min_pixels < 1:
        raise ValueError(f"size, max_shapes, min_pixels must be >= 1, got {size}, {max_shapes}, {min_pixels}")
    shapes: list[torch.Tensor] = []
    dropped = 0
    for shape in _bank_shapes(_segmentation_pngs(Path(root)), size, min_pixels):
        if shape is None:
            dropped += 1
            continue
        shapes.append(shape)
        if len(shapes) == max_shapes:
            break
    if not shapes:
        raise ValueError(f"no object shapes with >= {min_pixels} pixels in the PNGs under {root}")
    _log.info("region bank %s: %d shapes kept, %d objects dropped as too small", root, len(shapes), dropped)
    return torch.stack(shapes)


def _bank_shapes(files: list[Path], size: int, min_pixels: int) -> Iterator[torch.Tensor | None]:
    """Each object of each file, in order, as a bank shape, or None when it is too small to keep."""
    for path in files:
        for pixels, obj in _objects_in_png(path):
            shape = _square_shape(obj, size)
            # A sliver thinner than one bank pixel vanishes in the resize and cannot be pasted.
            yield shape if pixels >= min_pixels and bool(shape.any()) else None


def _segmentation_pngs(root: Path) -> list[Path]:
    """Sorted PNGs of `root/SegmentationObject` (a VOC root) or of `root` itself."""
    folder = root / "SegmentationObject" if (root / "SegmentationObject").is_dir() else root
    if not folder.is_dir():
        raise ValueError(f"region bank folder {root} does not exist")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise ValueError(f"no PNG files in region bank folder {folder}")
    return files


def _objects_in_png(path: Path) -> list[tuple[int, torch.Tensor]]:
    """(pixel count, bool mask grown into the void band) per object, ascending object id."""
    ids = _read_id_png(path)
    void = torch.from_numpy(ids == _VOID_ID)
    objects = []
    for object_id in np.unique(ids):
        if object_id in (_BACKGROUND_ID, _VOID_ID):
            continue
        obj = torch.from_numpy(ids == object_id)
        objects.append((int(obj.sum()), _grow_into_void(obj, void)))
    return objects


def _read_id_png(path: Path) -> np.ndarray:
    """Pixel values (object ids) of a palette or grayscale PNG; ValueError naming a bad file."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise ValueError(f"{path}: expected a palette (P) or grayscale (L) PNG of ids, got mode {image.mode}")
            return np.array(image)
    except (OSError, SyntaxError) as error:
        raise ValueError(f"cannot read segmentation PNG {path}: {error}") from error


def _grow_into_void(obj: torch.Tensor, void: torch.Tensor) -> torch.Tensor:
    """Dilate the object by a few px, but only over void pixels, so the border band is closed."""
    if not bool(void.any()):
        return obj
    k = _VOID_DILATION
    grown = F.max_pool2d(obj[None, None].float(), kernel_size=2 * k + 1, stride=1, padding=k)[0, 0] > 0.5
    return obj | (grown & void)


def _square_shape(shape: torch.Tensor, size: int) -> torch.Tensor:
    """Crop a bool mask to its bounding box, pad it centred to a square, resize to size x size {0, 1}."""
    rows, cols = torch.nonzero(shape.any(1)).flatten(), torch.nonzero(shape.any(0)).flatten()
    crop = shape[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].float()
    h, w = crop.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = F.pad(crop, (left, side - w - left, top, side - h - top))
    resized = F.interpolate(square[None, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (resized[0, 0] >= 0.5).float()


def _check_coverage(min_coverage: float, max_coverage: float) -> None:
    """ValueError unless 0 < min_coverage <= max_coverage <= 1."""
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    if not min_coverage <= max_coverage <= 1:
        raise ValueError(f"max_coverage must be in [min_coverage={min_coverage}, 1], got {max_coverage}")


def _check_fits(max_coverage: float, height: int, width: int) -> None:
    """ValueError when not even one hole pixel fits under the coverage cap."""
    if max_coverage * height * width < 1:
        raise ValueError(f"max_coverage {max_coverage} allows no hole pixel in a {height}x{width} image")


def _check_strokes(max_strokes: int, min_vertices: int, max_vertices: int, min_width: float, max_width: float) -> None:
    """ValueError unless max_strokes >= 1, 1 <= min_vertices <= max_vertices and 0 < min_width <= max_width <= 1."""
    if max_strokes < 1:
        raise ValueError(f"max_strokes (strokes) must be >= 1, got {max_strokes}")
    if not 1 <= min_vertices <= max_vertices:
        raise ValueError(f"vertices must satisfy 1 <= min <= max, got ({min_vertices}, {max_vertices})")
    if not 0 < min_width <= max_width <= 1:
        raise ValueError(f"brush_width must satisfy 0 < min <= max <= 1, got ({min_width}, {max_width})")


def _check_pair(name: str, value: tuple | list) -> tuple:
    """The two items of a (min, max) setting; ValueError naming it otherwise."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {value!r}")
    return tuple(value)


def _check_mix(mix: list[str] | tuple[str, ...]) -> None:
    """ValueError unless `mix` lists distinct kinds of MASK_KINDS other than "mixed"."""
    if isinstance(mix, str) or not isinstance(mix, (list, tuple)) or not mix:
        raise ValueError(f"mix must be a non-empty list of mask kinds, got {mix!r}")
    mixable = [kind for kind in MASK_KINDS if kind != "mixed"]
    for name in mix:
        if name not in mixable:
            raise ValueError(f"mix kind {name!r} must be one of {', '.join(mixable)}")
        if list(mix).count(name) > 1:
            raise ValueError(f"mix lists {name!r} more than once: {list(mix)}")


def _check_bank(bank: torch.Tensor) -> torch.Tensor:
    """Validate a (N, S, S) shape bank and return it as float {0, 1} on the CPU."""
    if bank.dim() != 3 or bank.shape[0] < 1 or bank.shape[1] != bank.shape[2]:
        raise ValueError(f"region bank must be (N, S, S) with N >= 1, got shape {tuple(bank.shape)}")
    bank = (bank.detach().cpu().float() > 0.5).float()
    empty = torch.nonzero(bank.flatten(1).sum(1) == 0).flatten()
    if len(empty):
        raise ValueError(f"region bank has empty shapes at indices {empty[:10].tolist()}")
    return bank


def _uniform(generator: torch.Generator, size: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    """Float64 U(low, high) samples on the generator's device."""
    u = torch.rand(size, generator=generator, device=generator.device, dtype=torch.float64)
    return low + (high - low) * u


def _log_aspect(generator: torch.Generator, size: tuple[int, ...]) -> torch.Tensor:
    """Aspect ratios log-uniform in [1/_MAX_ASPECT, _MAX_ASPECT], float64."""
    return torch.exp(_uniform(generator, size, -math.log(_MAX_ASPECT), math.log(_MAX_ASPECT)))


def _sample_blocks(
    target: torch.Tensor, max_blocks: int, height: int, width: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Rectangles (top, left, h, w, active), each (B, K), whose areas sum to <= target * H * W."""
    batch = target.shape[0]
    # At least one pixel per image even when min_coverage * H * W < 1 (the cap allows it, see _check_fits).
    budget = torch.clamp(target * height * width, min=1.0)
    count = torch.randint(1, max_blocks + 1, (batch, 1), generator=generator, device=generator.device)
    active = torch.arange(max_blocks, device=count.device) < count
    share = _uniform(generator, (batch, max_blocks), 0.5, 1.5) * active
    share = share / share.sum(1, keepdim=True)
    area = budget[:, None] * share
    h = torch.floor(torch.sqrt(area * _log_aspect(generator, (batch, max_blocks)))).clamp(1, height)
    w = torch.floor(area / h).clamp(max=width)
    # The largest block keeps >= 1 pixel; if its share is < 1 px every other share is too, and they vanish.
    largest = F.one_hot(share.argmax(1), max_blocks).bool()
    w = torch.where(largest, w.clamp(min=1), w)
    active = active & (w >= 1)
    top = torch.floor(_uniform(generator, (batch, max_blocks), 0, 1) * (height - h + 1))
    left = torch.floor(_uniform(generator, (batch, max_blocks), 0, 1) * (width - w + 1))
    return top, left, h, w, active


def _paint_blocks(
    top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor, active: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Union of the active rectangles as a bool (B, 1, H, W) mask, via separable row/column masks."""
    ys = torch.arange(height, device=top.device, dtype=top.dtype)
    xs = torch.arange(width, device=top.device, dtype=top.dtype)
    rows = (ys >= top[..., None]) & (ys < (top + h)[..., None]) & active[..., None]  # (B, K, H)
    cols = (xs >= left[..., None]) & (xs < (left + w)[..., None])  # (B, K, W)
    hits = torch.bmm(rows.float().transpose(1, 2), cols.float())  # (B, H, W): blocks covering each pixel
    return (hits > 0.5).unsqueeze(1)


def _clipped_walk(start: torch.Tensor, step: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Vertices (..., V + 1, 2) of a walk from `start` (..., 2) by `step` (..., V, 2), each clipped to [0, size]."""
    points = [start]
    for i in range(step.shape[-2]):
        points.append(torch.minimum((points[-1] + step[..., i, :]).clamp(min=0), size))
    return torch.stack(points, -2)


def _paint_strokes(
    segments: torch.Tensor, active: torch.Tensor, radius: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Each stroke (union of its active segments at its brush radius) as bool (n, S, H, W)."""
    n, strokes = active.shape[:2]
    where = torch.nonzero(active)  # (N, 3): image, stroke, segment of each active segment
    radius = radius[where[:, 0], where[:, 1]]
    painted = _paint_segments(segments[active], radius, where[:, 0] * strokes + where[:, 1], n * strokes, height, width)
    return painted.view(n, strokes, height, width)


def _paint_segments(
    segments: torch.Tensor, radius: torch.Tensor, stroke: torch.Tensor, count: int, height: int, width: int
) -> torch.Tensor:
    """Bool (count, H, W): the pixels whose centre lies within radius (N,) of a segment (N, 4) of each stroke.

    Segments are x0, y0, x1, y1 in px from the image corner; `stroke` (N,) names each one's stroke. Only a window
    around each segment (its box grown by the radius) is measured, and only the hit pixels are written.
    """
    canvas = torch.zeros(count, height, width, dtype=torch.bool, device=segments.device)
    if len(segments) == 0:
        return canvas
    segments, radius = segments.float(), radius.float()[:, None]
    delta = segments[:, 2:] - segments[:, :2]  # (N, 2) as x, y
    size = torch.tensor([width, height], device=segments.device)
    # Window side: the widest box plus a pixel each side for the floor below and one for rounding.
    window = torch.minimum((delta.abs() + 2 * radius).amax(0).ceil().long() + 3, size)
    corner = torch.minimum(segments[:, :2], segments[:, 2:]) - radius - 0.5
    origin = torch.minimum(corner.floor().long().clamp(min=0), size - window)  # (N, 2) first column, first row
    step = max(1, _SEGMENT_CHUNK // int(window.prod()))
    for first in range(0, len(segments), step):
        part = slice(first, first + step)
        index, row, col = _window_hits(segments[part], radius[part], origin[part], window)
        canvas[stroke[part][index], origin[part][index, 1] + row, origin[part][index, 0] + col] = True
    return canvas


def _window_hits(
    segments: torch.Tensor, radius: torch.Tensor, origin: torch.Tensor, window: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(segment, row, column) in each segment's window of the pixel centres within its radius (N, 1)."""
    kw, kh = window.tolist()
    start, delta = segments[:, :2], segments[:, 2:] - segments[:, :2]
    px = (origin[:, :1] + torch.arange(kw, device=origin.device) + 0.5 - start[:, :1])[:, None, :]  # (N, 1, kw)
    py = (origin[:, 1:] + torch.arange(kh, device=origin.device) + 0.5 - start[:, 1:])[:, :, None]  # (N, kh, 1)
    ux, uy = delta[:, 0, None, None], delta[:, 1, None, None]
    # A zero-length segment is its start point; the clamp keeps the division finite.
    length2 = (ux * ux + uy * uy).clamp(min=1e-12)
    along = ((px * ux + py * uy) / length2).clamp(0, 1)  # nearest point of the segment, as a fraction of it
    hits = (px - along * ux).square() + (py - along * uy).square() <= radius.square()[:, :, None]
    return torch.nonzero(hits, as_tuple=True)


def _shape_affine(
    target: torch.Tensor, area: torch.Tensor, height: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """Affine maps (n, 2, 3), output -> shape coordinates, for a random scale, rotation, flip and position."""
    n = target.shape[0]
    aspect = _log_aspect(generator, (n,)).sqrt()
    side = torch.sqrt(target * height * width / area)  # pixels of the square shape at coverage `target`
    flip = torch.where(_uniform(generator, (n,), 0, 1) < 0.5, -1.0, 1.0)
    angle = _uniform(generator, (n,), 0, 2 * math.pi)
    shift_x = _uniform(generator, (n,), -width / 2, width / 2)
    shift_y = _uniform(generator, (n,), -height / 2, height / 2)
    sx, sy = flip * 2 / (side * aspect), 2 * aspect / side
    cos, sin = torch.cos(angle), torch.sin(angle)
    # shape = diag(sx, sy) @ R(-angle) @ (diag(W/2, H/2) @ out - shift), in normalised coordinates.
    row_x = torch.stack([sx * cos * width / 2, sx * sin * height / 2, -sx * (cos * shift_x + sin * shift_y)], 1)
    row_y = torch.stack([-sy * sin * width / 2, sy * cos * height / 2, -sy * (-sin * shift_x + cos * shift_y)], 1)
    return torch.stack([row_x, row_y], 1)


def _affine_lattice(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """theta applied to a _WARP_CELLS^2 lattice spanning the output pixel centres, (n, 2, g, g)."""
    xs = torch.linspace(1 / width - 1, 1 - 1 / width, _WARP_CELLS, dtype=theta.dtype, device=theta.device)
    ys = torch.linspace(1 / height - 1, 1 - 1 / height, _WARP_CELLS, dtype=theta.dtype, device=theta.device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([x, y, torch.ones_like(x)])  # (3, g, g)
    return torch.einsum("ncj,jhw->nchw", theta, points)


def _smooth_grid(lattice: torch.Tensor, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Bilinear upsampling (align_corners) of a (n, 2, g, g) lattice to a grid_sample grid (n, H, W, 2).

    Bilinear interpolation reproduces affine maps exactly, so the affine part and the warp share
    this one cheap separable pass instead of a full-size affine_grid plus an interpolate.
    """
    n, _, cells, _ = lattice.shape
    along_w = _hat_weights(width, cells, device)  # (W, g)
    along_h = _hat_weights(height, cells, device)  # (H, g)
    lattice = lattice.to(device=device, dtype=torch.float32)
    rows = torch.einsum("nchk,wk->nhwc", lattice, along_w).reshape(n, cells, width * 2)
    return torch.matmul(along_h, rows).view(n, height, width, 2)


def _hat_weights(size: int, cells: int, device: torch.device) -> torch.Tensor:
    """(size, cells) linear interpolation weights, first and last pixel on the first and last cell."""
    position = torch.linspace(0, cells - 1, size, device=device)
    return torch.clamp(1 - (position[:, None] - torch.arange(cells, device=device)).abs(), min=0)


def _hole_pixels(masks: torch.Tensor) -> torch.Tensor:
    """Hole pixels per image, int32 (B,)."""
    # Summing bool promotes to an int64 copy of the whole batch; uint8 with an int32 accumulator does not.
    return masks.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32)


def _replace_faults(masks: torch.Tensor, block: BlockMask, generator: torch.Generator) -> int:
    """Overwrite, in place, the images outside (0, block.max_coverage] with `block` masks; return how many."""
    empty, over = _coverage_faults(masks, block.max_coverage)
    bad = empty | over
    n_bad = int(bad.sum())
    if n_bad:
        masks[bad] = block.generate(n_bad, masks.shape[2], masks.shape[3], generator, masks.device)
    return n_bad


def _coverage_faults(masks: torch.Tensor, max_coverage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool (B,) flags: images with an empty hole, images over the coverage cap."""
    count = _hole_pixels(masks)
    return count == 0, count.double() > max_coverage * masks[0].numel()
