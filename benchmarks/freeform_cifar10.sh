#!/usr/bin/env bash
# Both inpainting models on CIFAR-10 at 32 px (results/README.md, "Free-form inpainting"): the context encoder's
# DCGAN-style model with whole-image output and the free-form model (gated convolutions, contextual attention,
# SN-PatchGAN), each pretrained with `cebench pretrain` for the same number of images (STEPS steps of 64) on the
# same mixed holes (central / procedural region / brush strokes), then scored with `cebench eval-inpainting` on
# central, region and free-form holes of a fixed 1,000-image subset of the test set (the same holes for both).
# Usage: bash benchmarks/freeform_cifar10.sh [CIFAR10_ROOT] [OUT] [RESULTS]   (ROOT holds train/ and test/
# ImageFolders; RESULTS gets summary.{md,json}, pretraining.{md,json} and the free-form grids; a re-run reuses finished
# pretrainings and scores them again).
set -euo pipefail
ROOT=${1:-data/cifar10}
OUT=${2:-runs/freeform_cifar10}
RESULTS=${3:-$OUT/results}
STEPS=${STEPS:-400}
COMMON=(data.root="$ROOT/train" data.load_size=32 data.fine_size=32 mask.kind=mixed mask.region_bank=null
        mask.overlap=2 train.batch_size=64 train.max_steps=$STEPS train.ckpt_every=200 train.sample_every=200
        train.log_every=20 train.progress=false)
[[ -f $OUT/ce/encoder.json ]] || cebench pretrain demo_inpaint --out "$OUT/ce" "${COMMON[@]}" \
    model.output=full model.widths=[64,128,256] model.bottleneck=512 model.disc_widths=[64,128]
[[ -f $OUT/gated/encoder.json ]] || cebench pretrain demo_gated --out "$OUT/gated" "${COMMON[@]}" \
    model.dilations=[2,4]
dirs=()
for model in ce gated; do
  for mask in central region freeform; do
    cebench eval-inpainting --checkpoint "$OUT/$model" --images "$ROOT/test" --mask $mask --max-images 1000 \
        --overlap 2 --region-bank none --out "$OUT/eval/${model}_$mask"
    dirs+=("$OUT/eval/${model}_$mask")
  done
  cebench inpaint --checkpoint "$OUT/$model" --images "$ROOT/test" --mask freeform --max-images 8 \
      --region-bank none --out "$OUT/show/$model"
done
mkdir -p "$RESULTS"
python -m benchmarks.transfer_summary "${dirs[@]}" --out "$RESULTS/summary"
python -m benchmarks.pretrain_summary "$OUT/ce" "$OUT/gated" --out "$RESULTS/pretraining"
cp "$OUT/show/ce/grid.png" "$RESULTS/freeform_ce.png"
cp "$OUT/show/gated/grid.png" "$RESULTS/freeform_gated.png"
cp "$OUT/show/gated/attention.png" "$RESULTS/freeform_gated_attention.png"
