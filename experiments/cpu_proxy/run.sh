#!/usr/bin/env bash
# CPU proxy ablation for the CIFAR-10 gap (issue: reproduce and beat the paper's table).
# ResNet-8 (depth 6n+2, n=1) on a 5,000-image subset of the CIFAR-10 training set, the full
# 10,000-image test set, 15 epochs of the paper's recipe with the milestones scaled from 200
# epochs (80/120/160 -> 6/9/12), one seed. Every lever is one change against the paper's
# recipe; models with the same seed see the same batches, so differences are the lever's.
#   usage: experiments/cpu_proxy/run.sh CIFAR_DIR OUT_DIR
set -euo pipefail
DATA=${1:?path to a folder holding cifar-10-batches-py}
OUT=${2:-runs/cpu_proxy}
CONFIG=experiments/configs/cifar10_resnet20_paper.py
COMMON=(--config "$CONFIG" --set model.name=resnet8 --set data.train_subset=5000
        --set schedule.epochs=15 --set schedule.milestones=6:0.1,9:0.1,12:0.5 --set seeds=0
        --set checkpointing.eval_every=5 --set checkpointing.every=5 --set data.data_dir="$DATA"
        --set progress=false)
run() { local name=$1; shift; python -m tern_jax train "${COMMON[@]}" --set name="$name" \
          --workdir "$OUT/$name" "$@" 2>&1 | grep -v '^WARNING' | tee "$OUT/$name.log"; }
mkdir -p "$OUT"
# A: the quantizers, from scratch (paper = tern; per-channel; TWN; BitNet absmean)
run methods --set model.variants=fp,tern,tern_pc,twn,absmean
# B: distillation from the full-precision model trained alongside
run distill --set model.variants=fp,tern --set stages.distill_weight=1.0
# C: cosine decay instead of the step schedule
run cosine --set model.variants=fp,tern --set schedule.name=cosine
# D: fine-tuning from the full-precision model of run A (8 epochs, lr 0.01, cosine)
run finetune --set model.variants=tern,tern_pc --set stages.init_from="$OUT/methods" \
    --set stages.init_variant=fp --set schedule.epochs=8 --set optimizer.learning_rate=0.01 \
    --set schedule.name=cosine --set checkpointing.eval_every=4
