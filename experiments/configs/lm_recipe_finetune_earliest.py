"""Full precision for 200 steps, then the ternary model fine-tuned from it for the other
1,800 (Adam lr 2e-3, cosine; see ``lm_recipe_fp.py``)."""

from pathlib import Path

from tern_jax.train import Config, load_config, override


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_recipe_finetune_earliest", "model.variants": ("fp", "tern"),
                         "schedule.epochs": 2, "stages.finetune_epochs": 18})
