"""Ternary from scratch with BitNet b1.58's two-stage schedules: AdamW, the rate cosine-decaying
from 5e-3 and dropping to a third at step 1,000, weight decay 0.1 cosine-decaying to 0 by
step 1,000 (:mod:`tern_jax.train.optim`); 2,000 steps (see ``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_bitnet", "model.variants": ("tern",),
                         "optimizer.name": "adamw", "schedule.name": "bitnet",
                         "optimizer.weight_decay": 0.1, "schedule.weight_decay": "bitnet"})
