"""`cebench bench`: the quick run writes every figure the report promises; and the fast paths it measures compute
what the plain path computes (channels_last, bf16 autocast, fused optimisers), so speed never changes results."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import perf
from pretext.config import load_config
from pretext.methods import StepContext, get_method
from pretext.models.kernels import to_channels_last


@pytest.mark.slow
def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    assert perf.main(["--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "perf.json").read_text())
    assert r["matmul_gflops_fp32"] > 0 and r["matmul_gflops_bf16"] > 0
    names = set(r["steps"])
    assert {f"{n}_{v}" for n in ("ce227", "inpaint_gan", "demo") for v in ("plain_fp32", "fp32", "fp32_nchw", "bf16")} | {
        "autoencoder_fp32", "autoencoder_bf16", "context_prediction_fp32", "context_prediction_bf16"} == names
    for name, step in r["steps"].items():
        # an emulated bf16 matmul is no ceiling for the step (its convolutions take other kernels): measured on an
        # AVX2-only EPYC, the 227 px bf16 step at 5.1x the bf16 matmul rate
        ceiling = math.inf if step.get("emulated_bf16") else 5
        assert step["images_per_s"] > 0 and step["gflops"] > 0 and 0 < step["fraction_of_peak"] < ceiling, name
        assert step["flops_per_image"] > 1e6 and step["peak_rss_mb"] > 50, name
    # the AlexNet step's FLOPs are the model's, whatever the precision or layout
    flops = {r["steps"][f"{n}_{v}"]["flops_per_image"] for n in ("ce227", "inpaint_gan")
             for v in ("plain_fp32", "fp32", "bf16")}
    assert len({round(f / 1e6) for f in flops}) == 2  # the matrix-product path counts the convolution's FLOPs
    assert r["steps"]["inpaint_gan_plain_fp32"]["fast_kernels"] is False
    assert r["pipeline"]["images_per_s_per_worker"] > 0 and r["pipeline"]["headroom"] > 0
    assert set(r["masks"]["masks_per_s"]) == {"central", "block", "region", "freeform", "mixed"}
    for e in r["exact_search"].values():
        assert e["same_neighbours"] and e["speedup"] > 0
    assert 0 <= r["approximate_search"]["chosen"]["recall_at_10"] <= 1
    assert r["proposals"]["boxes_per_image"] > 10
    assert r["detection_inference"]["seconds_per_image"] > 0 and r["segmentation_inference"]["seconds_per_image"] > 0
    assert r["voc_scoring"]["images"] == perf.QUICK.eval_images and 0 <= r["voc_scoring"]["map_voc07_11pt"] <= 100
    assert r["peer_gan"]["images_per_s"] > 0 and r["peer_gan"]["batch"] == perf.QUICK.step_batch
    assert [t["layer"] for t in r["transposed_layers"]] == [t[0] for t in perf.TRANSPOSED]
    assert all(t["fp32_plain_s"] > 0 and t["fp32_fast_s"] > 0 for t in r["transposed_layers"])
    assert len(r["targets"]) >= 11
    assert set(r["finetune"]) == {f"{n}_{v}" for n in perf.FINETUNES for v in ("plain_fp32", "fp32", "bf16")}
    for name, f in r["finetune"].items():
        assert f["images_per_s"] > 0 and f["batch"] == perf.QUICK.step_batch, name
    assert r["finetune"]["classify_demo_fp32"]["image_size"] == 64 and r["finetune"]["classify227_bf16"]["image_size"] == 227
    assert r["features"]["bf16_speedup"] > 0
    for t in r["targets"]:  # a target that does not apply to this machine is neither met nor missed
        assert isinstance(t["met"], bool) if t["applies"] else t["met"] is None, t
    assert [t["applies"] for t in r["targets"] if "bf16, vs" in t["target"]] == [r["native_bf16"]] * 7
    md = (tmp_path / "perf.md").read_text()
    assert "--quick" in md and "| ce227_plain_fp32 |" in md and "## Targets" in md
    assert "| straightforward GAN port" in md and "## Transposed convolutions" in md and "## Fine-tuning steps" in md


def test_the_straightforward_gan_port_is_the_suites_gan_architecture() -> None:
    """The yardstick computes the same networks as the suite's inpaint_paper step, written the plain way."""
    from benchmarks import peer_gan
    from pretext.models.dcgan import DCGANDiscriminator, DCGANGenerator

    def shapes(net: torch.nn.Module) -> list[tuple[int, ...]]:
        return sorted(tuple(p.shape) for p in net.parameters())

    assert shapes(peer_gan.generator()) == shapes(DCGANGenerator(128, [64, 64, 128, 256, 512], 4000, "center"))
    assert shapes(peer_gan.discriminator()) == shapes(DCGANDiscriminator(64, [64, 128, 256, 512]))
    assert peer_gan.generator()(torch.zeros(2, 3, 128, 128)).shape == (2, 3, 64, 64)
    step = peer_gan.step_runner(batch=2)
    assert step(0) > 0


