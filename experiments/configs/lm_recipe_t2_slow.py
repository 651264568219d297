"""Ternary from scratch at Adam lr 2e-3 with the paper's residual expansion, t_ex = 2
(``tern_t2``: about 1.5x the stored bytes of ``tern``; see ``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_t2_slow", "model.variants": ("tern_t2",),
                         "optimizer.learning_rate": 2e-3})
