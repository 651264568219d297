"""Full precision for 1,000 steps, then the ternary model fine-tuned from it for
1,000 more (Adam lr 2e-3, cosine; see ``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_finetune_half", "model.variants": ("fp", "tern"),
                         "schedule.epochs": 10, "stages.finetune_epochs": 10})
