"""Tests for pretext.masks: shapes, determinism, coverage guarantees, the region bank reader."""

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
    RegionMask,
    blob_bank,
    build_mask_generator,
    load_region_bank,
    mask_coverage,
    prediction_region,
)
from pretext.masks import _affine_lattice, _smooth_grid

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


@pytest.mark.parametrize("kind", ["block", "region"])
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
