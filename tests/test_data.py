"""Tests for pretext.data: image sources, robust RGB decoding, the keyed dataset and the resumable sampler."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretext.data.dataset import (
    ResumableSampler,
    UnlabelledImages,
    build_loader,
    collate,
    estimate_mean,
)
from pretext.data.images import BadImageError, load_rgb, to_rgb
from pretext.data.sources import DataSourceError, detect_source, list_images


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# --- sources -------------------------------------------------------------------------------------

def test_folder_lists_images_recursively_and_sorted(tmp_path: Path) -> None:
    wanted = [_touch(tmp_path / n) for n in ("a.jpg", "b.JPEG", "sub/c.png", "sub/deeper/d.bmp", "e.webp")]
    for n in ("notes.txt", ".hidden.jpg", ".cache/f.jpg", "sub/g.jpg.partial", "sub/README"):
        _touch(tmp_path / n)
    assert detect_source(tmp_path) == "folder"
    assert list_images(tmp_path) == sorted(wanted)


def test_imagefolder_tree_is_read_as_a_folder(tmp_path: Path) -> None:
    wanted = [_touch(tmp_path / "train" / cls / f"{i}.jpg") for cls in ("cat", "dog") for i in range(2)]
    assert list_images(tmp_path / "train", source="imagefolder") == sorted(wanted)
    assert list_images(tmp_path / "train") == sorted(wanted)


def test_tiff_and_netpbm_images_are_read_as_torchvision_reads_them(tmp_path: Path) -> None:
    from pretext.data.labels import open_image_folder

    for cls, name, mode in (("a", "x.tif", "RGB"), ("a", "y.tiff", "RGB"), ("b", "z.ppm", "RGB"), ("b", "w.pgm", "L")):
        (tmp_path / cls).mkdir(exist_ok=True)
        Image.new(mode, (12, 10), 200).save(tmp_path / cls / name)
    data = open_image_folder(tmp_path)
    assert sorted(p.name for p in data.paths) == ["w.pgm", "x.tif", "y.tiff", "z.ppm"]
    assert all(load_rgb(p).size == (12, 10) and load_rgb(p).mode == "RGB" for p in data.paths)


def test_list_file_relative_absolute_and_comments(tmp_path: Path) -> None:
    rel = _touch(tmp_path / "imgs" / "one.png")
    absolute = _touch(tmp_path / "elsewhere" / "two.jpg")
    lst = tmp_path / "imgs.txt"
    lst.write_text(f"# my list\nimgs/one.png\n\n{absolute}   # trailing comment\n   \n")
    assert detect_source(lst) == "list"
    assert list_images(lst) == [rel, absolute]


def test_list_file_missing_entry_names_file_and_line(tmp_path: Path) -> None:
    _touch(tmp_path / "ok.png")
    lst = tmp_path / "imgs.txt"
    lst.write_text("ok.png\n# comment\nmissing.png\n")
    with pytest.raises(DataSourceError, match=rf"{lst}:3: image not found"):
        list_images(lst)


def _voc(root: Path, ids: list[str], split: str = "train", files: list[str] | None = None) -> Path:
    for i in ids if files is None else files:
        _touch(root / "JPEGImages" / f"{i}.jpg")
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_voc_root(tmp_path: Path) -> None:
    root = _voc(tmp_path / "VOC", ["2008_000002", "2008_000001"])
    _touch(root / "JPEGImages" / "2008_000003.jpg")  # not in the split: left out
    (root / "ImageSets" / "Main" / "dog_train.txt").write_text("2008_000002  1\n2008_000001 -1\n")
    assert detect_source(root) == "voc"
    assert list_images(root, split="train") == [root / "JPEGImages" / f"{i}.jpg" for i in ("2008_000002", "2008_000001")]
    # class lists carry a second column; only the id counts
    assert len(list_images(root, split="dog_train")) == 2


@pytest.mark.parametrize("ids,files,fragment", [
    (["a", "b"], ["a"], "image 'b' listed but"),
    (["a", "b", "a"], ["a", "b"], "train.txt:3: duplicate image id 'a'"),
    (["a", "../b"], ["a"], "invalid image id '../b'"),
])
def test_voc_errors(tmp_path: Path, ids: list[str], files: list[str], fragment: str) -> None:
    root = _voc(tmp_path / "VOC", ids, files=files)
    with pytest.raises(DataSourceError, match=fragment.replace(".", r"\.")):
        list_images(root, split="train")


def test_voc_missing_split_and_bad_split_name(tmp_path: Path) -> None:
    root = _voc(tmp_path / "VOC", ["a"])
    with pytest.raises(DataSourceError, match="split list not found"):
        list_images(root, split="val")
    with pytest.raises(DataSourceError, match="invalid image id"):
        list_images(root, split="../train")


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="data root not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    _touch(tmp_path / "empty" / "sub" / "x.txt")
    with pytest.raises(DataSourceError, match="no images found"):
        list_images(tmp_path / "empty")
    with pytest.raises(DataSourceError, match="unknown data source"):
        list_images(tmp_path, source="s3")


def test_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    a = _touch(tmp_path / "sub" / "a.jpg")
    os.symlink(tmp_path, tmp_path / "sub" / "loop", target_is_directory=True)
    assert list_images(tmp_path) == [a]


# --- decoding ------------------------------------------------------------------------------------

def _rgb_of(path: Path) -> np.ndarray:
    img = load_rgb(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def test_grayscale_and_rgba(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 77).save(tmp_path / "l.png")
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    gray = _rgb_of(tmp_path / "l.png")
    assert gray.shape == (4, 5, 3) and (gray == 77).all()
    assert (_rgb_of(tmp_path / "rgba.png") == (10, 20, 30)).all()


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    palette = [0, 0, 0, 10, 200, 30] + [0] * 762
    p = Image.new("P", (6, 6), 1)
    p.putpalette(palette)
    p.putpixel((0, 0), 0)
    p.save(tmp_path / "p.png")
    p.save(tmp_path / "pt.png", transparency=0)
    assert Image.open(tmp_path / "pt.png").info.get("transparency") == 0
    for name in ("p.png", "pt.png"):
        rgb = _rgb_of(tmp_path / name)
        assert tuple(rgb[3, 3]) == (10, 200, 30) and tuple(rgb[0, 0]) == (0, 0, 0), name


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # no cyan, full magenta + yellow = red
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    rgb = _rgb_of(tmp_path / "c.jpg").astype(int)
    assert (abs(rgb - (255, 0, 0)) <= 3).all()


def test_16_bit_png(tmp_path: Path) -> None:
    a = np.zeros((4, 4), np.uint16)
    a[:2] = 65535
    a[2:] = 32768
    Image.fromarray(a).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    rgb = _rgb_of(tmp_path / "i16.png")
    assert (rgb[:2] == 255).all() and (rgb[2:] == 128).all()


def test_to_rgb_float_and_int_modes() -> None:
    f = Image.fromarray(np.array([[0.0, 255.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(f))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    i = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(i))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    rgb = Image.new("RGB", (1, 1))
    assert to_rgb(rgb) is rgb


def test_truncated_empty_and_fake_files(tmp_path: Path) -> None:
    Image.fromarray(_noise(64, 64)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture\n")
    assert load_rgb(tmp_path / "full.jpg").size == (64, 64)
    for name in ("cut.jpg", "empty.jpg", "text.jpg", "missing.jpg"):
        path = tmp_path / name
        with pytest.raises(BadImageError) as info:
            load_rgb(path)
        assert str(path) in str(info.value), name


def test_truncated_jpeg_fails_with_reduced_scale_decoding(tmp_path: Path) -> None:
    Image.fromarray(_noise(128, 128)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="cut.jpg"):
        load_rgb(tmp_path / "cut.jpg", min_side=32)


def test_image_over_max_pixels(tmp_path: Path) -> None:
    path = _png(tmp_path / "big.png", _noise(20, 30))
    with pytest.raises(BadImageError, match=r"600 pixels exceeds the limit of 599"):
        load_rgb(path, max_pixels=599)
    assert load_rgb(path, max_pixels=600).size == (30, 20)


def test_min_side_keeps_jpeg_at_least_that_large(tmp_path: Path) -> None:
    Image.fromarray(_noise(200, 300)).save(tmp_path / "big.jpg")
    img = load_rgb(tmp_path / "big.jpg", min_side=40)
    assert min(img.size) >= 40 and img.size[0] * 2 == img.size[1] * 3


# --- dataset -------------------------------------------------------------------------------------

@pytest.fixture()
def noise_paths(tmp_path: Path) -> list[Path]:
    return [_png(tmp_path / f"img{i}.png", _noise(20 + 4 * i, 24, seed=i)) for i in range(4)]


def test_items_are_uint8_fine_squares(noise_paths: list[Path]) -> None:
    ds = UnlabelledImages(noise_paths, load_size=16, fine_size=12)
    assert len(ds) == 4
    for key in (0, 3, (1, (0, 0, 5))):
        img, skipped = ds[key]
        assert img.dtype == torch.uint8 and img.shape == (3, 12, 12) and skipped == ()


def test_integer_index_is_the_centre_crop(tmp_path: Path) -> None:
    arr = _noise(24, 16)  # shorter side already 16 = load_size: no resize
    ds = UnlabelledImages([_png(tmp_path / "x.png", arr)], load_size=16, fine_size=8)
    img, _ = ds[0]
    # x0 = (16 - 8) // 2 = 4, y0 = (24 - 8) // 2 = 8
    expected = torch.from_numpy(arr[8:16, 4:12]).permute(2, 0, 1)
    assert torch.equal(img, expected)
    assert torch.equal(ds[0][0], img)


def test_same_key_same_tensor_other_keys_differ(noise_paths: list[Path]) -> None:
    ds = UnlabelledImages(noise_paths, load_size=20, fine_size=12)
    key = (2, (7, 0, 3))
    assert torch.equal(ds[key][0], ds[key][0])
    crops = {ds[(2, (7, 0, p))][0].numpy().tobytes() for p in range(8)}
    assert len(crops) > 1


def test_flip_is_keyed_and_only_a_mirror(tmp_path: Path) -> None:
    arr = _noise(12, 12)
    path = _png(tmp_path / "sq.png", arr)
    plain = torch.from_numpy(arr).permute(2, 0, 1)
    mirrored = plain.flip(-1)
    ds = UnlabelledImages([path], load_size=12, fine_size=12, flip=True)  # no room to crop: only flips vary
    outs = [ds[(0, (1, 0, p))][0] for p in range(16)]
    assert all(torch.equal(o, plain) or torch.equal(o, mirrored) for o in outs)
    assert any(torch.equal(o, plain) for o in outs) and any(torch.equal(o, mirrored) for o in outs)
    no_flip = UnlabelledImages([path], load_size=12, fine_size=12, flip=False)
    assert all(torch.equal(no_flip[(0, (1, 0, p))][0], plain) for p in range(16))


def test_resize_shorter_side_then_crop(tmp_path: Path) -> None:
    path = _png(tmp_path / "wide.png", np.full((10, 40, 3), 200, np.uint8))
    img, _ = UnlabelledImages([path], load_size=20, fine_size=20)[(0, (0, 0, 0))]
    assert img.shape == (3, 20, 20) and (img == 200).all()


def test_bad_image_error_mode_names_the_file(tmp_path: Path, noise_paths: list[Path]) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    ds = UnlabelledImages([bad, *noise_paths], load_size=16, fine_size=12)
    with pytest.raises(BadImageError, match="broken.png.*on_bad_image=skip"):
        ds[(0, (0, 0, 0))]


def test_bad_image_skip_mode_reports_the_skip(tmp_path: Path, noise_paths: list[Path]) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"")
    ds = UnlabelledImages([bad, *noise_paths], load_size=16, fine_size=12, on_bad_image="skip")
    img, skipped = ds[0]
    assert skipped == (str(bad),)
    assert torch.equal(img, UnlabelledImages(noise_paths, 16, 12)[0][0])  # the next image stands in


def test_all_bad_images_give_up(tmp_path: Path) -> None:
    paths = [tmp_path / f"b{i}.jpg" for i in range(3)]
    for p in paths:
        p.write_bytes(b"")
    with pytest.raises(BadImageError, match="consecutive unreadable images"):
        UnlabelledImages(paths, 16, 12, on_bad_image="skip")[0]


def test_dataset_argument_checks(noise_paths: list[Path]) -> None:
    with pytest.raises(ValueError, match="on_bad_image"):
        UnlabelledImages(noise_paths, 16, 12, on_bad_image="ignore")
    with pytest.raises(ValueError, match="load_size"):
        UnlabelledImages(noise_paths, 8, 12)


def test_collate() -> None:
    a, b = torch.zeros(3, 2, 2, dtype=torch.uint8), torch.ones(3, 2, 2, dtype=torch.uint8)
    batch = collate([(a, ("x.jpg",)), (b, ()), (a, ("y.jpg", "z.jpg"))])
    assert batch["images"].shape == (3, 3, 2, 2) and torch.equal(batch["images"][1], b)
    assert batch["skipped"] == ["x.jpg", "y.jpg", "z.jpg"]


def test_estimate_mean_of_a_constant_colour(tmp_path: Path) -> None:
    paths = [_png(tmp_path / f"c{i}.png", np.full((10 + i, 14, 3), (255, 0, 128), np.uint8)) for i in range(3)]
    mean = estimate_mean(UnlabelledImages(paths, 10, 8), max_images=5)
    assert mean == pytest.approx([1.0, 0.0, 128 / 255], abs=1e-6)


def test_estimate_mean_averages_per_image(tmp_path: Path) -> None:
    paths = [_png(tmp_path / "black.png", np.zeros((8, 8, 3), np.uint8)),
             _png(tmp_path / "white.png", np.full((8, 8, 3), 255, np.uint8))]
    assert estimate_mean(UnlabelledImages(paths, 8, 8)) == pytest.approx([0.5, 0.5, 0.5])
    assert estimate_mean(UnlabelledImages(paths, 8, 8), max_images=1) == pytest.approx([0.0, 0.0, 0.0])


# --- sampler -------------------------------------------------------------------------------------

def _take(sampler: ResumableSampler, k: int) -> list:
    it = iter(sampler)
    return [next(it) for _ in range(k)]


@pytest.mark.parametrize("start", [0, 3, 7, 10, 23])
def test_sampler_resumes_exactly(start: int) -> None:
    full = _take(ResumableSampler(10, seed=5), start + 15)
    assert _take(ResumableSampler(10, seed=5, start=start), 15) == full[start:]


@pytest.mark.parametrize("rank", [0, 1])
def test_sampler_resumes_exactly_per_rank(rank: int) -> None:
    full = _take(ResumableSampler(9, seed=1, rank=rank, world_size=2), 20)
    assert _take(ResumableSampler(9, seed=1, rank=rank, world_size=2, start=7), 13) == full[7:]


def test_sampler_epochs_are_permutations() -> None:
    keys = _take(ResumableSampler(10, seed=2), 30)
    epochs = [keys[i:i + 10] for i in (0, 10, 20)]
    for e, chunk in enumerate(epochs):
        assert sorted(i for i, _ in chunk) == list(range(10))
        assert [aug for _, aug in chunk] == [(2, e, p) for p in range(10)]
    orders = [[i for i, _ in chunk] for chunk in epochs]
    assert orders[0] != orders[1] and orders[1] != orders[2]


def test_sampler_ranks_partition_an_epoch() -> None:
    r0 = _take(ResumableSampler(10, seed=4, rank=0, world_size=2), 5)
    r1 = _take(ResumableSampler(10, seed=4, rank=1, world_size=2), 5)
    i0, i1 = {i for i, _ in r0}, {i for i, _ in r1}
    assert i0.isdisjoint(i1) and i0 | i1 == set(range(10))
    positions = [aug[2] for _, aug in r0 + r1]
    assert sorted(positions) == list(range(10))  # every augmentation key of the epoch used once
    # the two ranks together walk the same permutation a single process would
    single = [i for i, _ in _take(ResumableSampler(10, seed=4), 10)]
    assert [i for pair in zip(r0, r1) for i, _ in pair] == single


def test_sampler_uneven_ranks_get_equal_shares() -> None:
    shares = [_take(ResumableSampler(5, seed=0, rank=r, world_size=2), 3) for r in (0, 1)]
    covered = {i for share in shares for i, _ in share}
    assert covered == set(range(5))


def test_sampler_is_deterministic_per_seed() -> None:
    assert _take(ResumableSampler(20, seed=3), 25) == _take(ResumableSampler(20, seed=3), 25)
    assert [i for i, _ in _take(ResumableSampler(20, seed=3), 20)] != [i for i, _ in _take(ResumableSampler(20, seed=4), 20)]
    with pytest.raises(ValueError):
        ResumableSampler(0, seed=0)


def test_loader_resumes_at_a_step(noise_paths: list[Path]) -> None:
    ds = UnlabelledImages(noise_paths, 16, 12)
    it = iter(build_loader(ds, batch_size=3, seed=0, workers=0))
    batches = [next(it)["images"] for _ in range(3)]
    resumed = next(iter(build_loader(ds, batch_size=3, seed=0, workers=0, start_step=2)))["images"]
    assert resumed.shape == (3, 3, 12, 12) and resumed.dtype == torch.uint8
    assert torch.equal(resumed, batches[2])
