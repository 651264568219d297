"""The default language-model recipe (:func:`tern_jax.train.recipes.lm_best`): full precision
and the paper's ternary model trained side by side from scratch at Adam lr 2e-3 for 2,000
steps, ``transformer_llama`` (d_model 256) on the Python standard library's sources; the
recipe study's choice (``experiments/results/lm_recipes``).

    tern-jax train --config experiments/configs/lm_best.py --workdir runs/lm_best
    tern-jax sample --workdir runs/lm_best --model tern/seed0 --prompt "def "
"""

from tern_jax.train import Config
from tern_jax.train.recipes import lm_best


def get_config() -> Config:
    return lm_best()
