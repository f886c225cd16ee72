"""Tests for pretext.masks: shapes, determinism, coverage guarantees, the region bank reader."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pretext.masks import (
    MASK_KINDS,
    BlockMask,
    CentralMask,
    FreeFormMask,
    MaskGenerator,
    MixedMask,
    RegionMask,
    blob_bank,
    build_mask_generator,
    load_region_bank,
    mask_coverage,
    prediction_region,
)
from pretext.masks import _affine_lattice, _paint_segments, _smooth_grid

VOC_SAMPLES = Path("/work/shared/data/voc_samples/instance_segmentation")
BLOBS = blob_bank(32, 64, torch.Generator().manual_seed(0))


def _masks(kind: str, batch: int, size: int, seed: int = 0, **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return build_mask_generator(kind, **kwargs)(batch, size, size, generator)


def _bbox_fill(mask: torch.Tensor) -> torch.Tensor:
    """Per image: hole pixels / pixels of the hole's bounding box (1.0 for a rectangle)."""
    fills = []
    for m in mask[:, 0]:
        rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        fills.append(m.sum() / box)
    return torch.stack(fills)


def _write_ids(path: Path, ids: np.ndarray) -> None:
    """Save an object-id array as a palette PNG like VOC's SegmentationObject files."""
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette([i % 256 for i in range(768)])
    image.save(path)


def _rect_with_void(void: bool) -> np.ndarray:
    """A 10x20 object (id 1) inside a 2 px void band when `void`, plus a 5-pixel object (id 3)."""
    ids = np.zeros((40, 40), np.uint8)
    if void:
        ids[8:22, 8:32] = 255
    ids[10:20, 10:30] = 1
    ids[35, 0:5] = 3
    return ids


def _disk(size: int = 40, radius: int = 12) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (((y - size / 2) ** 2 + (x - size / 2) ** 2) <= radius**2).astype(np.uint8) * 2


@pytest.fixture
def png_bank(tmp_path: Path) -> Path:
    """Two palette PNGs: a rectangle in a void band plus a sub-threshold speck; a disk (id 2)."""
    _write_ids(tmp_path / "a.png", _rect_with_void(void=True))
    _write_ids(tmp_path / "b.png", _disk())
    return tmp_path


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_shape_dtype_device(kind: str, device) -> None:
    masks = build_mask_generator(kind)(3, 48, 40, torch.Generator().manual_seed(1), device)
    assert masks.shape == (3, 1, 48, 40)
    assert masks.dtype == torch.bool
    assert masks.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_cuda_device_matches_cpu_shapes(kind: str) -> None:
    masks = build_mask_generator(kind)(4, 64, 64, torch.Generator().manual_seed(1), "cuda")
    assert masks.is_cuda and masks.shape == (4, 1, 64, 64) and masks.dtype == torch.bool
    coverage = mask_coverage(masks)
    assert bool(((coverage > 0) & (coverage <= 0.25)).all())


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_same_seed_gives_identical_masks(kind: str) -> None:
    assert torch.equal(_masks(kind, 16, 64, seed=5), _masks(kind, 16, 64, seed=5))


@pytest.mark.parametrize("kind", ["block", "region", "freeform", "mixed"])
def test_different_seed_gives_different_masks(kind: str) -> None:
    assert not torch.equal(_masks(kind, 16, 64, seed=5), _masks(kind, 16, 64, seed=6))


def test_generator_state_advances() -> None:
    generator = torch.Generator().manual_seed(0)
    region = RegionMask(BLOBS)
    assert not torch.equal(region(8, 64, 64, generator), region(8, 64, 64, generator))


