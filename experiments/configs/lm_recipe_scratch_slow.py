"""Ternary from scratch (the paper's quantizer) at the fine-tuning arms' rate: Adam lr 2e-3
instead of 5e-3, to tell the full-precision start from the lower rate (see
``lm_recipe_fp.py``)."""

import dataclasses
from pathlib import Path

from tern_jax.train import Config, load_config


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return dataclasses.replace(fp, name="lm_recipe_scratch_slow", variants=("tern",),
                               learning_rate=2e-3)
