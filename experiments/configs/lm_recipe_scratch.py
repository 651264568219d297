"""Ternary from scratch: the paper's quantizer (``tern``) and absmean, 2,000 steps
each (see ``lm_recipe_fp.py`` for the model and the recipe)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_scratch", "model.variants": ("tern", "absmean")})
