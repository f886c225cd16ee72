#!/usr/bin/env bash
# Controlled experiment behind results/README.md's demo-suite discussion: the demo suite's fine-tuning protocol
# (500 labelled trainval images, 200 steps of 16, 2 test crops; 3 seeds, which also draw the 500 images) on
# context encoders pretrained for 100 steps (the suite's ce_region) and 1,500 steps (`cebench pretrain demo
# --out runs/demo`), and on the data-dependent random start. Usage: bash benchmarks/demo_controlled.sh
set -euo pipefail
D=${DEMO:-$HOME/.cache/cebench/demo}
O=runs/controlled
CE100=$(ls -d results/demo/pretrain/ce_region-*/seed0 | head -1)
for seed in 0 1 2; do
  for pair in "ce1500:runs/demo" "ce100:$CE100" "random_dd:results/demo/pretrain/$(ls results/demo/pretrain | grep '^random-')/seed0"; do
    name=${pair%%:*}; enc=${pair#*:}
    [[ -f $O/${name}_seed$seed/metrics.json ]] && continue
    cebench transfer classify --encoder "$enc" --data "$D" --out $O/${name}_seed$seed --max-images 500,750 \
        train.max_steps=200 test.crops=2 train.seed=$seed train.progress=false
  done
done
python - <<'PY'
import json, statistics
from pathlib import Path
for name in ("ce1500", "ce100", "random_dd"):
    vals = [json.loads(p.read_text())["map_sklearn"] for p in sorted(Path("runs/controlled").glob(f"{name}_seed*/metrics.json"))]
    print(f"{name}: fine-tune mAP (sklearn) {statistics.mean(vals):.2f} +- {statistics.stdev(vals):.2f} over {len(vals)} seeds: "
          + ", ".join(f"{v:.2f}" for v in vals))
PY
