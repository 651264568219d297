#!/usr/bin/env bash
# CPU proxy, round 2 (see experiments/results/README.md): equal budgets, threshold warm-up and
# levers on top of fine-tuning. Same proxy as run.sh (ResNet-8, 5,000 training images, the
# full test set); fine-tuning starts from round 1's fp models (run.sh's `methods` run for
# seed 0 and a `scratch_seed1` run, `run.sh` with --set seeds=1 --set model.variants=fp,tern).
#   usage: experiments/cpu_proxy/run2.sh CIFAR_DIR ROUND1_DIR OUT_DIR
set -euo pipefail
DATA=${1:?path to a folder holding cifar-10-batches-py}
P1=${2:?round 1 output folder (holding methods/ and scratch_seed1/)}
OUT=${3:-runs/proxy2}
COMMON=(--config experiments/configs/cifar10_resnet20_paper.py --set model.name=resnet8
        --set data.train_subset=5000 --set data.data_dir="$DATA" --set progress=false)
run() { local name=$1; shift; python -m tern_jax train "${COMMON[@]}" --set name="$name" \
          --workdir "$OUT/$name" "$@" 2>&1 | grep -v '^WARNING' | tee "$OUT/$name.log"; }
LONG=(--set schedule.epochs=23 --set schedule.milestones=9:0.1,14:0.1,18:0.5 --set seeds=0,1
      --set checkpointing.eval_every=23 --set checkpointing.every=23)
FT=(--set optimizer.learning_rate=0.01 --set schedule.name=cosine --set stages.init_variant=fp)
mkdir -p "$OUT"
# equal budget: 23 epochs from scratch (= 15 fp + 8 fine-tuning), ternary and fp
run scratch23 "${LONG[@]}" --set model.variants=tern
run fp23 "${LONG[@]}" --set model.variants=fp
# threshold warm-up from scratch: Δ ramps 0 -> full over the first 6 epochs (to the first lr step)
run warmup --set schedule.epochs=15 --set schedule.milestones=6:0.1,9:0.1,12:0.5 \
    --set checkpointing.eval_every=5 --set checkpointing.every=5 --set model.variants=tern \
    --set seeds=0,1 --set schedule.threshold_warmup=6
# fine-tuning with distillation; the fp parent continues alongside (fp given the same 8 epochs)
ft() { local name=$1 epochs=$2; shift 2
  run "${name}_s0" "${FT[@]}" --set schedule.epochs="$epochs" \
      --set checkpointing.eval_every="$epochs" --set checkpointing.every="$epochs" --set seeds=0 \
      --set stages.init_from="$P1/methods" "$@"
  run "${name}_s1" "${FT[@]}" --set schedule.epochs="$epochs" \
      --set checkpointing.eval_every="$epochs" --set checkpointing.every="$epochs" --set seeds=1 \
      --set stages.init_from="$P1/scratch_seed1" "$@"; }
ft ft_distill 8 --set model.variants=fp,tern --set stages.distill_weight=1.0
# fine-tuning length: 15 epochs (round 1 ran 8)
ft ft15 15 --set model.variants=tern