def test_exact_search_agrees_with_scikit_learn() -> None:
    out = perf.exact_search((3000,), 256, 40)
    assert out["3000"]["same_neighbours"] and out["3000"]["identical_rows"] > 0.95


def test_ivf_reaches_its_recall_target_on_clustered_data() -> None:
    out = perf.approximate_search(20_000, 32, 100)
    assert out["chosen"]["recall_at_10"] >= 0.95
    assert [s["nprobe"] for s in out["sweep"]] == sorted(s["nprobe"] for s in out["sweep"])


def _one_step(preset: str, overrides: list[str], seed: int = 0) -> tuple[dict, dict]:
    """Losses and gradients of one training step of a small config (gradients, not Adam's first update, which is
    about lr * sign(g) and so flips with any rounding where g is near 0)."""
    cfg = load_config(preset, ["mask.region_bank=null", "train.batch_size=4", *overrides])
    torch.manual_seed(seed)
    method = get_method(cfg.method)(cfg, [0.5, 0.5, 0.5])
    opts = method.build_optimizers()
    names = {id(p): n for n, p in method.named_parameters()}
    grads: dict[str, torch.Tensor] = {}

    def optimize(name: str, loss: torch.Tensor) -> None:
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        for group in opts[name].param_groups:
            grads.update({f"{name}:{names[id(p)]}": p.grad.clone() for p in group["params"] if p.grad is not None})
        opts[name].step()

    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else contextlib.nullcontext
    x = torch.rand(4, 3, cfg.data.fine_size, cfg.data.fine_size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    if cfg.train.channels_last:  # as the trainer does it (on CPU the parameters stay contiguous)
        method = to_channels_last(method, torch.device("cpu"))
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(seed + 1)
    ctx = StepContext(0, torch.Generator().manual_seed(2), torch.device("cpu"), autocast, optimize,
                      lambda _m: contextlib.nullcontext())
    losses = {k: float(v) for k, v in method.training_step(x, ctx).items()}
    return losses, grads


SMALL = ("demo", "demo_inpaint", "demo_autoencoder", "demo_context_prediction")


@pytest.mark.parametrize("option", ["train.channels_last", "train.fast_kernels"])
@pytest.mark.parametrize("preset", SMALL)
def test_fast_paths_compute_what_the_plain_path_computes(preset: str, option: str) -> None:
    """channels_last against NCHW; train.fast_kernels (whole-input convolutions as matrix products, fused Adam)
    against plain modules."""
    plain_loss, plain_g = _one_step(preset, [f"{option}=false"])
    fast_loss, fast_g = _one_step(preset, [f"{option}=true"])
    for k in plain_loss:
        assert fast_loss[k] == pytest.approx(plain_loss[k], rel=1e-4, abs=1e-5), k
    assert plain_g.keys() == fast_g.keys() and plain_g
    # the tolerance is relative to the network's largest gradient: a conv bias followed by BatchNorm has a
    # gradient that is 0 in exact arithmetic and rounding noise (~1e-8) in either layout
    scale = max(float(g.abs().max()) for g in plain_g.values())
    for k, g in plain_g.items():
        torch.testing.assert_close(fast_g[k], g, rtol=1e-3, atol=1e-4 * scale, msg=k)


@pytest.mark.parametrize("preset", SMALL)
def test_bf16_autocast_stays_close_to_fp32(preset: str) -> None:
    """bf16 keeps 8 bits of mantissa: losses agree to about 1 %, never to the bit."""
    plain_loss, _ = _one_step(preset, ["train.precision=fp32"])
    fast_loss, _ = _one_step(preset, ["train.precision=bf16", "train.channels_last=true"])
    for k in plain_loss:
        assert fast_loss[k] == pytest.approx(plain_loss[k], rel=0.03, abs=1e-3), k


@pytest.mark.parametrize("channels_last", [False, True])
def test_whole_input_layers_equal_their_convolutions(channels_last: bool) -> None:
    from pretext.models.kernels import WholeInputConv2d, WholeInputConvTranspose2d

    torch.manual_seed(0)
    for layer, shape in ((WholeInputConv2d(32, 48, 4, bias=True), (5, 32, 4, 4)),
                         (WholeInputConvTranspose2d(48, 32, 4, bias=True), (5, 48, 1, 1)),
                         (WholeInputConv2d(32, 48, 4), (5, 32, 6, 6))):  # not whole-input: the plain path
        x = torch.randn(shape)
        if channels_last:
            layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        outs = []
        for matmul in (False, True):
            layer.fast = matmul
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            outs.append((y.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
            layer.zero_grad()
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fused_adam_follows_the_default_adam() -> None:
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.Adam(nets[0].parameters(), lr=1e-2, betas=(0.5, 0.999), weight_decay=1e-4),
            torch.optim.Adam(nets[1].parameters(), lr=1e-2, betas=(0.5, 0.999), weight_decay=1e-4, fused=True)]
    for step in range(20):
        x = torch.randn(16, 20, generator=torch.Generator().manual_seed(step))
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset", ["demo", "demo_inpaint", "demo_context_prediction"])
def test_compiled_networks_compute_what_eager_computes(preset: str) -> None:
    """train.compile wraps each network in torch.compile. Here with the aot_eager backend (graph capture and AOT
    autograd, the same kernels): what the trainer's compiled networks compute, without the minutes a C++
    inductor build takes on 2 cores."""
    cfg = load_config(preset, ["mask.region_bank=null", "train.batch_size=4"])
    torch.manual_seed(0)
    method = get_method(cfg.method)(cfg, [0.5, 0.5, 0.5]).eval()
    size = getattr(method, "input_size", cfg.data.fine_size)
    for name, net in method.networks().items():
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        x = torch.rand(4, first.in_channels, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
        if name == "discriminator":
            x = x[..., : size // 2, : size // 2]
        args = (x, x.flip(-1)) if preset == "demo_context_prediction" else (x,)  # a pair of patches
        compiled = torch.compile(net, backend="aot_eager")
        outs = []
        for f in (net, compiled):
            net.zero_grad()
            y = f(*args)
            y.float().square().mean().backward()
            outs.append((y.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5, msg=name)
        assert len(outs[0][1]) == len(outs[1][1]) > 0
        for a, b in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_step_runner_compiles_each_network_as_the_trainer_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile in the speed benchmark's step: every network wrapped by torch.compile (here the aot_eager
    backend, the same graphs without a C++ build), and the step still trains."""
    from benchmarks.step_time import step_runner

    compile_ = torch.compile
    wrapped = []
    monkeypatch.setattr(torch, "compile", lambda net: wrapped.append(net) or compile_(net, backend="aot_eager"))
    cfg = load_config("demo", ["mask.region_bank=null", "train.batch_size=2", "train.compile=true",
                               "train.channels_last=true"])
    step = step_runner(cfg)
    assert len(wrapped) == 1 and step(0) > 0 and step(1) > 0


def test_report_renders_a_perf_json_of_an_older_version() -> None:
    """`cebench bench --report-only` on results/perf.json, written before the straightforward port, the transposed
    layers and the compile timing existed; and a compile measurement that failed."""
    old = json.loads((Path(__file__).resolve().parents[1] / "results" / "perf.json").read_text())
    assert "peer_gan" not in old
    text = perf.report(old, "cebench bench --out results")
    assert "## Targets" in text and "## Transposed convolutions" not in text
    failed = perf.report({**old, "compile": {"error": "Traceback ...\nInvalidCxxCompiler: no working C++ compiler"}},
                         "x")
    assert "The measurement failed: InvalidCxxCompiler: no working C++ compiler" in failed
