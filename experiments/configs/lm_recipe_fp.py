"""The language-model recipe study (fp arm): which recipe brings a ternary transformer closest
to its own full precision at equal total training steps? Every ``lm_recipe_*`` config is this
one with a few fields changed; each arm trains 2,000 optimizer steps in all.

``transformer_llama`` at d_model 128 (``model.kwargs``; 2 pre-norm blocks, 4 query / 2
key-value heads, a SwiGLU MLP of width 256: 0.36M parameters, a 128-byte context) on the Python
standard library's sources: Adam lr 5e-3 without weight decay (the study's starting point,
after the literature's advice that small ternary models prefer a high rate and no decay; the
study found 2e-3 better for both fp and ternary), a one-epoch linear warm-up and cosine decay,
batch 16 windows of 128 bytes, 20 "epochs" of 100 steps (2,000 steps, 4.1M training bytes),
seeds 0 and 1. Validation bits per byte on 256 windows (32,768 bytes) after every epoch; a
checkpoint every 2 epochs.

The arms (one config each, same 2,000 steps per model):

* ``lm_recipe_fp``: full precision, 2,000 steps; ``lm_recipe_fp_slow`` / ``_fp_slower``: at
  lr 2e-3 / 1e-3;
* ``lm_recipe_scratch``: ternary from scratch, the paper's quantizer (``tern``) and absmean;
  ``lm_recipe_scratch_slow`` / ``_scratch_slower``: ``tern`` at lr 2e-3 / 1e-3;
* ``lm_recipe_finetune_{100,earliest,early,half,late}``: full precision for 100 / 200 / 500 /
  1,000 / 1,500 steps, then ternary fine-tuning (lr 2e-3) for the rest
  (``stages.finetune_epochs``);
  ``_finetune_hot``: the 1,000-step split fine-tuning at 5e-3; ``_finetune_absmean``: the
  500-step split with absmean; ``_finetune_t2``: the 1,000-step split with t_ex = 2;
  ``_finetune_slow``: the 1,000-step split with both stages at 2e-3;
* ``lm_recipe_distill``: ``lm_recipe_finetune_half`` with the fp model, training on, as the
  teacher of the fine-tuned ternary model (per-token KL of the next-byte distributions);
  ``lm_recipe_distill_slow``: ternary from scratch at 2e-3 distilled from the fp model
  training beside it;
* ``lm_recipe_bitnet``: ternary from scratch with BitNet b1.58's two-stage learning rate and
  weight decay (AdamW, decay 0.1 then 0: :mod:`tern_jax.train.optim`);
* ``lm_recipe_t2_slow``: ternary from scratch at 2e-3 with t_ex = 2;
* ``lm_recipe_wide``: ternary from scratch at twice the width (``transformer_llama``, d_model
  256, 1.3M parameters), which still stores fewer bytes than the fp arm at 16 bits a weight.

The widths 64 and 256 run ``lm_recipe_fp_slow`` and ``lm_recipe_scratch_slow`` with ``--set
model.kwargs.d_model=...``; ``experiments/lm_recipe_study.sh`` runs every arm, resumably.

How to run the whole study in the background, resumably: ``experiments/README.md``.
"""

from tern_jax.train import Config


def get_config() -> Config:
    return Config(
        name="lm_recipe_fp", seeds=(0, 1),
        model={"name": "transformer_llama", "kwargs": {"d_model": 128}, "variants": ("fp",)},
        data={"dataset": "text", "steps_per_epoch": 100, "batch_size": 16, "seq_len": 128,
              "augment": False, "test_subset": 256, "eval_batch_size": 128},
        optimizer={"name": "adam", "learning_rate": 5e-3, "weight_decay": 0.0},
        schedule={"epochs": 20, "name": "cosine", "warmup_epochs": 1},
        checkpointing={"every": 2},
        stages={"finetune_learning_rate": 2e-3},
    )
