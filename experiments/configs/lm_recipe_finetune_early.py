"""Full precision for 500 steps, then the ternary model fine-tuned from it for the other
1,500 (Adam lr 2e-3, cosine; see ``lm_recipe_fp.py``)."""

import dataclasses
from pathlib import Path

from tern_jax.train import Config, load_config


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return dataclasses.replace(
        fp, name="lm_recipe_finetune_early", variants=("fp", "tern"), epochs=5,
        finetune_epochs=15)
