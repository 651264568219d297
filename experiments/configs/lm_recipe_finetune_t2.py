"""``lm_recipe_finetune_half`` with the paper's residual expansion: the fine-tuned model is
ternary with t_ex = 2 (two stacked ternary kernels per weight, ``tern_t2``: about 1.5x the
stored bytes of ``tern``, a seventh of fp at 16 bits; see ``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    half = load_config(str(Path(__file__).with_name("lm_recipe_finetune_half.py")))
    return override(half, {"name": "lm_recipe_finetune_t2", "model.variants": ("fp", "tern_t2")})
