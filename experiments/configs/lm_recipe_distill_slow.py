"""Ternary from scratch at Adam lr 2e-3, distilled from the full-precision model that trains
beside it in the same program (per-token KL of the next-byte distributions at temperature 2,
weight 1; see ``lm_recipe_fp.py``)."""

import dataclasses
from pathlib import Path

from tern_jax.train import Config, load_config


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return dataclasses.replace(fp, name="lm_recipe_distill_slow", variants=("fp", "tern"),
                               learning_rate=2e-3, distill_weight=1.0, distill_temperature=2.0)
