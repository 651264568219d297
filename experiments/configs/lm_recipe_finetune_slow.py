"""``lm_recipe_finetune_half`` at the better rate for both stages: full precision at Adam lr
2e-3 for 1,000 steps, then the ternary model fine-tuned from it at 2e-3 for 1,000 more (see
``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    half = load_config(str(Path(__file__).with_name("lm_recipe_finetune_half.py")))
    return override(half, {"name": "lm_recipe_finetune_slow", "optimizer.learning_rate": 2e-3})