@pytest.mark.parametrize("height,width", [(64, 64), (127, 127), (128, 128), (227, 227), (127, 64), (65, 227)])
@pytest.mark.parametrize("overlap", [0, 4, 7])
def test_central_prediction_region_is_central_quarter(height: int, width: int, overlap: int) -> None:
    hole = CentralMask(overlap)(2, height, width, torch.Generator())
    quarter = torch.zeros(2, 1, height, width, dtype=torch.bool)
    quarter[..., height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = True
    assert torch.equal(prediction_region(hole, overlap), quarter)
    assert int(hole[0].sum()) == (height // 2 - 2 * overlap) * (width // 2 - 2 * overlap)
    assert torch.equal(hole[0], hole[1])


def test_prediction_region_hand_computed() -> None:
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    mask[0, 0, 2, 2] = True
    mask[0, 0, 0, 4] = True  # corner pixel: its dilation is clipped by the border
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[1:4, 1:4] = True
    expected[0:2, 3:5] = True
    assert torch.equal(prediction_region(mask, 1)[0, 0], expected)
    assert prediction_region(mask, 0) is mask


def test_prediction_region_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="bool"):
        prediction_region(torch.zeros(1, 1, 4, 4), 1)
    with pytest.raises(ValueError, match="overlap"):
        prediction_region(torch.zeros(1, 1, 4, 4, dtype=torch.bool), -1)


@pytest.mark.parametrize("kind", ["block", "region"])
@pytest.mark.parametrize("size", [64, 128])
def test_coverage_statistics(kind: str, size: int) -> None:
    masks = _masks(kind, 256, size, seed=3)
    coverage = mask_coverage(masks)
    assert bool((coverage > 0).all()) and bool((coverage <= 0.25).all())
    assert 0.05 <= float(coverage.mean()) <= 0.25
    assert torch.unique(masks.flatten(1), dim=0).shape[0] >= 250


def test_block_masks_respect_small_caps() -> None:
    masks = BlockMask(max_coverage=0.02, min_coverage=0.01, max_blocks=6)(64, 32, 32, torch.Generator())
    counts = masks.flatten(1).sum(1)
    assert bool((counts > 0).all()) and bool((counts <= 0.02 * 32 * 32).all())


def test_single_block_is_a_rectangle() -> None:
    masks = BlockMask(max_blocks=1)(32, 64, 64, torch.Generator().manual_seed(0))
    assert bool((_bbox_fill(masks) == 1).all())


def test_region_masks_are_not_rectangles(png_bank: Path) -> None:
    for bank in (BLOBS, load_region_bank(png_bank, size=32)):
        masks = RegionMask(bank)(128, 96, 96, torch.Generator().manual_seed(0))
        assert float((_bbox_fill(masks) < 0.98).float().mean()) > 0.8


def test_region_retries_keep_the_cap() -> None:
    # A full-square bank under a tight cap: many renders land over it or vanish and must be redone.
    region = RegionMask(torch.ones(1, 8, 8), max_coverage=0.02, min_coverage=0.02, deform=0.0)
    coverage = mask_coverage(region(64, 16, 16, torch.Generator().manual_seed(0)))
    assert bool((coverage > 0).all()) and bool((coverage <= 0.02).all())


@pytest.mark.parametrize("fill", [True, False])
def test_region_falls_back_to_blocks_when_retries_fail(monkeypatch: pytest.MonkeyPatch, fill: bool) -> None:
    def broken_render(self, target, height, width, generator, device):
        return torch.full((target.shape[0], 1, height, width), fill, dtype=torch.bool, device=device)

    monkeypatch.setattr(RegionMask, "_render", broken_render)
    region = RegionMask(BLOBS)
    masks = region(8, 32, 32, torch.Generator().manual_seed(0))
    coverage = mask_coverage(masks)
    assert bool((coverage > 0).all()) and bool((coverage <= 0.25).all())
    assert region.fallbacks == 8 and bool((_bbox_fill(masks) == 1).all())


def test_smooth_grid_equals_affine_grid() -> None:
    theta = torch.randn(3, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for height, width in [(227, 227), (17, 40)]:
        expected = F.affine_grid(theta.float(), [3, 1, height, width], align_corners=False)
        got = _smooth_grid(_affine_lattice(theta, height, width), height, width, torch.device("cpu"))
        assert torch.allclose(got, expected, atol=1e-5)


def test_blob_bank_is_binary_centred_and_filled() -> None:
    assert BLOBS.shape == (32, 64, 64)
    assert set(BLOBS.unique().tolist()) == {0.0, 1.0}
    assert bool((BLOBS[:, 32, 32] == 1).all())
    assert bool((BLOBS.mean((1, 2)) > 0.3).all())
    assert torch.equal(BLOBS, blob_bank(32, 64, torch.Generator().manual_seed(0)))


def test_load_region_bank_reads_objects_and_handles_void(png_bank: Path) -> None:
    bank = load_region_bank(png_bank, size=16, min_pixels=20)
    assert bank.shape == (2, 16, 16)  # the 5-pixel speck is dropped
    assert set(bank.unique().tolist()) == {0.0, 1.0}
    rect_rows = int(bank[0].any(1).sum())
    assert bool(bank[0].any(0).all())  # the 24 px wide rectangle spans the square
    assert rect_rows in (9, 10)  # grown into the void band: 14/24 of 16 rows, not 10/20
    _write_ids(png_bank / "a.png", _rect_with_void(void=False))
    assert int(load_region_bank(png_bank, size=16, min_pixels=20)[0].any(1).sum()) == 8


def test_load_region_bank_voc_layout_and_limits(png_bank: Path, tmp_path: Path) -> None:
    root = tmp_path / "voc"
    (root / "SegmentationObject").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (root / "SegmentationObject" / name).write_bytes((png_bank / name).read_bytes())
    assert load_region_bank(root, size=8, min_pixels=1).shape == (3, 8, 8)
    assert load_region_bank(root, size=8, max_shapes=2, min_pixels=1).shape == (2, 8, 8)


def test_load_region_bank_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no PNG"):
        load_region_bank(tmp_path)
    _write_ids(tmp_path / "void.png", np.full((8, 8), 255))
    with pytest.raises(ValueError, match="no object shapes"):
        load_region_bank(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="broken.png"):
        load_region_bank(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_region_bank(tmp_path / "missing")


def test_load_region_bank_rejects_rgb(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png"):
        load_region_bank(tmp_path)


@pytest.mark.skipif(not VOC_SAMPLES.is_dir(), reason="shared VOC samples not present")
def test_load_region_bank_real_voc() -> None:
    bank = load_region_bank(VOC_SAMPLES)
    assert bank.shape == (12, 64, 64)  # 3 + 6 + 3 objects in the three sample images
    assert bool((bank.flatten(1).sum(1) > 0).all())
    masks = build_mask_generator("region", region_bank=str(VOC_SAMPLES))(64, 128, 128, torch.Generator())
    coverage = mask_coverage(masks)
    assert bool((coverage > 0).all()) and bool((coverage <= 0.25).all())


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 4),
    height=st.integers(16, 96),
    width=st.integers(16, 96),
    low=st.floats(0.01, 0.3),
    spread=st.floats(0.0, 0.3),
    seed=st.integers(0, 2**31 - 1),
)
def test_coverage_guarantee_property(batch: int, height: int, width: int, low: float, spread: float, seed: int) -> None:
    high = low + spread
    for generator in (BlockMask(high, low), RegionMask(BLOBS, high, low)):
        counts = generator(batch, height, width, torch.Generator().manual_seed(seed)).flatten(1).sum(1)
        assert bool((counts > 0).all()) and bool((counts <= high * height * width).all())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"min_coverage": 0.0}, "min_coverage"),
        ({"max_coverage": 1.5}, "max_coverage"),
        ({"min_coverage": 0.3, "max_coverage": 0.2}, "max_coverage"),
        ({"max_blocks": 0}, "max_blocks"),
        ({"overlap": -1}, "overlap"),
        ({"deform": -0.1}, "deform"),
    ],
)
def test_build_rejects_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_mask_generator("block", **kwargs)


