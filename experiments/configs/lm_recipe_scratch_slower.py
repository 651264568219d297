"""Ternary from scratch (the paper's quantizer) at Adam lr 1e-3 (see ``lm_recipe_fp.py``,
``lm_recipe_scratch_slow.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_scratch_slower", "model.variants": ("tern",),
                         "optimizer.learning_rate": 1e-3})
