"""Dataset fetchers (transfer.fetch) against a local HTTP server serving small archives the tests make."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer import fetch as fetch_mod
from transfer.data_check import main as data_main
from transfer.fetch import FetchError, Remote, fetch


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves) of an HTTP server on 127.0.0.1; counts the requests per file."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            requests.append(self.path)
            wanted = self.headers.get("Range")
            if wanted and (folder / "ranges").exists():  # answer ranges only when the test asks for it
                data = (folder / self.path.lstrip("/")).read_bytes()[int(wanted[len("bytes="):].rstrip("-")):]
                requests.append(f"206 {wanted}")  # before the body: the client may finish before this thread resumes
                self.send_response(206)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> str:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cifar_archive(path: Path, per_batch: int = 10) -> tuple[str, dict[str, np.ndarray]]:
    """A CIFAR-10-python-format archive with `per_batch` images per batch (pickle protocol 2, bytes keys, as the
    real one); its MD5 and the pixels of each split."""
    rng = np.random.default_rng(0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    members = {"cifar-10-batches-py/batches.meta": pickle.dumps({b"label_names": names}, protocol=2)}
    pixels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for i, file in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(per_batch)]
        members[f"cifar-10-batches-py/{file}"] = pickle.dumps({b"data": data, b"labels": labels}, protocol=2)
        pixels["test" if file == "test_batch" else "train"].append(data)
    return _tar(path, members), {k: np.concatenate(v) for k, v in pixels.items()}


def test_cifar10_is_downloaded_verified_and_laid_out(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, served, requests = server
    md5, pixels = _cifar_archive(served / "cifar-10-python.tar.gz")
    spec = fetch_mod.DATASETS["cifar10"]
    monkeypatch.setitem(fetch_mod.DATASETS, "cifar10", fetch_mod.Dataset(
        (Remote(spec.files[0].url, md5),), spec.prepare, spec.layout))
    root = fetch("cifar10", tmp_path / "data", base_url=base)
    assert root == tmp_path / "data" / "cifar10"
    train = sorted((root / "train").rglob("*.png"))
    assert len(train) == 50 and len(list((root / "test").rglob("*.png"))) == 10
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    # the first training image: the first row of data_batch_1 as 32x32 RGB, filed under its label (0: airplane)
    first = np.asarray(Image.open(root / "train" / "airplane" / "00000.png"))
    assert np.array_equal(first, pixels["train"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    # a second call reuses it: no request
    n = len(requests)
    assert fetch("cifar10", tmp_path / "data", base_url=base) == root and len(requests) == n
    # what the suites read: an ImageFolder per split
    from pretext.data.labels import open_image_folder

    assert len(open_image_folder(root / "train").paths) == 50


def test_a_folder_of_the_user_in_the_way_is_refused_not_deleted(server, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    base, served, _ = server
    md5, _ = _cifar_archive(served / "cifar-10-python.tar.gz")
    spec = fetch_mod.DATASETS["cifar10"]
    monkeypatch.setitem(fetch_mod.DATASETS, "cifar10", fetch_mod.Dataset(
        (Remote(spec.files[0].url, md5),), spec.prepare, spec.layout))
    mine = tmp_path / "data" / "cifar10"
    mine.mkdir(parents=True)
    (mine / "results.txt").write_text("keep me")
    with pytest.raises(FetchError, match="cifar10: exists and is not an empty folder"):
        fetch("cifar10", tmp_path / "data", base_url=base)
    assert sorted(p.name for p in mine.iterdir()) == ["results.txt"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads", "cifar10"]  # no temporary left


def test_a_wrong_checksum_is_refused_and_the_file_removed(server, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    base, served, _ = server
    _cifar_archive(served / "cifar-10-python.tar.gz")  # not the published archive: its MD5 differs
    assert data_main(["fetch", "cifar10", str(tmp_path / "data"), "--base-url", base]) == 1
    assert "the downloaded file's MD5 is" in caplog.text
    assert not list((tmp_path / "data" / ".downloads").glob("*"))  # nothing half-verified left behind
    assert not (tmp_path / "data" / "cifar10").exists()
    with pytest.raises(FetchError, match="expected c58f30108f718f92721af3b95e74349a"):
        fetch("cifar10", tmp_path / "data", base_url=base)


def test_an_unreachable_server_names_the_url(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"http://127\.0\.0\.1:9/cifar-10-python\.tar\.gz: download failed"):
        fetch("cifar10", tmp_path, base_url="http://127.0.0.1:9")


def test_a_partial_download_is_completed(server, tmp_path: Path) -> None:
    base, served, _ = server
    md5, _ = _cifar_archive(served / "cifar-10-python.tar.gz")
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    dest.parent.mkdir()
    dest.with_name(dest.name + ".part").write_bytes((served / "cifar-10-python.tar.gz").read_bytes()[:100])
    # this server ignores ranges (answers 200 with the whole file): the download starts again, and verifies
    assert fetch_mod.download(f"{base}/cifar-10-python.tar.gz", dest, md5) == dest
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5 and not dest.with_name(dest.name + ".part").exists()


def test_a_partial_download_resumes_where_the_server_allows(server, tmp_path: Path) -> None:
    base, served, requests = server
    md5, _ = _cifar_archive(served / "cifar-10-python.tar.gz")
    (served / "ranges").touch()
    whole = (served / "cifar-10-python.tar.gz").read_bytes()
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    dest.parent.mkdir()
    dest.with_name(dest.name + ".part").write_bytes(whole[:100])
    assert fetch_mod.download(f"{base}/cifar-10-python.tar.gz", dest, md5) == dest
    assert "206 bytes=100-" in requests and dest.read_bytes() == whole
    # a complete .part left by a run stopped before the rename: verified and used without a request
    dest.rename(dest.with_name(dest.name + ".part"))
    n = len(requests)
    assert fetch_mod.download(f"{base}/cifar-10-python.tar.gz", dest, md5) == dest and len(requests) == n


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(FetchError, match=r"refused global (__builtin__|builtins)\.print"):
        fetch_mod._unpickle(path)


def test_voc2007_archives_become_one_voc_root(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, served, _ = server
    jpeg = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(jpeg, format="JPEG")
    xml = (b"<annotation><size><width>20</width><height>10</height></size><object><name>cat</name>"
           b"<difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
           b"</object></annotation>")
    prefix = "VOCdevkit/VOC2007/"
    md5s = []
    for archive, split, image_id in (("VOCtrainval_06-Nov-2007.tar", "trainval", "000001"),
                                     ("VOCtest_06-Nov-2007.tar", "test", "000002")):
        md5s.append(_tar(served / archive, {
            f"{prefix}ImageSets/Main/{split}.txt": f"{image_id}\n".encode(),
            f"{prefix}JPEGImages/{image_id}.jpg": jpeg.getvalue(),
            f"{prefix}Annotations/{image_id}.xml": xml}, mode="w"))
    spec = fetch_mod.DATASETS["voc2007"]
    monkeypatch.setitem(fetch_mod.DATASETS, "voc2007", fetch_mod.Dataset(
        tuple(Remote(f.url, m) for f, m in zip(spec.files, md5s)), spec.prepare, spec.layout))
    root = fetch("voc2007", tmp_path / "data", base_url=base)
    assert root == tmp_path / "data" / "VOCdevkit" / "VOC2007"
    from transfer.detection_eval import read_detection_annotations

    assert list(read_detection_annotations(root, "trainval", ["cat"])) == ["000001"]
    assert list(read_detection_annotations(root, "test", ["cat"])) == ["000002"]


def test_an_archive_reaching_outside_its_folder_is_refused(server, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    base, served, _ = server
    md5 = _tar(served / "VOCtrainval_06-Nov-2007.tar", {"../../escape.txt": b"x"}, mode="w")
    spec = fetch_mod.DATASETS["voc2007"]
    monkeypatch.setitem(fetch_mod.DATASETS, "voc2007", fetch_mod.Dataset(
        (Remote(spec.files[0].url, md5),), spec.prepare, spec.layout))
    with pytest.raises(FetchError, match=r"VOCtrainval_06-Nov-2007\.tar: .*outside"):
        fetch("voc2007", tmp_path / "data", base_url=base)
    assert not (tmp_path / "escape.txt").exists()


def _serve(monkeypatch: pytest.MonkeyPatch, name: str, md5s: list[str]) -> None:
    """Point dataset `name` at the test's archives: same file names, the test's MD5s."""
    spec = fetch_mod.DATASETS[name]
    monkeypatch.setitem(fetch_mod.DATASETS, name, fetch_mod.Dataset(
        tuple(Remote(f.url, m) for f, m in zip(spec.files, md5s)), spec.prepare, spec.layout))


def _png(size: tuple[int, int], colour: str = "red", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


def test_voc2012_is_a_voc_root_with_its_segmentation_splits(server, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base, served, _ = server
    prefix = "VOCdevkit/VOC2012/"
    from transfer.segmentation_data import write_label_png

    seg = np.pad(np.full((4, 6), 8, np.uint8), ((3, 3), (2, 2)))  # class 8: cat, in the VOC palette
    write_label_png(tmp_path / "label.png", seg)
    label = io.BytesIO((tmp_path / "label.png").read_bytes())
    members = {f"{prefix}JPEGImages/{i}.jpg": _jpeg() for i in ("2007_000032", "2007_000033")}
    members |= {f"{prefix}SegmentationClass/{i}.png": label.getvalue() for i in ("2007_000032", "2007_000033")}
    members |= {f"{prefix}ImageSets/{kind}/{split}.txt": f"{image_id}\n".encode() for kind in ("Main", "Segmentation")
                for split, image_id in (("train", "2007_000032"), ("val", "2007_000033"))}
    _serve(monkeypatch, "voc2012", [_tar(served / "VOCtrainval_11-May-2012.tar", members, mode="w")])
    root = fetch("voc2012", tmp_path / "data", base_url=base)
    assert root == tmp_path / "data" / "VOCdevkit" / "VOC2012"
    from transfer.segmentation_data import open_segmentation_set

    val = open_segmentation_set(root, "val")
    assert val.kind == "voc" and val.ids == ("2007_000033",) and val.classes[8] == "cat"
    assert (val.pair(0)[1] == seg).all()


def test_voc2012_without_segmentation_lists_is_refused(server, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base, served, _ = server
    members = {"VOCdevkit/VOC2012/ImageSets/Main/train.txt": b"a\n", "VOCdevkit/VOC2012/ImageSets/Main/val.txt": b"b\n"}
    _serve(monkeypatch, "voc2012", [_tar(served / "VOCtrainval_11-May-2012.tar", members, mode="w")])
    with pytest.raises(FetchError, match=r"VOC2012: the archive held no ImageSets/Segmentation/train\.txt, "
                                         r"ImageSets/Segmentation/val\.txt"):
        fetch("voc2012", tmp_path / "data", base_url=base)
    assert not (tmp_path / "data" / "VOCdevkit" / "VOC2012" / fetch_mod.MARKER).exists()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (10, 10), "red").save(out, format="JPEG")
    return out.getvalue()


def test_sbd_becomes_a_segmentation_root_with_train_noval(server, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy.io import savemat

    base, served, _ = server
    seg = np.zeros((10, 10), np.uint8)
    seg[2:6, 3:9] = 15  # person
    mat = io.BytesIO()
    savemat(mat, {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1), "CategoriesPresent": np.array([15])}})
    prefix = "benchmark_RELEASE/dataset/"
    members = {f"{prefix}train.txt": b"2008_000002\n", f"{prefix}val.txt": b"2008_000003\n"}
    for image_id in ("2008_000002", "2008_000003"):
        members |= {f"{prefix}img/{image_id}.jpg": _jpeg(), f"{prefix}cls/{image_id}.mat": mat.getvalue()}
    md5 = _tar(served / "benchmark.tgz", members)
    (served / "train_noval.txt").write_bytes(b"2008_000002\n2008_000003\n")
    _serve(monkeypatch, "sbd", [md5, hashlib.md5(b"2008_000002\n2008_000003\n").hexdigest()])
    root = fetch("sbd", tmp_path / "data", base_url=base)
    assert root == tmp_path / "data" / "sbd"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads", "sbd"]  # no temporary left
    from transfer.segmentation_data import open_segmentation_set

    data = open_segmentation_set(root, "train_noval")
    assert data.kind == "sbd" and data.ids == ("2008_000002", "2008_000003") and data.classes[15] == "person"
    assert (data.pair(1)[1] == seg).all()


def test_sbd_without_its_dataset_folder_is_refused(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, served, _ = server
    md5 = _tar(served / "benchmark.tgz", {"benchmark_RELEASE/dataset/train.txt": b"x\n"})
    (served / "train_noval.txt").write_bytes(b"x\n")
    _serve(monkeypatch, "sbd", [md5, hashlib.md5(b"x\n").hexdigest()])
    with pytest.raises(FetchError, match=r"benchmark\.tgz: no val\.txt, img, cls under benchmark_RELEASE/dataset"):
        fetch("sbd", tmp_path / "data", base_url=base)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads"]


def _stl_archive(path: Path, n: dict[str, int], labels: dict[str, list[int]] | None = None
                 ) -> tuple[str, dict[str, np.ndarray]]:
    """An STL-10-binary-format archive (images channel by channel, column-major; labels 1..10 as bytes); its MD5
    and each split's images as (N, 96, 96, 3)."""
    rng = np.random.default_rng(0)
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    members = {"stl10_binary/class_names.txt": ("\n".join(names) + "\n").encode()}
    images = {}
    for split, count in n.items():
        images[split] = rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)
        members[f"stl10_binary/{split}_X.bin"] = images[split].transpose(0, 3, 2, 1).tobytes()
        if split != "unlabeled":
            ys = (labels or {}).get(split, [1 + i % 10 for i in range(count)])
            members[f"stl10_binary/{split}_y.bin"] = bytes(ys)
    return _tar(path, members), images