def test_build_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="central, block, region"):
        build_mask_generator("random")


def test_build_returns_each_kind(png_bank: Path) -> None:
    assert isinstance(build_mask_generator("central"), CentralMask)
    assert isinstance(build_mask_generator("block"), BlockMask)
    region = build_mask_generator("region", region_bank=str(png_bank))
    assert isinstance(region, RegionMask) and region.bank.shape[0] == 2


def test_call_rejects_bad_arguments() -> None:
    generator = torch.Generator()
    with pytest.raises(ValueError, match="overlap 8"):
        CentralMask(8)(1, 32, 32, generator)
    with pytest.raises(ValueError, match="batch_size"):
        BlockMask()(0, 32, 32, generator)
    with pytest.raises(ValueError, match="height"):
        BlockMask()(1, 32.0, 32, generator)
    with pytest.raises(ValueError, match="generator"):
        BlockMask()(1, 32, 32, 0)
    with pytest.raises(ValueError, match="allows no hole pixel"):
        BlockMask(0.05, 0.05)(1, 4, 4, generator)
    with pytest.raises(ValueError, match="region bank"):
        RegionMask(torch.ones(2, 8, 9))
    with pytest.raises(ValueError, match="empty shapes"):
        RegionMask(torch.zeros(2, 8, 8))


