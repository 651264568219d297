#!/bin/sh
# The language-model recipe study: every arm in turn, then the table and the curves.
#
#     nohup sh experiments/lm_recipe_study.sh > runs/lm_recipe.log 2>&1 &
#
# Resumable: each arm trains with --resume, so a finished arm (or a finished stage of a
# two-stage arm) is not trained again and an interrupted one continues from its last
# checkpoint; run the same command again after an interruption. ROOT (default runs/lm_recipe)
# holds one run folder per arm; OUT (default experiments/results/lm_recipes) gets the table.
set -e
root=${ROOT:-runs/lm_recipe}
out=${OUT:-experiments/results/lm_recipes}
configs=experiments/configs
mkdir -p "$root"

arm() {  # arm NAME CONFIG [--set ...]
    name=$1 config=$2
    shift 2
    echo "=== $name $(date +%T)"
    tern-jax train --config "$configs/lm_recipe_$config.py" --workdir "$root/$name" --resume "$@"
}

# the recipes at d_model 128 (transformer_llama, model.kwargs d_model 128), 2,000 steps per model
for recipe in fp scratch finetune_half finetune_late distill bitnet wide finetune_early \
        finetune_hot finetune_t2 finetune_earliest finetune_absmean finetune_100 scratch_slow \
        fp_slow scratch_slower fp_slower finetune_slow distill_slow t2_slow; do
    arm "$recipe" "$recipe"
done

# the gap against width: full precision and ternary from scratch at lr 2e-3, at d_model 64
# and 256 (ternary from scratch at lr 5e-3 and d_model 256 is the `wide` arm above);
# transformer_llama's own width is 256: no kwargs
quarter="--set model.kwargs.d_model=64"
double="--set model.kwargs={}"
arm fp_slow_64 fp_slow $quarter
arm scratch_slow_64 scratch_slow $quarter
arm fp_slow_256 fp_slow $double
arm scratch_slow_256 scratch_slow $double

echo "=== collect $(date +%T)"
python experiments/lm_recipes_collect.py "$root" --out "$out"
echo "=== done $(date +%T)"
