"""Ternary from scratch (the paper's quantizer) at the fine-tuning arms' rate: Adam lr 2e-3
instead of 5e-3, to tell the full-precision start from the lower rate (see
``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_scratch_slow", "model.variants": ("tern",),
                         "optimizer.learning_rate": 2e-3})
