"""Scale of a fine-tuning network's logits at the start, for each way of initialising it.

python -m benchmarks.init_scale ENCODER_RUN_DIR --data TRAIN_DIR --test-data TEST_DIR [--preset classify_cifar]
    [--images 64]

Builds `cebench transfer classify`'s network on the encoder (no training) with the paper's N(0, 0.01) head, with
Krahenbuhl et al.'s data-dependent head, with the data-dependent head and the encoder rescaled too, and with
the data-dependent head without the between-layer iterations, and prints the standard deviation and the largest
magnitude of the logits on the preset's centre views of a fixed set of training images (the ones the
data-dependent start is computed on). A start whose logits are far from unit scale begins with a large loss.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

VARIANTS = {"N(0, 0.01) head": ["model.init=gaussian", "model.rescale_encoder=false"],
            "data-dependent head": ["model.init=data_dependent", "model.rescale_encoder=false"],
            "data-dependent head + encoder rescaled": ["model.init=data_dependent", "model.rescale_encoder=true"],
            "data-dependent head, within-layer only": ["model.init=data_dependent", "model.rescale_encoder=false",
                                                       "model.init_iterations=0"]}


def logit_scales(encoder: Path, data: Path, test: Path, preset: str, images: int) -> dict[str, tuple[float, float]]:
    """variant -> (std, max |logit|) at initialisation."""
    from pretext.engine.distributed import init_distributed, shutdown
    from transfer.classify import ClassifyConfig, FineTuner, open_inputs

    out = {}
    for name, extra in VARIANTS.items():
        cfg = ClassifyConfig.load(preset, ["train.max_steps=0", "train.progress=false", f"model.init_images={images}",
                                           *extra])
        run = Path(tempfile.mkdtemp(prefix="init_scale_"))
        try:
            args = argparse.Namespace(encoder=encoder, data=data, test_data=test, train_split="trainval",
                                      test_split="test", classes=None, max_images=(max(images, 2), 2), out=run,
                                      weights=None)
            env = init_distributed("cpu", 60)
            try:
                tuner = FineTuner(cfg, open_inputs(args, 0), env)
                tuner.model.eval()
                with torch.no_grad():
                    logits = tuner.model(tuner._init_batch()[0]).float()  # centre views, normalised
            finally:
                shutdown(env)
            out[name] = (float(logits.std()), float(logits.abs().max()))
        finally:
            shutil.rmtree(run, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print a Markdown table of the logit scales."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("encoder", type=Path)
    p.add_argument("--data", type=Path, required=True, help="labelled training images (ImageFolder or VOC root)")
    p.add_argument("--test-data", type=Path, required=True, help="another labelled set (not used; the command needs one)")
    p.add_argument("--preset", default="classify_cifar")
    p.add_argument("--images", type=int, default=64)
    args = p.parse_args(argv)
    print("| start | logit std | max abs logit |\n| --- | --- | --- |")
    for name, (std, peak) in logit_scales(args.encoder, args.data, args.test_data, args.preset, args.images).items():
        print(f"| {name} | {std:.3f} | {peak:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