# --- free-form strokes and mixed kinds ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def freeform_64() -> torch.Tensor:
    """256 default free-form masks at 64 px, one batch."""
    return FreeFormMask()(256, 64, 64, torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def freeform_256() -> torch.Tensor:
    """256 default free-form masks at 256 px, drawn in batches of 64 from one generator."""
    generator = torch.Generator().manual_seed(0)
    return torch.cat([FreeFormMask()(64, 256, 256, generator) for _ in range(4)])


def _coverage_summary(coverage: torch.Tensor) -> str:
    return f"mean {coverage.mean():.4f} std {coverage.std():.4f} min {coverage.min():.4f} max {coverage.max():.4f}"


def _boundary_fraction(mask: torch.Tensor) -> torch.Tensor:
    """Per image: hole pixels with a 4-neighbour outside the hole (the image border counts) / hole pixels."""
    x = F.pad(mask.float(), (1, 1, 1, 1))
    inner = (x[..., :-2, 1:-1] * x[..., 2:, 1:-1] * x[..., 1:-1, :-2] * x[..., 1:-1, 2:]) > 0.5
    return (mask & ~inner).flatten(1).sum(1).double() / mask.flatten(1).sum(1).double()


def _square_boundary_fraction(mask: torch.Tensor) -> torch.Tensor:
    """Per image: the boundary fraction of a square with the same area, the least any rectangle reaches."""
    area = mask.flatten(1).sum(1).double()
    return (4 * area.sqrt() - 4) / area


def _numpy_strokes(segments: list, radius: list, stroke: list, count: int, height: int, width: int):
    """Float64 brute force of _paint_segments, and the closest any pixel-centre distance comes to its radius."""
    ys, xs = np.mgrid[:height, :width] + 0.5
    out, margin = np.zeros((count, height, width), bool), np.inf
    for (x0, y0, x1, y1), r, s in zip(segments, radius, stroke):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        dist = np.hypot(xs - x0 - t * dx, ys - y0 - t * dy)
        out[s] |= dist <= r
        margin = min(margin, float(np.abs(dist - r).min()))
    return out, margin


def test_freeform_masks_are_non_empty_and_capped(freeform_64: torch.Tensor, freeform_256: torch.Tensor) -> None:
    for masks in (freeform_64, freeform_256):
        coverage = mask_coverage(masks)
        assert masks.dtype == torch.bool and masks.shape[:2] == (256, 1)
        assert bool((coverage > 0).all()) and bool((coverage <= 0.25).all()), _coverage_summary(coverage)


def test_freeform_coverage_statistics(freeform_256: torch.Tensor) -> None:
    # Measured over 1024 masks at 256 px: mean 0.155, std 0.064, so 256 masks pin the mean to +-0.004 (one standard
    # error). [0.13, 0.18] is ~6 of them: halved brushes (0.113) or strokes of 2..6 segments (0.119) fall outside.
    coverage = mask_coverage(freeform_256)
    assert 0.13 <= float(coverage.mean()) <= 0.18, _coverage_summary(coverage)
    assert float(coverage.std()) > 0.03, _coverage_summary(coverage)
    assert len({mask.numpy().tobytes() for mask in freeform_256}) == 256


def test_freeform_strokes_are_thin(freeform_256: torch.Tensor) -> None:
    # A rectangle's boundary fraction is at least its square's (single blocks measure 1.0-1.1 times it);
    # brushes 12-40 px wide put ~1.7 times as many of their pixels on the boundary.
    ratio = _boundary_fraction(freeform_256) / _square_boundary_fraction(freeform_256)
    blocks = BlockMask(max_blocks=1)(64, 256, 256, torch.Generator().manual_seed(0))
    block_ratio = _boundary_fraction(blocks) / _square_boundary_fraction(blocks)
    assert float(block_ratio.max()) < 1.15
    assert float(ratio.mean()) > 1.5 and float(ratio.median()) > 1.5, f"mean {ratio.mean():.2f}"


def test_freeform_brush_scales_with_the_image(freeform_64: torch.Tensor, freeform_256: torch.Tensor) -> None:
    # Widths and lengths are fractions of the image, so coverage is size-free: measured 0.155 at 64 px, 0.149 at 256.
    small, large = mask_coverage(freeform_64), mask_coverage(freeform_256)
    assert abs(float(small.mean()) - float(large.mean())) < 0.02, (_coverage_summary(small), _coverage_summary(large))


def test_freeform_cap_keeps_leading_strokes(freeform_64: torch.Tensor) -> None:
    # Same draws under two caps: the capped image is the union of a prefix of the uncapped image's strokes.
    free = FreeFormMask(max_coverage=1.0)(256, 64, 64, torch.Generator().manual_seed(0))
    capped = freeform_64
    free_coverage, capped_coverage = mask_coverage(free), mask_coverage(capped)
    subset = ~(capped & ~free).flatten(1).any(1)
    assert float(subset.double().mean()) >= 0.95
    assert float((subset & (capped_coverage < free_coverage)).double().mean()) >= 0.15  # measured 0.29
    assert float(free_coverage.max()) > 0.4 and float(free_coverage.mean()) > float(capped_coverage.mean()) + 0.02


def test_freeform_draw_follows_algorithm_1() -> None:
    height, width = 80, 120
    mask = FreeFormMask(max_strokes=3, min_vertices=2, max_vertices=6, min_width=0.1, max_width=0.3)
    segments, active, radius = mask._draw(512, height, width, torch.Generator().manual_seed(0))
    assert segments.shape == (512, 3, 6, 4) and active.shape == (512, 3, 6) and radius.shape == (512, 3)
    strokes, vertices = active.any(2).sum(1), active.sum(2)[active.any(2)]
    assert set(strokes.tolist()) == {1, 2, 3} and set(vertices.tolist()) == set(range(2, 7))
    assert bool(active[:, :, 0].any(1).all()) and bool((active[:, 0, :2]).all())  # strokes, segments from the first
    assert float(radius.min()) >= 0.1 * 80 / 2 and float(radius.max()) <= 0.3 * 80 / 2
    x, y = segments[..., 0::2], segments[..., 1::2]
    assert bool(((x >= 0) & (x <= width) & (y >= 0) & (y <= height)).all())
    delta = segments[..., 2:] - segments[..., :2]
    r = math.hypot(height, width) / 8
    length = delta.norm(dim=-1)
    assert float(length.max()) <= 2 * r + 1e-9
    # A segment ending inside the image was not clipped: its direction and length are the drawn ones.
    end_x, end_y = segments[..., 2], segments[..., 3]
    inside = (end_x > 0) & (end_x < width) & (end_y > 0) & (end_y < height)
    # N(r, r/2) clipped to [0, 2r] has mean r; long segments leave the image more often: unclipped ones measure 0.95 r.
    assert 0.85 < float(length[inside].mean()) / r < 1.0
    pair = inside[..., :-1] & inside[..., 1:] & (length[..., :-1] > 1e-6) & (length[..., 1:] > 1e-6)
    cos = (delta[..., :-1, :] * delta[..., 1:, :]).sum(-1) / (length[..., :-1] * length[..., 1:]).clamp(min=1e-12)
    turn = torch.rad2deg(torch.arccos(cos[pair].clamp(-1, 1)))
    # Zig-zag: consecutive directions differ by angle_i + angle_j, each in 72 +- 24 degrees, so by 96..180 degrees
    # (sums past 180 fold back); a straight or randomly turning walk would give turns near 0 too.
    assert len(turn) > 500 and float(turn.min()) >= 96 - 1e-6
    assert 135 < float(turn.median()) < 155, float(turn.median())


@pytest.mark.parametrize("chunk", [None, 1])
def test_paint_segments_marks_pixels_within_half_width(monkeypatch: pytest.MonkeyPatch, chunk: int | None) -> None:
    if chunk is not None:  # one segment per pass
        monkeypatch.setattr("pretext.masks._SEGMENT_CHUNK", chunk)
    # Stroke 0: a bent polyline; stroke 1: a dot near a corner and a segment along the left border; stroke 2: none.
    segments = [(3.3, 4.2, 11.7, 9.1), (11.7, 9.1, 6.2, 14.4), (38.6, 1.4, 38.6, 1.4), (0.0, 29.0, 0.0, 22.5)]
    radius, stroke = [2.3, 2.3, 1.9, 1.45], [0, 0, 1, 1]
    expected, margin = _numpy_strokes(segments, radius, stroke, 3, 30, 40)
    assert margin > 1e-3  # no pixel centre so near a brush edge that float32 rounding could flip it
    got = _paint_segments(torch.tensor(segments, dtype=torch.float64), torch.tensor(radius), torch.tensor(stroke),
                          3, 30, 40)
    assert got.dtype == torch.bool and got.shape == (3, 30, 40)
    assert np.array_equal(got.numpy(), expected)
    # By hand: the dot reaches the 3x3 corner centres (farthest 1.56 px), not the next ones (2.1 px); the border
    # segment reaches column 0 (0.5 px) from row 21 (1.12 px from its end) down, not column 1 (1.5 px).
    dot_and_border = torch.zeros(30, 40, dtype=torch.bool)
    dot_and_border[:3, 37:] = True
    dot_and_border[21:, 0] = True
    assert torch.equal(got[1], dot_and_border)
    assert int(got[0].sum()) == 94 and not got[2].any()


@pytest.mark.parametrize("fill", [True, False])
def test_freeform_falls_back_to_blocks_when_redraws_fail(monkeypatch: pytest.MonkeyPatch, fill: bool) -> None:
    def broken_render(self, segments, active, radius, height, width, device):
        return torch.full((active.shape[0], 1, height, width), fill, dtype=torch.bool, device=device)

    monkeypatch.setattr(FreeFormMask, "_render", broken_render)
    freeform = FreeFormMask(max_coverage=0.2)
    masks = freeform(8, 32, 32, torch.Generator().manual_seed(0))
    coverage = mask_coverage(masks)
    assert bool((coverage > 0).all()) and bool((coverage <= 0.2).all())
    assert freeform.fallbacks == 8 and bool((_bbox_fill(masks) == 1).all())


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 4),
    height=st.integers(16, 96),
    width=st.integers(16, 96),
    cap=st.floats(0.02, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_freeform_cap_property(batch: int, height: int, width: int, cap: float, seed: int) -> None:
    masks = FreeFormMask(max_coverage=cap)(batch, height, width, torch.Generator().manual_seed(seed))
    counts = masks.flatten(1).sum(1)
    assert bool((counts > 0).all()) and bool((counts <= cap * height * width).all())


class _Fill(MaskGenerator):
    """Marks the first `pixels` pixels of every image, and records the batch size of each call."""

    def __init__(self, pixels: int) -> None:
        self.pixels, self.calls = pixels, []

    def generate(self, batch_size, height, width, generator, device):
        self.calls.append(batch_size)
        masks = torch.zeros(batch_size, 1, height * width, dtype=torch.bool, device=device)
        masks[..., : self.pixels] = True
        return masks.view(batch_size, 1, height, width)


def test_mixed_mask_calls_each_kind_once_and_scatters_back() -> None:
    kinds = [_Fill(1), _Fill(2), _Fill(3)]
    masks = MixedMask(kinds)(40, 8, 8, torch.Generator().manual_seed(0))
    counts = masks.flatten(1).sum(1)
    assert all(len(kind.calls) == 1 for kind in kinds)
    assert [kind.calls[0] for kind in kinds] == [int((counts == i + 1).sum()) for i in range(3)]
    assert sum(kind.calls[0] for kind in kinds) == 40
    again = MixedMask([_Fill(1), _Fill(2), _Fill(3)])(40, 8, 8, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_mixed_mask_draws_every_kind() -> None:
    mixed = MixedMask({"central": CentralMask(), "block": BlockMask(max_blocks=1), "freeform": FreeFormMask()})
    masks = mixed(96, 64, 64, torch.Generator().manual_seed(0))
    central = (masks == CentralMask()(1, 64, 64, torch.Generator())).flatten(1).all(1)
    block = (_bbox_fill(masks) == 1) & ~central
    freeform = ~central & ~block
    counts = [int(kind.sum()) for kind in (central, block, freeform)]
    assert min(counts) >= 16, counts  # 32 of each expected
    assert bool((mask_coverage(masks[freeform]) <= 0.25).all())


def test_mixed_mask_rejects_bad_kinds() -> None:
    with pytest.raises(ValueError, match="at least one"):
        MixedMask({})
    with pytest.raises(ValueError, match="'1'.*str"):
        MixedMask([CentralMask(), "block"])


def test_build_freeform_and_mixed(png_bank: Path) -> None:
    freeform = build_mask_generator("freeform", strokes=2, vertices=[3, 5], brush_width=[0.1, 0.2], max_coverage=0.3)
    assert isinstance(freeform, FreeFormMask)
    assert (freeform.max_strokes, freeform.min_vertices, freeform.max_vertices) == (2, 3, 5)
    assert (freeform.min_width, freeform.max_width, freeform.max_coverage) == (0.1, 0.2, 0.3)
    mixed = build_mask_generator("mixed", mix=["block", "freeform", "region"], max_blocks=2, strokes=3,
                                 region_bank=str(png_bank))
    assert isinstance(mixed, MixedMask) and list(mixed.kinds) == ["block", "freeform", "region"]
    assert mixed.kinds["block"].max_blocks == 2 and mixed.kinds["freeform"].max_strokes == 3
    assert mixed.kinds["region"].bank.shape[0] == 2 and mixed.fallbacks == 0
    default = build_mask_generator("mixed")
    assert [type(kind) for kind in default.kinds.values()] == [CentralMask, RegionMask, FreeFormMask]


@pytest.mark.parametrize("kind", ["freeform", "mixed"])
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"strokes": 0}, "strokes"),
        ({"vertices": (0, 4)}, r"vertices.*\(0, 4\)"),
        ({"vertices": (5, 4)}, r"vertices.*\(5, 4\)"),
        ({"vertices": (4,)}, "vertices must be a"),
        ({"brush_width": (0.0, 0.1)}, "brush_width"),
        ({"brush_width": (0.2, 0.1)}, "brush_width"),
        ({"brush_width": (0.1, 1.5)}, "brush_width"),
        ({"brush_width": 0.1}, "brush_width must be a"),
        ({"mix": []}, "mix"),
        ({"mix": "central"}, "mix"),
        ({"mix": ["central", "mixed"]}, "'mixed'"),
        ({"mix": ["central", "swirl"]}, "'swirl'"),
        ({"mix": ["region", "region"]}, "'region' more than once"),
    ],
)
def test_build_rejects_bad_stroke_and_mix_settings(kind: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_mask_generator(kind, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_strokes": 0}, "max_strokes"),
        ({"min_vertices": 0}, "vertices"),
        ({"min_vertices": 6, "max_vertices": 5}, "vertices"),
        ({"min_width": 0.0}, "brush_width"),
        ({"max_width": 1.2}, "brush_width"),
        ({"max_coverage": 0.0}, "max_coverage"),
        ({"max_coverage": 1.5}, "max_coverage"),
        ({"angle_range": -0.1}, "angle_range"),
    ],
)
def test_freeform_rejects_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FreeFormMask(**kwargs)
