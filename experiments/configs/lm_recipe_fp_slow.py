"""Full precision at Adam lr 2e-3 instead of 5e-3: is the fp arm's rate the better one for full
precision too (see ``lm_recipe_fp.py``, ``lm_recipe_scratch_slow.py``)?"""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_fp_slow", "optimizer.learning_rate": 2e-3})
