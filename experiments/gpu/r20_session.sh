#!/usr/bin/env bash
# ResNet-20, both rows of the CIFAR-10 table in one device call (at most BUDGET seconds, 560 by
# default): the paper's recipe from scratch (fp + ternary, 2 seeds, 200 epochs, one program),
# then the default recipe's second stage, the ternary models fine-tuned from that run's fp
# models (80 epochs). Results under $OUT/paper and $OUT/finetune (see cifar_row.sh); extra
# arguments (--set ...) go to both runs. A part that overruns resumes from
# experiments/gpu/carry/<config>.tar on the next call; a finished part is not rerun.
set -uo pipefail
OUT=${OUT:-runs/gpu}
BUDGET=${BUDGET:-560}
WORK_ROOT=${WORK_ROOT:-/tmp}  # the two runs' folders: $WORK_ROOT/r20_paper, r20_finetune
ROW=experiments/gpu/cifar_row.sh
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
OUT=$OUT/paper WORK=$WORK_ROOT/r20_paper BUDGET=$(left) \
  bash $ROW experiments/configs/cifar10_resnet20_paper.py "$@"
if [ -f "$WORK_ROOT/r20_paper/results.json" ] && [ "$(left)" -gt 30 ]; then
  OUT=$OUT/finetune WORK=$WORK_ROOT/r20_finetune BUDGET=$(left) \
    bash $ROW experiments/configs/cifar10_resnet20_finetune.py \
      --set stages.init_from="$WORK_ROOT/r20_paper" "$@"
else
  echo "the paper-recipe run did not finish inside the budget: fine-tuning left for the next call"
fi
echo "session seconds: $(( $(date +%s) - start ))"
