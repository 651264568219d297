"""Ternary from scratch at twice the width: ``transformer_llama`` (d_model 256, 1.3M
parameters, 3.6x the fp arm's 0.36M); at about 2 bits a ternary weight against 16 bits, it
stores fewer bytes than the fp arm: the equal-bytes view. 2,000 steps (see
``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_wide", "model.kwargs": {},
                         "model.variants": ("tern",)})
