"""Ternary from scratch with BitNet b1.58's two-stage schedules: AdamW, the rate cosine-decaying
from 5e-3 and dropping to a third at step 1,000, weight decay 0.1 cosine-decaying to 0 by
step 1,000 (:mod:`tern_jax.train.optim`); 2,000 steps (see ``lm_recipe_fp.py``)."""

import dataclasses
from pathlib import Path

from tern_jax.train import Config, load_config


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return dataclasses.replace(
        fp, name="lm_recipe_bitnet", variants=("tern",), optimizer="adamw", schedule="bitnet",
        weight_decay=0.1, weight_decay_schedule="bitnet")
