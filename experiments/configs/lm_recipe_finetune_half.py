"""Full precision for 1,000 steps, then the ternary model fine-tuned from it for
1,000 more (Adam lr 2e-3, cosine; see ``lm_recipe_fp.py``)."""

import dataclasses
from pathlib import Path

from tern_jax.train import Config, load_config


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return dataclasses.replace(
        fp, name="lm_recipe_finetune_half", variants=("fp", "tern"), epochs=10, finetune_epochs=10)
