#!/usr/bin/env bash
# Every transfer evaluation of results/transfer_demo.md and results/transfer_cifar10.md, for the encoders
# in runs/ (see results/README.md for the pretraining commands). Outputs go to runs/transfer/NAME; a NAME
# whose metrics.json exists is skipped, so the script resumes. Usage: bash benchmarks/transfer_runs.sh
set -euo pipefail
D=${DEMO:-$HOME/.cache/cebench/demo}
C=${CIFAR:-data/cifar10}
O=runs/transfer
mkdir -p "$O"

run() {  # run NAME COMMAND...: skip when NAME is done
  local name=$1; shift
  if [[ -f "$O/$name/metrics.json" ]]; then echo "done: $name"; return; fi
  echo "+ $*"; "$@" --out "$O/$name"
}

for enc in demo random random_dd; do   # demo data: VOC layout, 2,250 trainval -> 750 test
  run demo_${enc}_finetune cebench transfer classify --encoder runs/$enc --data "$D" train.progress=false
  run demo_${enc}_knn cebench probe knn --encoder runs/$enc --train "$D" --test "$D" --n-jobs 2 --device cpu
  run demo_${enc}_svm cebench probe linear --encoder runs/$enc --train "$D" --test "$D" --n-jobs 2 --device cpu
  run demo_${enc}_lowshot cebench probe svm --encoder runs/$enc --train "$D" --test "$D" --low-shot 1,4,16 \
      --low-shot-samples 3 --n-jobs 2 --device cpu
done
for enc in demo random random_dd; do
  run demo_${enc}_retrieve cebench retrieve --encoder runs/$enc --database "$D" --queries "$D" --k 10 --device cpu
done
run demo_nn_hog cebench nn-inpaint --database "$D" --images "$D" --features hog --size 64 --load-size 72
run demo_demo_nn_inpaint cebench nn-inpaint --database "$D" --images "$D" --features encoder --encoder runs/demo \
    --load-size 72

for enc in cifar_ce cifar_random cifar_random_dd; do   # CIFAR-10: 5,000 train (10 % of the labels) -> 1,000 test
  run ${enc}_finetune cebench transfer classify --preset classify_cifar --encoder runs/$enc --data "$C/train" \
      --test-data "$C/test" --max-images 5000,1000 train.progress=false
  run ${enc}_knn cebench probe knn --encoder runs/$enc --train "$C/train" --test "$C/test" --max-images 5000,1000 \
      --n-jobs 2 --device cpu
  run ${enc}_linear cebench probe linear --encoder runs/$enc --train "$C/train" --test "$C/test" \
      --max-images 5000,1000 --n-jobs 2 --device cpu
  for mask in none central; do
    run ${enc}_retrieve_$mask cebench retrieve --encoder runs/$enc --database "$C/train" --queries "$C/test" \
        --max-images 5000,500 --k 10 --mask $mask --device cpu
  done
done
for idx in ivf hnsw; do
  run cifar_ce_retrieve_$idx cebench retrieve --encoder runs/cifar_ce --database "$C/train" --queries "$C/test" \
      --max-images 5000,500 --k 10 --index $idx --device cpu
done

T=$O
python -m benchmarks.transfer_summary $T/demo_demo_finetune $T/demo_random_finetune $T/demo_random_dd_finetune \
    $T/demo_demo_svm $T/demo_random_svm $T/demo_random_dd_svm $T/demo_demo_knn $T/demo_random_knn $T/demo_random_dd_knn \
    $T/demo_demo_lowshot $T/demo_random_lowshot $T/demo_random_dd_lowshot $T/demo_demo_retrieve $T/demo_random_retrieve \
    $T/demo_random_dd_retrieve $T/demo_nn_hog $T/demo_demo_nn_inpaint \
    --out results/transfer_demo
python -m benchmarks.transfer_summary $T/cifar_ce_finetune $T/cifar_random_finetune $T/cifar_random_dd_finetune \
    $T/cifar_ce_linear $T/cifar_random_linear $T/cifar_random_dd_linear $T/cifar_ce_knn $T/cifar_random_knn \
    $T/cifar_random_dd_knn $T/cifar_ce_retrieve_none $T/cifar_random_retrieve_none $T/cifar_random_dd_retrieve_none \
    $T/cifar_ce_retrieve_central $T/cifar_random_retrieve_central $T/cifar_random_dd_retrieve_central \
    $T/cifar_ce_retrieve_ivf $T/cifar_ce_retrieve_hnsw --out results/transfer_cifar10
