"""Ternary from scratch at Adam lr 2e-3, distilled from the full-precision model that trains
beside it in the same program (per-token KL of the next-byte distributions at temperature 2,
weight 1; see ``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_distill_slow", "model.variants": ("fp", "tern"),
                         "optimizer.learning_rate": 2e-3, "stages.distill_weight": 1.0,
                         "stages.distill_temperature": 2.0})
