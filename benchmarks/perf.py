"""`cebench bench --out DIR [--quick]` (also `python -m benchmarks.perf`): how fast the hot paths run here, against
the machine's own matmul peak, in one run. Writes DIR/perf.json and DIR/perf.md with the machine description.

Measured:
- matmul peak, fp32 and bf16 (GFLOP/s): the yardstick;
- pretext training steps (the 227 px AlexNet context encoder, the 128 px inpainting GAN, the autoencoder and
  context prediction) in images/s, counted GFLOP/s (torch.utils.flop_counter, forward + backward) and fraction of
  peak, peak memory; each as the plain path (eager fp32 NCHW, the reference) and the optimised ones (fp32
  channels_last, bf16 autocast). Every step runs in its own process, so its peak memory is its own;
- the input pipeline (decode, resize, crop, flip) per worker and with the default workers, and mask generation;
- feature extraction; FAISS exact search against scikit-learn brute force (the neighbours must agree) on 9216-d
  vectors, and an IVF index's recall@10 and speed-up over exact search on a million synthetic vectors;
- selective-search proposals per image (one process and all cores), Fast R-CNN and FCN inference per image, VOC07
  detection scoring of a VOC-sized result set;
- (without --quick) whether bf16 changes results: a demo pretraining in fp32 and in bf16, central-hole PSNR.

`--quick` shrinks every size so the whole run takes a minute or two (for tests); its figures are not the targets'.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("cebench")

# The pretext steps: (entry prefix, preset, overrides, batch). "plain_fp32" is the reference: eager fp32 NCHW with
# plain PyTorch modules and torch's default Adam (train.fast_kernels=false); "fp32" and "fp32_nchw" are the fast
# paths (whole-input convolutions as matrix products, fused Adam) with and without channels_last; "bf16" adds
# bf16 autocast.
STEPS = {
    "ce227": ("ce_alexnet_paper", ["mask.region_bank=null"], 64),
    "inpaint_gan": ("inpaint_paper", [], 64),
    "autoencoder": ("autoencoder_paper", [], 64),
    "context_prediction": ("context_prediction_paper", [], 64),
    "demo": ("demo", ["mask.region_bank=null"], 64),  # the suites' 64 px context encoder
}
VARIANTS = {
    "plain_fp32": ["train.precision=fp32", "train.channels_last=false", "train.fast_kernels=false"],
    "fp32": ["train.precision=fp32", "train.channels_last=true", "train.fast_kernels=true"],
    "fp32_nchw": ["train.precision=fp32", "train.channels_last=false", "train.fast_kernels=true"],
    "bf16": ["train.precision=bf16", "train.channels_last=true", "train.fast_kernels=true"],
}
REFERENCED = ("ce227", "inpaint_gan", "demo")  # the targets' steps get every variant; the others fp32 and bf16
EMULATED_BF16_BATCH = 2  # where bf16 has no hardware support, one step of this batch (it is ~10-100x slower)

@dataclasses.dataclass
class Sizes:
    """Everything `--quick` shrinks."""

    matmul_n: int = 2048
    profile_batch: int = 2
    step_batch: int | None = None  # None: each step's own batch (64)
    steps: int = 4
    warmup: int = 2
    pipeline_images: int = 256
    mask_repeats: int = 10
    feature_images: int = 128
    exact_db: tuple[int, ...] = (10_000, 50_000)
    exact_dim: int = 9216
    queries: int = 500
    approx_db: int = 1_000_000
    approx_dim: int = 128
    proposal_images: int = 8
    det_images: int = 3
    seg_images: int = 3
    eval_images: int = 4952  # VOC2007 test
    psnr_steps: int | None = 100  # the demo suite's pretraining length; None: skip the bf16-vs-fp32 check
    compile_steps: int = 20  # steps of the demo step with and without train.compile; 0: skip (minutes of compiling)


QUICK = Sizes(matmul_n=512, step_batch=4, steps=1, warmup=0, pipeline_images=32, mask_repeats=2, feature_images=8,
              exact_db=(2000,), exact_dim=512, queries=50, approx_db=20_000, approx_dim=32, proposal_images=2,
              det_images=1, seg_images=1, eval_images=200, psnr_steps=None, compile_steps=0)


# --- machine and yardstick ------------------------------------------------------------------------------------

def machine() -> dict:
    """CPU model, cores, ISA flags that matter for bf16, library versions, GPU if any."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": platform.processor()}
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["isa"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma"})
                break
    with contextlib.suppress(OSError, ValueError):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for name in ("torchvision", "faiss", "sklearn", "cv2", "numpy"):
        with contextlib.suppress(ImportError):
            info[name] = getattr(__import__(name), "__version__", "?")
    return info


def _best_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(dtype: torch.dtype, n: int, device: torch.device) -> float:
    """Best of several n x n matmuls, in GFLOP/s (2 n^3 per product); n shrinks where the dtype is slow (emulated
    bf16 runs ~100x below fp32), so that one measurement takes about a second."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def rate(size: int, repeats: int) -> float:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)

        def run() -> None:
            for _ in range(4):
                torch.mm(a, b)
            sync()

        return 4 * 2 * size**3 / _best_seconds(run, repeats=repeats) / 1e9

    probe = rate(min(n, 256), 2)
    while n > 256 and 8 * n**3 / (probe * 1e9) > 1.0:
        n //= 2
    return max(probe, rate(n, 5))


# --- pretext steps (each in a child process) ----------------------------------------------------------------

def step_overrides(name: str, variant: str, batch: int | None) -> tuple[str, list[str]]:
    """(preset, overrides) of one measured step."""
    preset, extra, default_batch = STEPS[name]
    return preset, [*extra, *VARIANTS[variant], f"train.batch_size={batch or default_batch}", "train.device=auto"]


def measure_step(preset: str, overrides: list[str], steps: int, warmup: int, count_flops: bool = True) -> dict:
    """Images/s, counted FLOPs and peak memory of a pretext training step (run in its own process)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pretext.config import load_config

    from .step_time import step_runner

    cfg = load_config(preset, overrides)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = step_runner(cfg)
    every = [step(i) for i in range(warmup + steps)]
    seconds = every[warmup:]
    step_s = sorted(seconds)[len(seconds) // 2]
    batch = cfg.train.batch_size
    record = {"preset": preset, "overrides": overrides, "batch": batch, "image_size": cfg.data.fine_size,
              "precision": cfg.train.precision, "channels_last": cfg.train.channels_last,
              "fast_kernels": cfg.train.fast_kernels, "steps_timed": len(seconds),
              "seconds_per_step": step_s, "images_per_s": batch / step_s, "first_step_seconds": every[0],
              "compile": cfg.train.compile,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": rss0 / 1024}
    if count_flops:
        flops = FlopCounterMode(display=False)
        with flops:
            step(warmup + steps)
        record["flops_per_image"] = flops.get_total_flops() / batch
    if torch.cuda.is_available():
        record["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return record


def profile_step(preset: str, overrides: list[str], top: int = 6) -> dict:
    """torch.profiler over one training step (the model built and one step run before it): the operators with
    the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    from pretext.config import load_config

    from .step_time import step_runner

    step = step_runner(load_config(preset, overrides))
    step(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds = step(1)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return {"preset": preset, "overrides": overrides, "step_seconds": seconds,
            "top_ops": [{"op": e.key, "self_share": e.self_cpu_time_total / total, "calls": e.count}
                        for e in events[:top]]}


def run_step_child(preset: str, overrides: list[str], steps: int, warmup: int, count_flops: bool,
                   profile: bool = False) -> dict:
    """measure_step in a fresh interpreter: isolated peak memory and allocator state."""
    spec = json.dumps({"preset": preset, "overrides": overrides, "steps": steps, "warmup": warmup,
                       "count_flops": count_flops, "profile": profile})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.perf", "--child-step", spec], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"step {preset} {overrides} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_rates(steps: int, bf16: bool) -> dict:
    """The demo step (the suites' 64 px context encoder, batch 64) eager and under train.compile (inductor): the
    steady speed of each, the compile time (the compiled run's first steps less its steady steps) and how many
    steps a run needs before compiling pays for itself."""
    precision = "bf16" if bf16 else "fp32"
    overrides = ["mask.region_bank=null", f"train.precision={precision}", "train.channels_last=true",
                 "train.fast_kernels=true", "train.device=auto"]
    out = {"preset": "demo", "precision": precision, "steps": steps}
    for compiled in (False, True):
        log.info("demo step, train.compile=%s (%d steps)", compiled, steps)
        out["compiled" if compiled else "eager"] = run_step_child("demo", [*overrides, f"train.compile={compiled}"],
                                                                  steps, 3, count_flops=False)
    eager, comp = out["eager"]["seconds_per_step"], out["compiled"]["seconds_per_step"]
    out["compile_seconds"] = out["compiled"]["first_step_seconds"] - comp
    out["speedup"] = eager / comp
    out["break_even_steps"] = out["compile_seconds"] / (eager - comp) if eager > comp else None
    return out


def run_peer_child(batch: int, steps: int, warmup: int, device: str = "cpu") -> dict:
    """The straightforward GAN step (benchmarks.peer_gan) in a fresh interpreter, on the suite steps' device."""
    spec = json.dumps({"batch": batch, "steps": steps, "warmup": warmup, "device": device})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.perf", "--child-peer", spec], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"peer GAN step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def native_bf16(peaks: dict[str, float]) -> bool:
    """bf16 matmuls at least half as fast as fp32: the CPU (AVX512-BF16, AMX) or GPU computes bf16 natively."""
    return peaks["bf16"] >= 0.5 * peaks["fp32"]


def pretext_steps(sizes: Sizes, peaks: dict[str, float]) -> dict[str, dict]:
    """Every step x variant, with its fraction of the matching precision's matmul peak. Where bf16 is emulated
    (no hardware support), its steps run once at a tiny batch and take their FLOPs from the fp32 count."""
    out = {}
    emulated = not native_bf16(peaks)
    for name in STEPS:
        for variant in VARIANTS:
            if variant in ("plain_fp32", "fp32_nchw") and name not in REFERENCED:
                continue
            slow = variant == "bf16" and emulated
            batch = EMULATED_BF16_BATCH if slow else sizes.step_batch
            preset, overrides = step_overrides(name, variant, batch)
            log.info("step %s %s%s", name, variant, " (bf16 is emulated here: one step of batch 2)" if slow else "")
            rec = run_step_child(preset, overrides, 1 if slow else sizes.steps, 0 if slow else sizes.warmup,
                                 count_flops=not slow)
            if slow:
                rec["flops_per_image"] = out[f"{name}_fp32"]["flops_per_image"]
                rec["emulated_bf16"] = True
            rec["gflops"] = rec["flops_per_image"] * rec["images_per_s"] / 1e9
            rec["fraction_of_peak"] = rec["gflops"] / peaks["bf16" if rec["precision"] == "bf16" else "fp32"]
            out[f"{name}_{variant}"] = rec
    for name in REFERENCED:
        plain = out[f"{name}_plain_fp32"]["images_per_s"]
        for variant in ("fp32", "fp32_nchw", "bf16"):
            out[f"{name}_{variant}"]["speedup_vs_plain"] = out[f"{name}_{variant}"]["images_per_s"] / plain
    return out


# --- input pipeline and masks ---------------------------------------------------------------------------------

def pipeline(paths: list[Path], load_size: int, fine_size: int, images: int, workers: int) -> dict:
    """Decode + resize + crop + flip: images/s in this process (one worker's rate) and through the training
    DataLoader with `workers` processes."""
    from pretext.data.dataset import UnlabelledImages, build_loader

    ds = UnlabelledImages(paths, load_size, fine_size, flip=True)
    n = min(images, len(ds))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(n):
        ds.load(i % len(ds), rng)
    single = n / (time.perf_counter() - t0)
    batch = 32
    loader = iter(build_loader(ds, batch, seed=0, workers=workers))
    next(loader)  # worker start-up is not throughput
    batches = max(2, images // batch)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(loader)
    loaded = batches * batch / (time.perf_counter() - t0)
    del loader
    return {"images": len(paths), "load_size": load_size, "fine_size": fine_size,
            "images_per_s_per_worker": single, "workers": workers, "images_per_s_loader": loaded}


def mask_rates(size: int, batch: int, repeats: int) -> dict:
    """Masks per second of each kind (procedural region shapes)."""
    from pretext.masks import MASK_KINDS, build_mask_generator

    from .masks import time_masks

    rates = {}
    for kind in MASK_KINDS:
        gen = build_mask_generator(kind)
        rates[kind] = batch / time_masks(gen, batch, size, repeats, torch.device("cpu"), 0)
    return {"size": size, "batch": batch, "masks_per_s": rates}


# --- transfer steps --------------------------------------------------------------------------------------------

FINETUNES = {  # name: (pretext preset whose encoder is fine-tuned, fine-tuning preset, batch)
    "classify_demo": ("demo", "classify_demo", 64),  # the suites' 64 px fine-tune
    "classify227": ("ce_alexnet_paper", "classify_paper", 64),  # the paper's AlexNet at 227 px
}


def _exported_encoder(preset: str, out: Path) -> Path:
    """A random-init encoder of `preset`'s architecture, exported to `out` as a pretraining would."""
    from pretext.config import load_config
    from pretext.export import export_encoder
    from pretext.models import AlexNetEncoder, alexnet_spec

    cfg = load_config(preset)
    m = cfg.model
    spec = alexnet_spec(m.arch, m.widths, cfg.data.fine_size, m.layout, m.lrn, m.groups)
    export_encoder(AlexNetEncoder(spec), "alexnet", spec.to_dict(), out, {"method": "random"})
    return out


def finetune_rates(steps: int, warmup: int, batch: int | None, work: Path) -> dict:
    """Images/s of `transfer classify`'s training step (FineTuner.train_step: all layers, SGD, the schedule's lr) on
    random images, per fine-tune of FINETUNES, as the plain path (fp32 NCHW), fp32 channels_last and bf16
    channels_last. Data loading is excluded (the decoded-image cache keeps it off the step's cores)."""
    from pretext.engine.distributed import DistEnv
    from transfer.classify import ClassifyConfig, FineTuner, RunInputs
    from transfer.features import open_labelled

    folder = work / "finetune_images"  # 2 classes x 4 images: the fine-tuner's init batch and class list
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(folder / c / f"{i}.png")
    data = open_labelled(folder, "unused")
    env = DistEnv(0, 1, 0, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    out: dict = {}
    for name, (pretext_preset, preset, default_batch) in FINETUNES.items():
        encoder = _exported_encoder(pretext_preset, work / f"encoder_{name}")
        n = batch or default_batch
        for variant, overrides in (("plain_fp32", ["train.precision=fp32", "train.channels_last=false"]),
                                   ("fp32", ["train.precision=fp32", "train.channels_last=true"]),
                                   ("bf16", ["train.precision=bf16", "train.channels_last=true"])):
            cfg = ClassifyConfig.load(preset, [*overrides, f"train.batch_size={n}", "model.init=kaiming",
                                               "train.progress=false", f"train.max_steps={steps + warmup}"])
            tuner = FineTuner(cfg, RunInputs(encoder, data, data, work / f"run_{name}_{variant}"), env)
            size = tuner.crop
            images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
            labels = torch.randint(0, 2, (n,))
            for _ in range(warmup):
                tuner.train_step(images, labels)
            start = time.perf_counter()
            for _ in range(steps):
                tuner.train_step(images, labels)
            seconds = (time.perf_counter() - start) / steps
            out[f"{name}_{variant}"] = {"preset": preset, "encoder_preset": pretext_preset, "batch": n, "image_size": size,
                                        "precision": variant.split("_")[-1], "channels_last": variant != "plain_fp32",
                                        "seconds_per_step": seconds, "images_per_s": n / seconds}
        plain = out[f"{name}_plain_fp32"]["images_per_s"]
        for variant in ("fp32", "bf16"):
            entry = out[f"{name}_{variant}"]
            entry["speedup_vs_plain"] = entry["images_per_s"] / plain
        out[f"{name}_bf16"]["speedup_vs_fp32"] = out[f"{name}_bf16"]["images_per_s"] / out[f"{name}_fp32"]["images_per_s"]
    return out


# --- features and search ------------------------------------------------------------------------------------

def feature_rate(images: int, work: Path, bf16_images: int | None = None) -> dict:
    """pool5 features of the 227 px AlexNet encoder as the probes and retrieval extract them
    (transfer.features.encode_batch: normalisation, channels_last, autocast, pooling; decoding excluded), images/s
    in fp32 and bf16 (`bf16_images` of them)."""
    from pretext.export import load_encoder
    from transfer.features import encode_batch

    enc, meta = load_encoder(_exported_encoder("ce_alexnet_paper", work / "encoder_features"))
    enc.eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enc.to(device)
    out = {}
    for precision, n in (("fp32", images), ("bf16", bf16_images or images)):
        batch = min(64, n)
        x = torch.randint(0, 256, (batch, 3, 227, 227), dtype=torch.uint8)

        def run() -> None:
            for _ in range(max(1, n // batch)):
                encode_batch(enc, meta, x, "pool5", device, precision=precision)

        out[f"images_per_s_{precision}"] = max(1, n // batch) * batch / _best_seconds(run, repeats=2)
    out["bf16_speedup"] = out["images_per_s_bf16"] / out["images_per_s_fp32"]
    return out


def bottleneck_layers(batch: int) -> dict:
    """The DCGAN bottleneck pair (512x4x4 -> 4000 and back), forward + backward, as convolutions and as matrix
    products (train.fast_kernels), seconds."""
    from pretext.models.kernels import WholeInputConv2d, WholeInputConvTranspose2d

    torch.manual_seed(0)
    down, up = WholeInputConv2d(512, 4000, 4, bias=False), WholeInputConvTranspose2d(4000, 512, 4, bias=False)
    x = torch.randn(batch, 512, 4, 4, requires_grad=True)
    out = {"batch": batch}
    for matmul in (False, True):
        down.fast = up.fast = matmul

        def run() -> None:
            up(down(x)).square().mean().backward()

        out["matmul_s" if matmul else "conv_s"] = _best_seconds(run, repeats=3)
    return out


# The decoders' transposed convolutions: (name, in, out, kernel, stride, padding, input size).
TRANSPOSED = (("ce227 56->113", 64, 32, 3, 2, 0, 56), ("ce227 113->227", 32, 3, 3, 2, 0, 113),
              ("dcgan 16->32", 128, 64, 4, 2, 1, 16), ("dcgan 32->64", 64, 3, 4, 2, 1, 32))


def transposed_layers(batch: int, bf16: bool) -> list[dict]:
    """Forward + backward seconds of the decoders' transposed convolutions (channels_last input), as nn's
    ConvTranspose2d and as a convolution's backward-data kernel (FastConvTranspose2d, train.fast_kernels), in fp32
    and (where bf16 is native) under bf16 autocast."""
    from pretext.models.kernels import FastConvTranspose2d

    out = []
    for name, cin, cout, k, stride, pad, size in TRANSPOSED:
        torch.manual_seed(0)
        layer = FastConvTranspose2d(cin, cout, k, stride=stride, padding=pad)
        x = torch.randn(batch, cin, size, size).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        row = {"layer": name, "batch": batch}
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            for fast in (False, True):
                layer.fast = fast

                def run() -> None:
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        y = layer(x)
                    y.float().square().mean().backward()

                row[f"{precision}_{'fast' if fast else 'plain'}_s"] = _best_seconds(run, repeats=3)
        out.append(row)
    return out


def clustered(n: int, d: int, seed: int, clusters: int = 1000) -> np.ndarray:
    """L2-normalised float32 points around random centres: neighbours are meaningful, as in real features."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    x = centres[rng.integers(0, clusters, n)]
    x += rng.standard_normal((n, d), dtype=np.float32) * 0.7
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def exact_search(db_sizes: tuple[int, ...], dim: int, queries: int, k: int = 10) -> dict:
    """FAISS IndexFlatIP against scikit-learn brute-force cosine kNN: seconds, speed-up, agreement."""
    import faiss
    from sklearn.neighbors import NearestNeighbors

    out = {}
    for n in db_sizes:
        x = clustered(n, dim, seed=1)
        q = clustered(queries, dim, seed=2)
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        t0 = time.perf_counter()
        sims, idx = index.search(q, k)
        t_faiss = time.perf_counter() - t0
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine", n_jobs=-1).fit(x)
        t0 = time.perf_counter()
        dist, idx_sk = nn.kneighbors(q)
        t_sk = time.perf_counter() - t0
        same = idx == idx_sk
        # a disagreement is acceptable only between neighbours tied within float32 rounding
        ties = np.abs(np.sort(sims, axis=1)[:, ::-1] - (1 - dist)) < 1e-5
        out[str(n)] = {"database": n, "dim": dim, "queries": queries, "k": k, "faiss_s": t_faiss,
                       "sklearn_s": t_sk, "speedup": t_sk / t_faiss, "identical_rows": float(same.all(1).mean()),
                       "same_neighbours": bool(same.all() or ties[~same].all())}
        del index, nn, x
    return out


def approximate_search(n: int, dim: int, queries: int, k: int = 10, target_recall: float = 0.95) -> dict:
    """IVF-Flat (inner product) on `n` clustered vectors: the smallest nprobe reaching `target_recall`@k against
    exact search, and its speed-up."""
    import faiss

    x = clustered(n, dim, seed=3, clusters=max(10, n // 1000))
    q = clustered(queries, dim, seed=4, clusters=max(10, n // 1000))
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    t0 = time.perf_counter()
    _, truth = flat.search(q, k)
    t_exact = time.perf_counter() - t0
    del flat
    nlist = 2 ** round(np.log2(np.sqrt(n)))  # ~sqrt(N) lists: 1024 for a million
    t0 = time.perf_counter()
    ivf = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    train = x[np.random.default_rng(5).permutation(n)[: min(n, 50 * nlist)]]
    ivf.train(train)
    ivf.add(x)
    t_build = time.perf_counter() - t0
    sweep = []
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        if nprobe > nlist:
            break
        ivf.nprobe = nprobe
        t0 = time.perf_counter()
        _, found = ivf.search(q, k)
        t = time.perf_counter() - t0
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
        sweep.append({"nprobe": nprobe, "recall_at_10": recall, "seconds": t, "speedup": t_exact / t})
        if recall >= target_recall:
            break
    best = next((s for s in sweep if s["recall_at_10"] >= target_recall), sweep[-1])
    return {"database": n, "dim": dim, "queries": queries, "index": f"IVF{nlist},Flat", "build_s": t_build,
            "exact_s": t_exact, "sweep": sweep, "chosen": best}


# --- detection, segmentation, scoring -----------------------------------------------------------------------

def _images_for(paths: list[Path], n: int) -> list[np.ndarray]:
    from pretext.data.images import load_rgb

    return [np.asarray(load_rgb(p)) for p in paths[:n]]


def proposal_rates(paths: list[Path], n: int) -> dict:
    """Selective search ("fast", the suite's settings): seconds per image in this process and with every core."""
    from transfer.proposals import ProposalSettings, compute_proposals, selective_search

    settings = ProposalSettings()
    images = _images_for(paths, n)
    t0 = time.perf_counter()
    boxes = [len(selective_search(im, settings)) for im in images]
    single = (time.perf_counter() - t0) / len(images)
    workers = os.cpu_count() or 1
    many = paths[: max(n, 2 * workers)]
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        compute_proposals(many, [str(i) for i in range(len(many))], Path(cache), settings, workers=workers,
                          progress=False)
        parallel = (time.perf_counter() - t0) / len(many)
    return {"images": len(images), "mean_size": [float(np.mean([im.shape[1] for im in images])),
                                                 float(np.mean([im.shape[0] for im in images]))],
            "boxes_per_image": float(np.mean(boxes)), "seconds_per_image_1_process": single,
            "workers": workers, "seconds_per_image_all_cores": parallel}


def detection_inference(n: int, rois: int = 2000) -> dict:
    """The Fast R-CNN test pass of `transfer detect` (conv5 at shorter side 600, `rois` RoIs, box decoding,
    clipping, per-class NMS), per image."""
    from pretext.models import AlexNetEncoder, alexnet_spec
    from transfer.detect import DetTestConfig, FastRCNN, detect_image

    torch.manual_seed(0)
    model = FastRCNN(AlexNetEncoder(alexnet_spec("alexnet", None, 227)), 6, [4096, 4096], 20, 0.5).eval()
    h, w = 600, 800
    image = torch.randn(1, 3, h, w)
    xy = torch.rand(rois, 2) * torch.tensor([w - 64.0, h - 64.0])
    boxes = torch.cat([xy, (xy + 32 + torch.rand(rois, 2) * 200).clamp(max=torch.tensor([float(w), float(h)]))], 1)

    def run() -> None:
        with torch.inference_mode():
            for _ in range(n):
                detect_image(model, image, boxes, 1.0, (w, h), 20, DetTestConfig(), [0.1, 0.1, 0.2, 0.2])

    return {"image": [w, h], "rois": rois, "seconds_per_image": _best_seconds(run, repeats=2) / n}


def segmentation_inference(n: int) -> dict:
    """FCN-32s (AlexNet, 21 classes) forward on a 500 x 375 image, per image."""
    from pretext.models import AlexNetEncoder, alexnet_spec
    from transfer.segment import FCN

    torch.manual_seed(0)
    model = FCN(AlexNetEncoder(alexnet_spec("alexnet", None, 227)), [4096, 4096], 21, 0.5).eval()
    image = torch.randn(1, 3, 375, 500)

    def run() -> None:
        with torch.inference_mode():
            for _ in range(n):
                model(image).argmax(1)

    return {"image": [500, 375], "seconds_per_image": _best_seconds(run, repeats=2) / n}


def voc_scoring(n_images: int, seed: int = 0) -> dict:
    """VOC07 AP of a VOC-sized result set (20 classes, ~2.4 objects and 40 detections per image), seconds."""
    from transfer.detection_eval import ImageObjects, detection_metrics

    rng = np.random.default_rng(seed)
    classes = [f"class{i}" for i in range(20)]
    gt, per_class = {}, [{"image_ids": [], "scores": [], "boxes": []} for _ in classes]
    for i in range(n_images):
        m = int(rng.integers(1, 5))
        xy = rng.uniform(1, 300, (m, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (m, 2))], 1)
        labels = rng.integers(0, 20, m)
        gt[f"{i:06d}"] = ImageObjects(boxes, labels, rng.random(m) < 0.1)
        for _ in range(40):
            c = int(rng.integers(0, 20))
            j = int(rng.integers(0, m))
            box = boxes[j] + rng.normal(0, 15, 4) if labels[j] == c else np.concatenate([xy[0], xy[0] + 50])
            box = np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])
            per_class[c]["image_ids"].append(f"{i:06d}")
            per_class[c]["scores"].append(float(rng.random()))
            per_class[c]["boxes"].append(box)
    results = [{"image_ids": r["image_ids"], "scores": np.asarray(r["scores"]),
                "boxes": np.asarray(r["boxes"]).reshape(-1, 4)} for r in per_class]
    t0 = time.perf_counter()
    metrics = detection_metrics(gt, classes, results)
    return {"images": n_images, "detections": sum(len(r["scores"]) for r in results),
            "seconds": time.perf_counter() - t0, "map_voc07_11pt": metrics["map_voc07_11pt"]}


# --- does bf16 change results? ------------------------------------------------------------------------------

def precision_psnr(steps: int, work: Path) -> dict:
    """The demo pretraining (context encoder, central holes) in fp32 and in bf16 from the same seed; central-hole
    PSNR of each on the demo test split."""
    from pretext.eval_inpainting import evaluate

    out = {"steps": steps}
    for precision in ("fp32", "bf16"):
        run = work / f"demo_{precision}"
        argv = ["-m", "pretext.cli", "pretrain", "demo", f"train.max_steps={steps}", f"train.precision={precision}",
                "mask.kind=central", "train.progress=false", f"train.ckpt_every={steps}", "--out", str(run)]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            raise RuntimeError(f"demo pretraining in {precision} failed:\n{proc.stderr[-3000:]}")
        metrics = evaluate(run / "checkpoint.pt", None, mask="central", max_images=500)
        out[precision] = {"psnr_db": metrics["psnr"], "mean_l2": metrics["mean_l2"],
                          "pretrain_s": time.perf_counter() - t0}
    out["psnr_difference_db"] = out["bf16"]["psnr_db"] - out["fp32"]["psnr_db"]
    return out


# --- the run and its report ---------------------------------------------------------------------------------

def _demo_images() -> list[Path]:
    from pretext.data.demo import ensure_demo_data
    from pretext.engine.trainer import default_demo_dir

    root = default_demo_dir()
    ensure_demo_data(root)
    return sorted((root / "JPEGImages").glob("*.jpg"))


def run(sizes: Sizes, data: Path | None, work: Path, quick: bool = False) -> dict:
    """Every measurement; a dict ready for perf.json."""
    from pretext.config import load_config
    from pretext.data.sources import folder_images
    from pretext.engine.provenance import cpu_has_native_bf16

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    paths = folder_images(data) if data is not None else _demo_images()
    if not paths:
        raise ValueError(f"{data}: no images")
    result: dict = {"machine": machine(), "quick": quick, "sizes": dataclasses.asdict(sizes),
                    "data": str(data) if data is not None else "built-in demo data", "device": str(device),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    t_start = time.perf_counter()
    log.info("matmul peak")
    result["matmul_gflops_fp32"] = matmul_gflops(torch.float32, sizes.matmul_n, device)
    result["matmul_gflops_bf16"] = matmul_gflops(torch.bfloat16, sizes.matmul_n, device)
    peaks = {"fp32": result["matmul_gflops_fp32"], "bf16": result["matmul_gflops_bf16"]}
    result["steps"] = pretext_steps(sizes, peaks)
    log.info("the straightforward GAN step (benchmarks.peer_gan)")
    result["peer_gan"] = run_peer_child(sizes.step_batch or 64, sizes.steps, sizes.warmup, str(device))
    result["bottleneck_layers"] = bottleneck_layers(sizes.step_batch or 64)
    result["native_bf16"] = native_bf16(peaks)
    result["transposed_layers"] = transposed_layers(sizes.step_batch or 64, cpu_has_native_bf16())  # CPU layers
    log.info("profiles (torch.profiler) of the 227 px step in fp32 and bf16")
    result["profiles"] = {v: run_step_child(*step_overrides("ce227", v, sizes.profile_batch), 0, 0, False,
                                            profile=True) for v in ("fp32", "bf16")}
    log.info("input pipeline and masks")
    ce = load_config("ce_alexnet_paper")
    result["pipeline"] = pipeline(paths, ce.data.load_size, ce.data.fine_size, sizes.pipeline_images, ce.data.workers)
    consumed = max(result["steps"][f"ce227_{v}"]["images_per_s"] for v in ("fp32", "fp32_nchw", "bf16"))
    result["pipeline"]["training_consumes_images_per_s"] = consumed
    result["pipeline"]["headroom"] = result["pipeline"]["images_per_s_loader"] / consumed
    result["masks"] = mask_rates(ce.data.fine_size, 64, sizes.mask_repeats)
    log.info("features and search")
    result["features"] = feature_rate(sizes.feature_images, work, None if result["native_bf16"] else 4)
    log.info("fine-tuning steps (transfer classify)")
    result["finetune"] = finetune_rates(sizes.steps, sizes.warmup, sizes.step_batch, work)
    result["exact_search"] = exact_search(sizes.exact_db, sizes.exact_dim, sizes.queries)
    result["approximate_search"] = approximate_search(sizes.approx_db, sizes.approx_dim, sizes.queries)
    log.info("proposals, detection, segmentation, scoring")
    result["proposals"] = proposal_rates(paths, sizes.proposal_images)
    result["detection_inference"] = detection_inference(sizes.det_images)
    result["segmentation_inference"] = segmentation_inference(sizes.seg_images)
    result["voc_scoring"] = voc_scoring(sizes.eval_images)
    if sizes.compile_steps:
        try:
            result["compile"] = compile_rates(sizes.compile_steps, result["native_bf16"])
        except RuntimeError as exc:  # no C++ toolchain, an inductor failure: recorded, the rest of the run kept
            log.warning("train.compile measurement failed: %s", str(exc).splitlines()[-1] if str(exc) else exc)
            result["compile"] = {"error": str(exc)[-2000:]}
    if sizes.psnr_steps:
        log.info("bf16 vs fp32 demo pretraining (%d steps each)", sizes.psnr_steps)
        result["precision_psnr"] = precision_psnr(sizes.psnr_steps, work)
    result["targets"] = targets(result)
    result["wall_seconds"] = time.perf_counter() - t_start
    return result


def _best_fp32(steps: dict, name: str) -> dict:
    return max((steps[f"{name}_{v}"] for v in ("fp32", "fp32_nchw")), key=lambda e: e["images_per_s"])


def targets(r: dict) -> list[dict]:
    """Issue 21's targets, each with its measured value, whether it applies to this machine and whether it is met.
    Every ratio is within this run: against the plain path (the suite's own layers in eager fp32 NCHW) or against
    the straightforward port of the GAN step (benchmarks.peer_gan). The bf16 targets apply where bf16 is native
    (AVX512-BF16 / AMX CPUs, GPUs); elsewhere they are reported as not applicable."""
    s = r["steps"]
    gan_fp32, ce_fp32 = _best_fp32(s, "inpaint_gan"), _best_fp32(s, "ce227")
    gan_plain = s["inpaint_gan_plain_fp32"]["images_per_s"]
    peer = r["peer_gan"]["images_per_s"]
    native = r["native_bf16"]
    rows = [
        ("inpainting GAN step, bf16, vs the straightforward port (same run)", ">= 3x",
         s["inpaint_gan_bf16"]["images_per_s"] / peer, 3.0, native),
        ("inpainting GAN step, fp32, vs the straightforward port (same run)", ">= 1.6x",
         gan_fp32["images_per_s"] / peer, 1.6, True),
        ("inpainting GAN step, bf16, vs the plain path (same run)", ">= 3x",
         s["inpaint_gan_bf16"]["images_per_s"] / gan_plain, 3.0, native),
        ("inpainting GAN step, fp32, vs the plain path (same run)", ">= 1.6x",
         gan_fp32["images_per_s"] / gan_plain, 1.6, True),
        ("227 AlexNet context-encoder step, fp32, vs plain eager fp32 NCHW (same run)", ">= 1.8x",
         ce_fp32["speedup_vs_plain"], 1.8, True),
        ("227 AlexNet context-encoder step, bf16, vs plain eager fp32 NCHW (same run)", ">= 3x",
         s["ce227_bf16"]["speedup_vs_plain"], 3.0, native),
        ("64 px demo context-encoder step, bf16, vs plain eager fp32 NCHW (same run)", ">= 2.5x",
         s["demo_bf16"]["speedup_vs_plain"], 2.5, native),
        ("64 px classification fine-tuning step, bf16, vs fp32 channels_last (same run)", ">= 2x",
         r["finetune"]["classify_demo_bf16"]["speedup_vs_fp32"], 2.0, native),
        ("227 px classification fine-tuning step, bf16, vs fp32 channels_last (same run)", ">= 2x",
         r["finetune"]["classify227_bf16"]["speedup_vs_fp32"], 2.0, native),
        ("227 px pool5 feature extraction, bf16, vs fp32 (same run)", ">= 2x", r["features"]["bf16_speedup"], 2.0,
         native),
        ("input pipeline (default workers) vs what the fastest 227 step consumes", ">= 3x",
         r["pipeline"]["headroom"], 3.0, True),
    ]
    largest = max(r["exact_search"].values(), key=lambda e: e["database"])
    rows.append((f"FAISS exact vs scikit-learn brute force, {largest['database']:,} x {largest['dim']}, "
                 f"same neighbours: {largest['same_neighbours']}", ">= 2x",
                 largest["speedup"] if largest["same_neighbours"] else 0.0, 2.0, True))
    chosen = r["approximate_search"]["chosen"]
    rows.append((f"IVF vs exact, {r['approximate_search']['database']:,} vectors, recall@10 "
                 f"{chosen['recall_at_10']:.3f} at nprobe {chosen['nprobe']}", ">= 10x at recall@10 >= 0.95",
                 chosen["speedup"] if chosen["recall_at_10"] >= 0.95 else 0.0, 10.0, True))
    if "precision_psnr" in r:
        diff = abs(r["precision_psnr"]["psnr_difference_db"])
        rows.append(("|PSNR(bf16) - PSNR(fp32)|, demo pretraining, central holes (dB)", "<= 0.2 dB", diff, None,
                     True))
    out = []
    for name, target, value, need, applies in rows:
        met = value <= 0.2 if need is None else value >= need
        out.append({"target": name, "wanted": target, "measured": round(float(value), 3), "applies": bool(applies),
                    "met": bool(met) if applies else None})
    return out


def explanations(r: dict) -> list[str]:
    """Why a target is out of reach, from this run's own measurements (peaks, FLOPs, profiles)."""
    s, peak32, peak16 = r["steps"], r["matmul_gflops_fp32"], r["matmul_gflops_bf16"]
    out = []

    def ops(variant: str) -> str:
        prof = r.get("profiles", {}).get(variant)
        if not prof:
            return ""
        top = ", ".join(f"`{o['op']}` {100 * o['self_share']:.0f} %" for o in prof["top_ops"][:4])
        batch = r["sizes"]["profile_batch"]
        return f" torch.profiler of one {variant} step at batch {batch}: {top} of the self CPU time."

    if not r["native_bf16"]:
        out.append(f"**bf16**: this CPU has no bf16 instructions (ISA: {', '.join(r['machine'].get('isa', []))}); a "
                   f"bf16 matmul runs at {_f(peak16, 2)} GFLOP/s against {_f(peak32)} in fp32, so autocast makes "
                   f"every step slower, not faster (227 px step: {_f(s['ce227_bf16']['images_per_s'], 2)} images/s "
                   f"in bf16 against {_f(_best_fp32(s, 'ce227')['images_per_s'])} in fp32)." + ops("bf16")
                   + " The bf16 targets need AVX512-BF16/AMX or a GPU; the trainer warns when bf16 is asked for on "
                   "such a CPU.")
    ce_plain = s["ce227_plain_fp32"]
    need = 1.8 * ce_plain["fraction_of_peak"]
    if _best_fp32(s, "ce227")["speedup_vs_plain"] < 1.8:
        out.append(f"**227 px AlexNet step, fp32**: the plain step already computes {_f(ce_plain['gflops'])} GFLOP/s, "
                   f"{100 * ce_plain['fraction_of_peak']:.0f} % of this machine's fp32 matmul peak "
                   f"({_f(ce_plain['flops_per_image'] / 1e9, 2)} GFLOP per image, counted); 1.8x would need "
                   f"{100 * need:.0f} % of the peak. Its time is in the convolutions themselves (oneDNN, in either "
                   f"layout)." + ops("fp32") + " channels_last gives "
                   f"{_f(s['ce227_fp32']['speedup_vs_plain'], 2)}x here; fused Adam "
                   f"and the matrix-product path have little to remove from this network.")
    gan, b = _best_fp32(s, "inpaint_gan"), r["bottleneck_layers"]
    peer = r["peer_gan"]["images_per_s"] if "peer_gan" in r else None  # perf.json files before the port have none
    if peer is not None and gan["images_per_s"] < 1.6 * peer:
        out.append(f"**Inpainting GAN vs the straightforward port**: the port runs at {_f(peer)} images/s here, the "
                   f"suite's plain path at {_f(s['inpaint_gan_plain_fp32']['images_per_s'])} and its fast fp32 path "
                   f"at {_f(gan['images_per_s'])} ({_f(gan['speedup_vs_plain'], 2)}x the plain path). Most of the gain is the "
                   f"8192 <-> 4000 bottleneck: two convolutions whose kernel covers their whole 4x4 (or 1x1) input, "
                   f"forward + backward at batch 64 {_f(b['conv_s'], 2)} s as oneDNN convolutions, "
                   f"{_f(b['matmul_s'], 2)} s as matrix products ({_f(b['conv_s'] / b['matmul_s'], 1)}x).")
    largest = max(r["exact_search"].values(), key=lambda e: e["database"])
    if largest["speedup"] < 2:
        work = 2 * largest["queries"] * largest["database"] * largest["dim"] / 1e9
        out.append(f"**FAISS exact vs scikit-learn**: exact search of {largest['queries']} queries in "
                   f"{largest['database']:,} x {largest['dim']} vectors is one {_f(work, 0)} GFLOP matrix product "
                   f"for both: FAISS runs it at {_f(work / largest['faiss_s'])} GFLOP/s and scikit-learn's brute "
                   f"force at {_f(work / largest['sklearn_s'])}, against a {_f(peak32)} GFLOP/s matmul peak, so no "
                   f"exact method can be 2x faster on this machine; the gain has to come from an approximate index "
                   f"(next row).")
    if r["pipeline"]["headroom"] < 3:
        p = r["pipeline"]
        out.append(f"**Input pipeline**: {_f(p['images_per_s_per_worker'])} images/s per worker; with "
                   f"{p['workers']} workers on {r['machine']['cpu_count']} cores the loader gives "
                   f"{_f(p['images_per_s_loader'])} images/s, {_f(p['headroom'], 1)}x the step's need.")
    return out


def _f(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def report(r: dict, command: str) -> str:
    """perf.md: the machine, every figure, the targets."""
    m = r["machine"]
    lines = [f"# Performance (`{command}`)", "",
             f"{r['date']}; {m.get('cpu', '?')}, {m['cpu_count']} cores ({m['torch_threads']} torch threads), "
             f"{m.get('memory_gib', '?')} GiB, ISA {', '.join(m.get('isa', [])) or '?'}; device {r['device']}; "
             f"torch {m['torch']}, faiss {m.get('faiss', '?')}, scikit-learn {m.get('sklearn', '?')}, "
             f"OpenCV {m.get('cv2', '?')}. Images: {r['data']}. Whole run: {_f(r['wall_seconds'] / 60)} min."
             + (" **--quick: sizes shrunk for tests; not the targets' figures.**" if r["quick"] else ""), "",
             "## Targets", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in r["targets"]:
        met = "n/a here (bf16 emulated)" if t.get("applies") is False else "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {t['wanted']} | {t['measured']} | {met} |")
    why = explanations(r)
    if why:
        lines += ["", "Where a target is missed, why (from this run's figures):", ""] + [f"- {w}" for w in why]
    lines += ["", "## Yardstick: matmul peak", "",
              f"fp32 {_f(r['matmul_gflops_fp32'])} GFLOP/s, bf16 {_f(r['matmul_gflops_bf16'])} GFLOP/s "
              f"({r['sizes']['matmul_n']}^2 matrices, smaller where a dtype is slow; best of 5)"
              + ("." if r["native_bf16"] else "; **bf16 is emulated on this machine** (no AVX512-BF16 or AMX: bf16 "
                 "matmuls run far below fp32), so bf16 steps are timed once at batch 2 and bf16 cannot be faster "
                 "here."), "",
              "## Pretext training steps", "",
              "Median step of a fresh process (random inputs, masks and losses included, data loading excluded); "
              "GFLOP/s from the FLOPs `torch.utils.flop_counter` counts in one forward + backward; fraction of the "
              "matching precision's matmul peak; peak RSS of the process.", "",
              "| step | batch | px | precision | channels_last | fast kernels | images/s | x plain | GFLOP/image | "
              "GFLOP/s | of peak | peak RSS (MiB) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in r["steps"].items():
        lines.append(f"| {name} | {s['batch']} | {s['image_size']} | {s['precision']} | {s['channels_last']} | "
                     f"{s['fast_kernels']} | "
                     f"{_f(s['images_per_s'])} | {_f(s['speedup_vs_plain'], 2) if 'speedup_vs_plain' in s else '-'} | "
                     f"{_f(s['flops_per_image'] / 1e9, 2)} | {_f(s['gflops'])} | "
                     f"{'emulated' if s.get('emulated_bf16') else str(round(100 * s['fraction_of_peak'])) + ' %'} | "
                     f"{_f(s['peak_rss_mb'], 0)} |")
    if "peer_gan" in r:
        q = r["peer_gan"]
        lines.append(f"| straightforward GAN port (benchmarks/peer_gan.py) | {q['batch']} | 128 | fp32 | False | - | "
                     f"{_f(q['images_per_s'])} | - | - | - | - | - |")
    if "transposed_layers" in r:
        rows = r["transposed_layers"]
        precisions = [p for p in ("fp32", "bf16") if f"{p}_fast_s" in rows[0]]
        lines += ["", "## Transposed convolutions", "",
                  f"The decoders' up-convolutions, forward + backward at batch {rows[0]['batch']} (channels_last "
                  "input), as nn.ConvTranspose2d (plain) and as a convolution's backward-data kernel "
                  "(`train.fast_kernels`), milliseconds.", "",
                  "| layer | " + " | ".join(f"{p} plain | {p} fast | {p} speed-up" for p in precisions) + " |",
                  "|---|" + "---|---|---|" * len(precisions)]
        for t in rows:
            cells = [f"{1e3 * t[f'{p}_plain_s']:.1f} | {1e3 * t[f'{p}_fast_s']:.1f} | "
                     f"{t[f'{p}_plain_s'] / t[f'{p}_fast_s']:.1f}x" for p in precisions]
            lines.append(f"| {t['layer']} | " + " | ".join(cells) + " |")
    if "finetune" in r:
        lines += ["", "## Fine-tuning steps", "",
                  "`transfer classify`'s training step (FineTuner.train_step: all layers, SGD at the schedule's lr) "
                  "on random images, mean of the timed steps after the warm-up; data loading excluded.", "",
                  "| step | batch | px | precision | channels_last | images/s | x plain | bf16 x fp32 |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, f in r["finetune"].items():
            lines.append(f"| {name} | {f['batch']} | {f['image_size']} | {f['precision']} | {f['channels_last']} | "
                         f"{_f(f['images_per_s'])} | "
                         f"{_f(f['speedup_vs_plain'], 2) if 'speedup_vs_plain' in f else '-'} | "
                         f"{_f(f['speedup_vs_fp32'], 2) if 'speedup_vs_fp32' in f else '-'} |")
    p, mk = r["pipeline"], r["masks"]
    lines += ["", "## Input pipeline and masks", "",
              f"Decode, resize to {p['load_size']}, random {p['fine_size']} crop, flip ({p['images']} images): "
              f"{_f(p['images_per_s_per_worker'])} images/s in one process; {_f(p['images_per_s_loader'])} images/s "
              f"through the training DataLoader with the default {p['workers']} workers, {_f(p['headroom'], 1)}x the "
              f"{_f(p['training_consumes_images_per_s'])} images/s the fastest 227 px step consumes.", "",
              f"Masks at {mk['size']} px, batch {mk['batch']}: "
              + ", ".join(f"{k} {_f(v, 0)}/s" for k, v in mk["masks_per_s"].items()) + ".", "",
              "## Features and search", "",
              f"pool5 of the 227 px AlexNet as the probes extract it (channels_last, decoding excluded): "
              f"{_f(r['features']['images_per_s_fp32'])} images/s fp32, {_f(r['features']['images_per_s_bf16'])} "
              f"bf16.", "",
              "| database | dim | queries | FAISS flat (s) | scikit-learn brute (s) | speed-up | identical rows | "
              "same neighbours |", "|---|---|---|---|---|---|---|---|"]
    for e in r["exact_search"].values():
        lines.append(f"| {e['database']:,} | {e['dim']} | {e['queries']} | {e['faiss_s']:.3f} | {e['sklearn_s']:.3f} | "
                     f"{_f(e['speedup'])} | {100 * e['identical_rows']:.1f} % | {e['same_neighbours']} |")
    a = r["approximate_search"]
    lines += ["", f"Approximate: `{a['index']}` (inner product) on {a['database']:,} clustered synthetic vectors "
              f"of {a['dim']} dims ({a['queries']} queries; build {_f(a['build_s'])} s; exact search "
              f"{a['exact_s']:.3f} s):", "", "| nprobe | recall@10 | seconds | speed-up |", "|---|---|---|---|"]
    for s in a["sweep"]:
        lines.append(f"| {s['nprobe']} | {s['recall_at_10']:.3f} | {s['seconds']:.4f} | {_f(s['speedup'])} |")
    pr, d, sg, v = r["proposals"], r["detection_inference"], r["segmentation_inference"], r["voc_scoring"]
    lines += ["", "## Detection and segmentation", "",
              f"- Selective search (fast, {_f(pr['boxes_per_image'], 0)} boxes per image, images of "
              f"{_f(pr['mean_size'][0], 0)} x {_f(pr['mean_size'][1], 0)} px on average): "
              f"{pr['seconds_per_image_1_process']:.2f} s per image in one process, "
              f"{pr['seconds_per_image_all_cores']:.2f} s per image with {pr['workers']} processes.",
              f"- Fast R-CNN inference ({d['image'][0]} x {d['image'][1]}, {d['rois']} RoIs, decoding and NMS): "
              f"{d['seconds_per_image']:.2f} s per image.",
              f"- FCN-32s inference ({sg['image'][0]} x {sg['image'][1]}): {sg['seconds_per_image']:.2f} s per image.",
              f"- VOC07 detection scoring of {v['images']:,} images, {v['detections']:,} detections: "
              f"{v['seconds']:.2f} s."]
    if "compile" in r and "error" in r["compile"]:
        lines += ["", "## torch.compile (`train.compile=true`)", "",
                  "The measurement failed: " + r["compile"]["error"].strip().splitlines()[-1]]
    elif "compile" in r:
        c = r["compile"]
        even = (f"it pays for itself after {_f(c['break_even_steps'], 0)} steps"
                if c["break_even_steps"] is not None else "it does not pay for itself: the compiled step is not faster")
        lines += ["", "## torch.compile (`train.compile=true`)", "",
                  f"The demo step (64 px context encoder, batch {c['eager']['batch']}, {c['precision']}, channels_last): "
                  f"eager {_f(c['eager']['images_per_s'])} images/s, compiled (inductor) "
                  f"{_f(c['compiled']['images_per_s'])} images/s ({_f(c['speedup'], 2)}x), after "
                  f"{_f(c['compile_seconds'])} s of compiling; {even}. The suites leave it off unless a run is "
                  f"that long."]
    if "precision_psnr" in r:
        q = r["precision_psnr"]
        lines += ["", "## Does bf16 change results?", "",
                  f"The demo pretraining ({q['steps']} steps, central holes, same seed) in fp32: "
                  f"{q['fp32']['psnr_db']:.2f} dB central-hole PSNR ({_f(q['fp32']['pretrain_s'], 0)} s); in bf16: "
                  f"{q['bf16']['psnr_db']:.2f} dB ({_f(q['bf16']['pretrain_s'], 0)} s); difference "
                  f"{q['psnr_difference_db']:+.2f} dB."]
    return "\n".join(lines) + "\n"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results"), help="writes OUT/perf.json and OUT/perf.md")
    p.add_argument("--quick", action="store_true", help="small sizes: a minute or two, for tests")
    p.add_argument("--data", type=Path, default=None,
                   help="images for the input pipeline and proposals (default: the built-in demo data)")
    p.add_argument("--psnr-steps", type=int, default=None,
                   help=f"steps of each demo pretraining of the bf16-vs-fp32 check (default {Sizes.psnr_steps}; "
                        f"0 skips it; --quick skips it)")
    p.add_argument("--report-only", action="store_true", help="rebuild OUT/perf.md from OUT/perf.json; measure nothing")
    p.add_argument("--child-step", help=argparse.SUPPRESS)
    p.add_argument("--child-peer", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from pretext.cli import setup_logging

    args = build_parser(prog).parse_args(argv)
    if args.child_peer:
        from .peer_gan import measure

        spec = json.loads(args.child_peer)
        print(json.dumps(measure(spec["batch"], spec["steps"], spec["warmup"], spec.get("device", "cpu"))))
        return 0
    if args.child_step:
        spec = json.loads(args.child_step)
        if spec.get("profile"):
            print(json.dumps(profile_step(spec["preset"], spec["overrides"])))
        else:
            print(json.dumps(measure_step(spec["preset"], spec["overrides"], spec["steps"], spec["warmup"],
                                          spec["count_flops"])))
        return 0
    setup_logging()
    from pretext.engine.checkpoint import atomic_write_text

    if args.report_only:
        result = json.loads((args.out / "perf.json").read_text())
        atomic_write_text(args.out / "perf.md", report(result, result["command"]))
        return 0
    sizes = QUICK if args.quick else Sizes()
    if args.psnr_steps is not None:
        sizes = dataclasses.replace(sizes, psnr_steps=args.psnr_steps or None)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        result = run(sizes, args.data, Path(work), args.quick)
    command = " ".join(["cebench bench", *(argv if argv is not None else sys.argv[1:])])
    result["command"] = command
    atomic_write_text(args.out / "perf.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "perf.md", report(result, command))
    print(report(result, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
