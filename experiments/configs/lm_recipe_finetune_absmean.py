"""``lm_recipe_finetune_early`` (500 full-precision steps, then 1,500 ternary) with BitNet's
absmean quantizer in place of the paper's (see ``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    early = load_config(str(Path(__file__).with_name("lm_recipe_finetune_early.py")))
    return override(early, {"name": "lm_recipe_finetune_absmean",
                            "model.variants": ("fp", "absmean")})
