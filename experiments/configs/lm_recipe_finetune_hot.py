"""``lm_recipe_finetune_half`` with the ternary fine-tuning at the full-precision stage's peak
rate, 5e-3 instead of 2e-3 (small ternary models prefer a high rate; see
``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    half = load_config(str(Path(__file__).with_name("lm_recipe_finetune_half.py")))
    return override(half, {"name": "lm_recipe_finetune_hot",
                           "stages.finetune_learning_rate": 5e-3})
