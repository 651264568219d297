"""``lm_recipe_finetune_half`` with distillation: while the ternary model fine-tunes, the fp
model trains on beside it as its teacher (per-token KL of the next-byte distributions at
temperature 2, weight 1; see ``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_distill", "model.variants": ("fp", "tern"),
                         "schedule.epochs": 10, "stages.finetune_epochs": 10,
                         "stages.distill_weight": 1.0, "stages.distill_temperature": 2.0})