def test_stl10_becomes_imagefolders_and_an_unlabelled_folder(server, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    base, served, _ = server
    md5, images = _stl_archive(served / "stl10_binary.tar.gz", {"train": 10, "test": 2, "unlabeled": 4})
    _serve(monkeypatch, "stl10", [md5])
    root = fetch("stl10", tmp_path / "data", base_url=base)
    assert root == tmp_path / "data" / "stl10"
    # the first training image, label 1 = airplane, read back row by row as the array it was made from
    first = np.asarray(Image.open(root / "train" / "airplane" / "00000.png"))
    assert np.array_equal(first, images["train"][0])
    # the format by hand: byte 1 of an image is channel 0 (red) of row 1, column 0 (stored column-major)
    with tarfile.open(served / "stl10_binary.tar.gz") as tar:
        head = tar.extractfile("stl10_binary/train_X.bin").read(2)
    assert first[1, 0, 0] == head[1] and first[0, 0, 0] == head[0]
    assert np.array_equal(np.asarray(Image.open(root / "test" / "bird" / "00001.png")), images["test"][1])
    assert len(list((root / "unlabeled").glob("*.png"))) == 4
    assert np.array_equal(np.asarray(Image.open(root / "unlabeled" / "000003.png")), images["unlabeled"][3])
    from pretext.data.labels import open_image_folder
    from pretext.data.sources import list_images

    train = open_image_folder(root / "train")
    assert len(train.paths) == 10 and len(train.classes) == 10
    assert len(list_images(root / "unlabeled")) == 4  # what `cebench pretrain ... data.root=DIR/stl10/unlabeled` reads


@pytest.mark.parametrize(("labels", "message"), [
    ({"train": [1, 11]}, r"train_y\.bin: 1 label\(s\) outside 1\.\.10 \(first: image 1, label 11\)"),
    ({"train": [1]}, r"train_y\.bin: 1 labels for 2 images"),
])
def test_stl10_with_bad_labels_is_refused(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          labels: dict, message: str) -> None:
    base, served, _ = server
    md5, _ = _stl_archive(served / "stl10_binary.tar.gz", {"train": 2, "test": 1, "unlabeled": 1}, labels)
    _serve(monkeypatch, "stl10", [md5])
    with pytest.raises(FetchError, match=message):
        fetch("stl10", tmp_path / "data", base_url=base)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads"]  # no half-written dataset


def test_every_dataset_is_offered_on_the_command_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        data_main(["fetch", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("cifar10", "stl10", "voc2007", "voc2012", "sbd"))
