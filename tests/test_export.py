"""Tests for pretext.export: exported encoders round-trip, and corrupt or mismatched exports fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pretext.export import FORMAT, NORMALIZATION, EncoderLoadError, export_encoder, load_encoder, sha256_file
from pretext.models.alexnet import AlexNetEncoder, AlexNetSpec
from pretext.models.dcgan import DCGANEncoder

SPEC = AlexNetSpec(widths=(8, 16, 16, 16, 16), small=True, input_size=32)
DCGAN_SPEC = {"input_size": 32, "widths": [8, 16, 16], "bottleneck": 24}


@pytest.fixture()
def alexnet_export(tmp_path: Path) -> tuple[AlexNetEncoder, Path]:
    torch.manual_seed(0)
    enc = AlexNetEncoder(SPEC).eval()
    export_encoder(enc, "alexnet", SPEC.to_dict(), tmp_path, {"method": "context_encoder", "step": 7})
    return enc, tmp_path


def _assert_same_encoder(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def _rewrite_meta(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_export_writes_exactly_two_files(alexnet_export) -> None:
    _, out = alexnet_export
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "encoder.safetensors"]


def test_metadata_content(alexnet_export) -> None:
    _, out = alexnet_export
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["format"] == FORMAT
    assert meta["arch"] == "alexnet"
    assert meta["spec"] == SPEC.to_dict()
    assert meta["normalization"] == NORMALIZATION
    assert meta["input_size"] == 32
    assert meta["weights"] == "encoder.safetensors"
    assert meta["sha256"] == sha256_file(out / "encoder.safetensors") and len(meta["sha256"]) == 64
    assert (meta["method"], meta["step"]) == ("context_encoder", 7)


@pytest.mark.parametrize("which", ["", "encoder.json", "encoder.safetensors"])
def test_load_from_dir_json_or_weights(alexnet_export, which: str) -> None:
    enc, out = alexnet_export
    loaded, meta = load_encoder(out / which if which else out)
    assert isinstance(loaded, AlexNetEncoder) and loaded.spec == SPEC
    assert meta["arch"] == "alexnet"
    _assert_same_encoder(enc, loaded, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_load_accepts_str_paths(alexnet_export) -> None:
    enc, out = alexnet_export
    loaded, _ = load_encoder(str(out))
    assert torch.equal(loaded.features[0].weight, enc.features[0].weight)


def test_tampered_weights_fail_the_sha256_check(alexnet_export) -> None:
    _, out = alexnet_export
    weights = out / "encoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last tensor's data
    weights.write_bytes(bytes(data))
    with pytest.raises(EncoderLoadError, match="sha256 does not match"):
        load_encoder(out)


def test_missing_metadata(tmp_path: Path) -> None:
    with pytest.raises(EncoderLoadError, match="encoder metadata not found"):
        load_encoder(tmp_path)
    with pytest.raises(EncoderLoadError, match="not found"):
        load_encoder(tmp_path / "encoder.safetensors")


def test_missing_weights(alexnet_export) -> None:
    _, out = alexnet_export
    (out / "encoder.safetensors").unlink()
    with pytest.raises(EncoderLoadError, match="weights file .* not found"):
        load_encoder(out)


def test_invalid_json_and_wrong_format(alexnet_export) -> None:
    _, out = alexnet_export
    meta = out / "encoder.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    with pytest.raises(EncoderLoadError, match="invalid JSON"):
        load_encoder(out)
    meta.write_text(text)
    _rewrite_meta(meta, format="cebench-encoder/0")
    with pytest.raises(EncoderLoadError, match="format 'cebench-encoder/0'"):
        load_encoder(out)


def test_extra_tensor_is_an_architecture_mismatch(alexnet_export) -> None:
    _, out = alexnet_export
    weights = out / "encoder.safetensors"
    tensors = load_file(str(weights))
    tensors["features.13.weight"] = torch.zeros(2)
    save_file(tensors, str(weights))
    _rewrite_meta(out / "encoder.json", sha256=sha256_file(weights))  # a consistent but wrong pair
    with pytest.raises(EncoderLoadError, match=r"architecture mismatch.*features\.13\.weight"):
        load_encoder(out)


def test_missing_tensor_is_an_architecture_mismatch(alexnet_export) -> None:
    _, out = alexnet_export
    weights = out / "encoder.safetensors"
    tensors = load_file(str(weights))
    del tensors["features.10.bias"]
    save_file(tensors, str(weights))
    _rewrite_meta(out / "encoder.json", sha256=sha256_file(weights))
    with pytest.raises(EncoderLoadError, match=r"architecture mismatch.*features\.10\.bias"):
        load_encoder(out)


def test_changed_spec_is_refused(alexnet_export) -> None:
    _, out = alexnet_export
    spec = SPEC.to_dict() | {"widths": [8, 16, 16, 16, 32]}
    _rewrite_meta(out / "encoder.json", spec=spec)
    with pytest.raises((EncoderLoadError, RuntimeError), match="features.10.weight"):
        load_encoder(out)


def test_changed_spec_is_an_encoder_load_error(alexnet_export) -> None:
    _, out = alexnet_export
    spec = SPEC.to_dict() | {"widths": [8, 16, 16, 16, 32]}
    _rewrite_meta(out / "encoder.json", spec=spec)
    with pytest.raises(EncoderLoadError, match="architecture mismatch"):
        load_encoder(out)


def test_export_creates_the_output_directory(tmp_path: Path) -> None:
    out = tmp_path / "run" / "export"
    export_encoder(AlexNetEncoder(SPEC), "alexnet", SPEC.to_dict(), out, {})
    assert (out / "encoder.json").is_file()


def test_dcgan_encoder_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = DCGANEncoder(**DCGAN_SPEC)
    enc.train()(torch.randn(4, 3, 32, 32))  # move the BatchNorm running statistics off their defaults
    assert not torch.equal(enc.features[3].running_mean, torch.zeros(16))
    export_encoder(enc, "dcgan", DCGAN_SPEC, tmp_path, {})
    loaded, meta = load_encoder(tmp_path / "encoder.json")
    assert isinstance(loaded, DCGANEncoder) and meta["arch"] == "dcgan" and meta["input_size"] == 32
    assert loaded.out_channels == 24
    _assert_same_encoder(enc, loaded, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))


def test_reexport_overwrites_and_updates_sha(alexnet_export) -> None:
    _, out = alexnet_export
    old = json.loads((out / "encoder.json").read_text())["sha256"]
    torch.manual_seed(1)
    other = AlexNetEncoder(SPEC)
    export_encoder(other, "alexnet", SPEC.to_dict(), out, {})
    loaded, meta = load_encoder(out)
    assert meta["sha256"] != old and "step" not in meta
    assert torch.equal(loaded.features[0].weight, other.features[0].weight)
