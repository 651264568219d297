#!/usr/bin/env bash
# One CIFAR-10 table row (all variants x seeds of a config, vmapped in ONE program) on one GPU,
# sized for a single 10-minute device call. Writes under $OUT: device.txt, train.log, run.tar
# (config, metrics.jsonl, results.json, checkpoints) and results.json.
#
#   bash experiments/gpu/cifar_row.sh CONFIG [--set field=value ...]
#
# A run that does not finish inside BUDGET seconds (default 540) stops cleanly at its last
# checkpoint (every 20 epochs in the CIFAR recipe); copy $OUT/run.tar to
# experiments/gpu/carry/CONFIG_NAME.tar (git-ignored, e.g. carry/cifar10_resnet20.tar; pass
# the folder with carry) and call again to resume.
set -uo pipefail
CONFIG=${1:-experiments/configs/cifar10_resnet20.py}
shift || true
OUT=${OUT:-runs/gpu}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
DATA=${DATA:-/tmp/cifar}
# the device machine's copy of the data set ships a script that writes cifar-10-batches-py
MAKE_BATCHES=${MAKE_BATCHES:-../shared/data/cifar10/make_batches.py}
if [ ! -d "$DATA/cifar-10-batches-py" ]; then
  python3 "$MAKE_BATCHES" "$DATA" > /dev/null || exit 1
fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo cpu; } \
  | tee "$OUT/device.txt"
# a finished run to fine-tune from: carry its run.tar as experiments/gpu/carry/init.tar and
# pass --set stages.init_from=/tmp/tern_jax_init
if [ -f experiments/gpu/carry/init.tar ]; then
  mkdir -p /tmp/tern_jax_init && tar xf experiments/gpu/carry/init.tar -C /tmp/tern_jax_init
fi
WORK=${WORK:-/tmp/tern_jax_run}
CARRY=${CARRY:-experiments/gpu/carry/$(basename "$CONFIG" .py).tar}
RESUME=()
if [ -f "$CARRY" ]; then
  mkdir -p "$WORK" && tar xf "$CARRY" -C "$WORK" && RESUME=(--resume)
  echo "resuming from $CARRY"
fi
start=$(date +%s)
timeout --signal=INT "$BUDGET" python -m tern_jax train --config "$CONFIG" --workdir "$WORK" \
  --set data.data_dir="$DATA" --set progress=false "$@" "${RESUME[@]}" 2>&1 \
  | grep -v '^WARNING' | tee "$OUT/train.log"
status=${PIPESTATUS[0]}
echo "wall seconds: $(( $(date +%s) - start )), exit status $status" | tee -a "$OUT/train.log"
(cd "$WORK" && tar cf "$OUT/run.tar" --exclude='*.tmp' .) || true
[ -f "$WORK/results.json" ] && cp "$WORK/results.json" "$OUT/results.json"
exit 0
