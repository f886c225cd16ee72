#!/usr/bin/env bash
# Controlled experiment beside the cifar10 suite (results/cifar10): on the suite's own encoders (ce_region and
# random, seeds 0-2) and its protocol (5,000 labelled training images drawn by the seed -> 1,000 test images),
# vary one thing at a time:
#   A. fine-tuning with Krahenbuhl et al.'s rescaling (data-dependent fc6-fc8, the pretrained encoder rescaled
#      too), at lr 0.001 (at the suite's lr 0.01 it did not train for any method);
#   B. the probe layer of the logistic-regression probe: conv3, conv4, conv5 (the suite probes pool5).
# Outputs go to runs/controlled_cifar10/NAME (a NAME with a metrics.json is skipped, so the script resumes);
# the summary is written to results/cifar10/controlled.md. Usage: bash benchmarks/cifar10_controlled.sh
# (SEEDS="0" runs one seed: ~20 minutes alone on 2 cores; the default runs seeds 0-2.)
set -euo pipefail
R=${RESULTS:-results/cifar10}
C=${CIFAR:-data/cifar10}
O=runs/controlled_cifar10
SEEDS=${SEEDS:-0 1 2}
mkdir -p "$O"
enc() { ls -d "$R"/pretrain/$1-*/seed$2 | head -1; }

for seed in $SEEDS; do
  for p in ce_region random; do
    e=$(enc $p $seed)
    n=${p}_rescaled_seed$seed
    [[ -f $O/$n/metrics.json ]] || cebench transfer classify --preset classify_cifar --encoder "$e" --data "$C/train" \
        --test-data "$C/test" --max-images 5000,1000 --out "$O/$n" train.max_steps=500 test.crops=5 optim.lr=0.001 \
        model.init=data_dependent model.rescale_encoder=true train.seed=$seed train.progress=false
    for layer in conv3 conv4 conv5; do
      n=${p}_linear_${layer}_seed$seed
      [[ -f $O/$n/metrics.json ]] || cebench probe linear --encoder "$e" --layer $layer --train "$C/train" \
          --test "$C/test" --max-images 5000,1000 --seed $seed --n-jobs 2 --device cpu --out "$O/$n"
    done
  done
done

python - "$R" "$O" $SEEDS <<'PY'
import json, statistics, sys
from pathlib import Path

results, runs, seeds = Path(sys.argv[1]), Path(sys.argv[2]), [int(s) for s in sys.argv[3:]]

def stat(values):
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"

def cells(p, task):
    return [json.loads((results / "cells" / f"{p}__{task}__seed{s}.json").read_text())["headline"]["value"] for s in seeds]

def runs_of(name):
    return [json.loads((runs / f"{name}_seed{s}" / "metrics.json").read_text())["top1"] for s in seeds]

lines = ["| pretraining | fine-tune (suite) | fine-tune, rescaled (Krahenbuhl), lr 0.001 | linear conv3 | "
         "linear conv4 | linear conv5 | linear pool5 (suite) |", "|---|---|---|---|---|---|---|"]
for p in ("ce_region", "random"):
    lines.append(f"| {p} | {stat(cells(p, 'classify'))} | {stat(runs_of(p + '_rescaled'))} | "
                 + " | ".join(stat(runs_of(f"{p}_linear_{layer}")) for layer in ("conv3", "conv4", "conv5"))
                 + f" | {stat(cells(p, 'linear'))} |")
text = (f"CIFAR-10 top-1 (%), mean ± std over seeds {', '.join(map(str, seeds))} (pretraining and evaluation seed); "
        "5,000 training images "
        "(10 % of the labels), 1,000 test images. Command: `SEEDS=\"" + " ".join(map(str, seeds))
        + "\" bash benchmarks/cifar10_controlled.sh`.\n\n"
        + "\n".join(lines) + "\n")
(results / "controlled.md").write_text(text)
print(text)
PY
