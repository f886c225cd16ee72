"""Importing a torchvision AlexNet state dict as an encoder: same features, prefixes, refusals, no pickle code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from pretext.export import load_encoder
from pretext.import_alexnet import WeightsImportError, import_alexnet, main


@pytest.fixture(scope="module")
def tv_alexnet() -> torch.nn.Module:
    """A torchvision AlexNet with random weights, in eval mode."""
    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).eval()


@pytest.mark.parametrize("wrap", ["plain", "module_prefix", "encoder_prefix", "module_encoder_prefix",
                                  "state_dict_key", "safetensors"])
def test_imported_encoder_gives_torchvision_features(tv_alexnet, tmp_path: Path, wrap: str) -> None:
    state = tv_alexnet.state_dict()
    path = tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pth")
    if wrap == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        prefix = {"module_prefix": "module.", "encoder_prefix": "encoder.",
                  "module_encoder_prefix": "module.encoder."}.get(wrap, "")
        doc = {prefix + k: v for k, v in state.items()}
        torch.save({"state_dict": doc} if wrap == "state_dict_key" else doc, path)
    import_alexnet(path, tmp_path / "enc")
    encoder, meta = load_encoder(tmp_path / "enc")
    assert meta["method"] == "supervised" and meta["input_size"] == 224
    assert meta["normalization"]["mean"] == [0.485, 0.456, 0.406] and meta["spec"]["widths"] == [64, 192, 384, 256, 256]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x, out="pool5"), tv_alexnet.features(x))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_carrying_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"features.0.weight": _Payload(marker)}, protocol=2))
    with pytest.raises(WeightsImportError, match="evil.pth"):
        import_alexnet(path, tmp_path / "enc")
    assert not marker.exists()


def test_not_an_alexnet_and_missing_files_name_the_problem(tmp_path: Path, caplog) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(WeightsImportError, match=r"missing \['features.0.weight'"):
        import_alexnet(path, tmp_path / "enc")
    assert main([str(tmp_path / "none.pth"), "--out", str(tmp_path / "enc")]) == 2
    assert "not found" in caplog.text and not (tmp_path / "enc").exists()
