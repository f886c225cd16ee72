"""The `cebench` console command end to end: make-demo-data -> pretrain -> inpaint -> eval-inpainting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretext.cli import COMMANDS, main

from .conftest import TINY


def cebench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("cebench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pretext"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)


def test_help_and_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("cebench ")


def test_every_command_has_a_main() -> None:
    import importlib

    from transfer.cli import TASKS

    for module, _ in (*COMMANDS.values(), *TASKS.values()):
        assert callable(importlib.import_module(module).main), module


def test_bad_config_key_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["pretrain", "demo", "--out", str(tmp_path / "r"), "max_step=3"]) == 2
    assert "unknown key 'max_step'; did you mean train.max_steps" in caplog.text


@pytest.mark.slow
def test_demo_data_pretrain_inpaint_eval(tmp_path: Path) -> None:
    data, run = tmp_path / "demo", tmp_path / "run"
    made = cebench("make-demo-data", str(data), "--num-images", "40", "--seed", "1")
    assert made.returncode == 0, made.stderr
    trained = cebench("pretrain", "demo", "--out", str(run), f"data.root={data}", *TINY, "max_steps=4")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (run / "encoder.safetensors").is_file() and (run / "encoder.json").is_file()

    filled = cebench("inpaint", "--checkpoint", str(run), "--images", str(data), "--mask", "central",
                     "--out", str(tmp_path / "filled"))
    assert filled.returncode == 0, filled.stderr[-2000:]
    assert (tmp_path / "filled" / "grid.png").is_file()
    assert len(list((tmp_path / "filled").glob("*_filled.png"))) == 10  # the test split of 40 images

    scored = cebench("eval-inpainting", "--checkpoint", str(run), "--images", str(data), "--out", str(tmp_path / "ev"))
    assert scored.returncode == 0, scored.stderr[-2000:]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for row in (metrics, metrics["baseline_mean_fill"]):
        assert 0 < row["mean_l1"] < 100 and 0 < row["mean_l2"] < 100 and row["psnr"] > 0
    assert metrics["n_images"] == 10 and "PSNR" in scored.stdout


def test_python_m_entry_points() -> None:
    for module in ("pretext", "pretext.pretrain", "pretext.inpaint", "pretext.eval_inpainting", "pretext.data.demo"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (module, out.stderr[-1000:])
