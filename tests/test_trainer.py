"""The shared trainer: real optimisation, exact resume, NaN stop, bad images, the adversarial path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from pretext.data.images import BadImageError
from pretext.engine.checkpoint import CheckpointError, load_checkpoint
from pretext.engine.distributed import DistEnv
from pretext.engine.trainer import NonFiniteLossError, Trainer, train
from pretext.export import load_encoder

from .conftest import crash_at, tiny_config

CPU = DistEnv(0, 1, 0, torch.device("cpu"))


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_loss_falls_on_real_images(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, "max_steps=40", "mask.kind=central", "optim.lr=0.002")
    result = train(cfg, tmp_path / "run")
    rec = [float(r["rec"]) for r in read_metrics(tmp_path / "run")]
    assert len(rec) == 40 and result.step == 40 and result.images_seen == 40 * 8
    assert sum(rec[-5:]) / 5 < 0.7 * sum(rec[:5]) / 5


def test_loss_falls_on_demo_data_with_region_masks(demo_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(demo_root, "max_steps=30", "mask.kind=region", "optim.lr=0.002")
    train(cfg, tmp_path / "run")
    rec = [float(r["rec"]) for r in read_metrics(tmp_path / "run")]
    assert sum(rec[-5:]) / 5 < sum(rec[:5]) / 5


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return {f"{n}.{k}": v for n, sd in state["networks"].items() for k, v in sd.items()}


@pytest.mark.parametrize("extra", [
    ("mask.kind=region",),
    ("mask.kind=block", "data.workers=2"),
])
def test_resume_after_crash_is_exact(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     extra: tuple[str, ...]) -> None:
    common = ("max_steps=8", "ckpt_every=3", *extra)
    train(tiny_config(demo_root, *common), tmp_path / "straight")

    crash_at(monkeypatch, Trainer, 4,  # after the step-3 checkpoint, mid-way to the next one
             lambda: train(tiny_config(demo_root, *common), tmp_path / "resumed"), method="_train_step")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 3
    train(tiny_config(demo_root, *common, "resume=true"), tmp_path / "resumed")

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    rows = read_metrics(tmp_path / "resumed")
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # no duplicated rows after the crash
    assert [r["rec"] for r in rows] == [r["rec"] for r in read_metrics(tmp_path / "straight")]


def test_resume_of_adversarial_run_is_exact(demo_root: Path, tmp_path: Path) -> None:
    adv = ("model.arch=dcgan", "model.widths=[8,16,16]", "model.bottleneck=32", "model.output=center",
           "model.disc_widths=[8,16]", "mask.kind=central", "mask.overlap=2", "loss.adversarial_weight=0.001",
           "ckpt_every=2")
    train(tiny_config(demo_root, *adv, "max_steps=4"), tmp_path / "straight")
    train(tiny_config(demo_root, *adv, "max_steps=2"), tmp_path / "resumed")
    train(tiny_config(demo_root, *adv, "max_steps=4", "resume=true"), tmp_path / "resumed")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert any(k.startswith("discriminator.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    row = read_metrics(tmp_path / "straight")[-1]
    assert {"rec", "adv", "disc", "loss"} <= row.keys()


def test_existing_run_is_not_overwritten_without_resume(image_folder: Path, tmp_path: Path) -> None:
    train(tiny_config(image_folder, "max_steps=1"), tmp_path / "run")
    with pytest.raises(CheckpointError, match="resume=true"):
        train(tiny_config(image_folder, "max_steps=2"), tmp_path / "run")


def test_resume_with_other_model_is_refused(image_folder: Path, tmp_path: Path) -> None:
    train(tiny_config(image_folder, "max_steps=1"), tmp_path / "run")
    with pytest.raises(CheckpointError, match="model"):
        train(tiny_config(image_folder, "max_steps=2", "resume=true", "model.dropout=0.1"), tmp_path / "run")


def test_a_checkpoint_from_before_a_setting_existed_resumes(image_folder: Path, tmp_path: Path) -> None:
    """A checkpoint written before a config key was added (its config lacks model.backbone) resumes: the missing key
    had its default then; setting the new key to another value on resume is still refused."""
    from pretext.engine.checkpoint import save_checkpoint

    train(tiny_config(image_folder, "max_steps=1"), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    del state["config"]["model"]["backbone"]
    save_checkpoint(state, tmp_path / "run" / "checkpoint.pt")
    assert train(tiny_config(image_folder, "max_steps=2", "resume=true"), tmp_path / "run").step == 2
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    del state["config"]["model"]["backbone"]
    save_checkpoint(state, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="model"):
        train(tiny_config(image_folder, "max_steps=3", "resume=true", "model.backbone=timm:resnet18",
                          "model.widths=null"), tmp_path / "run")


@pytest.mark.parametrize("fault", ["nan_loss", "inf_loss", "nan_gradient"])
def test_nan_loss_stops_and_keeps_last_checkpoint(image_folder: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """NaN or inf in the loss, or NaN gradients behind a finite loss (sqrt'(0) * 0), stop the run at step 5 with
    the step-4 checkpoint intact and finite; the poisoned update never reaches the weights."""
    import pretext.methods.context_encoder as ce

    real = ce.reconstruction_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        if calls["n"] != 5:
            return loss
        if fault == "nan_gradient":
            return loss + torch.sqrt(loss * 0)  # value unchanged, gradient inf * 0 = nan
        return loss * float("nan" if fault == "nan_loss" else "inf")

    monkeypatch.setattr(ce, "reconstruction_loss", poisoned)
    message = {"nan_loss": r"loss became nan at step 5", "inf_loss": r"loss became inf at step 5",
               "nan_gradient": r"gradients became non-finite .* at step 5"}[fault]
    with pytest.raises(NonFiniteLossError, match=message + r".*checkpoint.*step 4\) is intact"):
        train(tiny_config(image_folder, "max_steps=10", "ckpt_every=2", "optim.grad_clip=0"), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 4
    weights = [v for net in state["networks"].values() for v in net.values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(v).all() for v in weights)
    assert not (tmp_path / "run" / "encoder.safetensors").exists()


def _folder_with_corrupt_image(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in sorted(src.glob("*.png"))[:10]:
        (dst / p.name).write_bytes(p.read_bytes())
    (dst / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return dst / "broken.png"


def test_corrupt_image_stops_with_its_name(image_folder: Path, tmp_path: Path) -> None:
    bad = _folder_with_corrupt_image(image_folder, tmp_path / "imgs")
    with pytest.raises(BadImageError, match="broken.png"):
        train(tiny_config(tmp_path / "imgs", "max_steps=3", "data.mean=[0.5,0.5,0.5]"), tmp_path / "run")
    assert bad.exists()


def test_corrupt_image_is_skipped_and_counted(image_folder: Path, tmp_path: Path) -> None:
    _folder_with_corrupt_image(image_folder, tmp_path / "imgs")
    cfg = tiny_config(tmp_path / "imgs", "max_steps=4", "data.on_bad_image=skip", "data.mean=[0.5,0.5,0.5]")
    result = train(cfg, tmp_path / "run")
    assert result.skipped_images == 1
    assert float(read_metrics(tmp_path / "run")[-1]["skipped_images"]) == 1


def test_outputs_and_exported_encoder(demo_root: Path, tmp_path: Path) -> None:
    import timm

    run = tmp_path / "run"
    train(tiny_config(demo_root, "max_steps=2", "sample_every=2", "channels_last=true"), run)
    for name in ("checkpoint.pt", "config.json", "metrics.csv", "encoder.safetensors", "encoder.json",
                 "pretrain_time.json", "samples/step0000002.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    record = json.loads((run / "pretrain_time.json").read_text())
    assert record["images_seen"] == 16 and record["steps"] == 2 and record["wall_seconds"] > 0
    encoder, meta = load_encoder(run)
    assert meta["method"] == "context_encoder" and meta["input_size"] == 32
    x = torch.randn(2, 3, 32, 32)
    via_timm = timm.create_model(meta["timm_model"], checkpoint_path=str(run / "encoder.safetensors"),
                                 **{k: v for k, v in meta["spec"].items()})
    assert torch.equal(encoder.eval()(x), via_timm.eval()(x))
    # timm's preprocessing for it is the one it was trained with: its input size, the export's mean and std
    from timm.data import resolve_data_config

    data_cfg = resolve_data_config(model=via_timm)
    norm = meta["normalization"]
    assert (data_cfg["input_size"], list(data_cfg["mean"]), list(data_cfg["std"])) == ((3, 32, 32), norm["mean"],
                                                                                     norm["std"])
    assert resolve_data_config(model=timm.create_model("cebench_alexnet"))["input_size"] == (3, 227, 227)


def test_bf16_autocast_path_trains(image_folder: Path, tmp_path: Path) -> None:
    result = train(tiny_config(image_folder, "max_steps=3", "precision=bf16"), tmp_path / "run")
    assert result.step == 3 and all(r["rec"] != "nan" for r in read_metrics(tmp_path / "run"))


def test_step_checkpoints_are_kept_and_pruned(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(image_folder, "max_steps=4", "ckpt_every=1", "keep_checkpoints=2"), run)
    assert sorted(p.name for p in run.glob("checkpoint_step*.pt")) == ["checkpoint_step3.pt", "checkpoint_step4.pt"]
    assert (run / "checkpoint_step4.pt").read_bytes() == (run / "checkpoint.pt").read_bytes()
    assert load_checkpoint(run / "checkpoint_step3.pt")["step"] == 3


def test_convergence_reads_the_last_tenth_of_the_loss() -> None:
    from pretext.engine.trainer import convergence

    flat = convergence([2.0] * 50 + [1.0] * 50)
    assert flat["converged"] is True and flat["loss_change"] == 0.0 and flat["initial_loss"] == 2.0
    falling = convergence([1.0] * 80 + [0.9] * 10 + [0.8] * 10)
    assert falling["converged"] is False and falling["loss_change"] == pytest.approx(-1 / 9)
    rising = convergence([1.0] * 90 + [1.5] * 10)  # a loss going up has not converged either
    assert rising["converged"] is False and rising["loss_change"] == pytest.approx(0.5)
    assert convergence([1.0] * 10)["converged"] is None and convergence([])["initial_loss"] is None
    # a loss fitted to near zero: -40 % of 0.05 is 0.7 % of the first step's 3.0, flat in absolute terms
    fitted = convergence([3.0] + [1.0] * 79 + [0.05] * 10 + [0.03] * 10)
    assert fitted["loss_change"] == pytest.approx(-0.4) and fitted["change_of_initial"] == pytest.approx(-0.02 / 3)
    assert fitted["converged"] is True
    # the same relative fall higher up (-40 % of 0.5 = 6.7 % of 3.0) has not flattened
    assert convergence([3.0] + [1.0] * 79 + [0.5] * 10 + [0.3] * 10)["converged"] is False


def test_auto_precision_is_bf16_only_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    from pretext.engine import trainer

    cpu = torch.device("cpu")
    assert trainer.resolve_precision("fp32", cpu) == "fp32" and trainer.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(trainer, "cpu_bf16_listed", lambda: True)
    assert trainer.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(trainer, "cpu_bf16_listed", lambda: False)
    assert trainer.resolve_precision("auto", cpu) == "fp32"
    for major, expected in ((7, "fp32"), (8, "bf16"), (9, "bf16")):  # V100 / T4 emulate bf16; Ampere on have it
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, m=major: (m, 0))
        assert trainer.resolve_precision("auto", torch.device("cuda:0")) == expected


def test_cpu_flags_are_read_once_and_unknown_cpus_are_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    """One reader of /proc/cpuinfo: `auto` picks bf16 only where bf16 is listed; the emulation warning stays quiet
    where nothing is known; the device string carries the instruction set."""
    from pretext.engine import provenance, trainer

    for flags, listed, native in ((frozenset({"avx2", "avx512_bf16"}), True, True), (frozenset({"avx2"}), False, False),
                                  (None, False, True)):
        monkeypatch.setattr(provenance, "cpu_flags", lambda f=flags: f)
        assert provenance.cpu_bf16_listed() is listed and trainer.cpu_has_native_bf16() is native
        assert trainer.resolve_precision("auto", torch.device("cpu")) == ("bf16" if listed else "fp32")
    monkeypatch.setattr(provenance, "cpu_flags", lambda: frozenset({"amx_bf16", "avx512_bf16"}))
    assert provenance.cpu_isa().endswith("+AMX+BF16")
    assert "+AMX+BF16" in provenance.device_description(torch.device("cpu"))
