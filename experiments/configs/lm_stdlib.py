"""Byte-level language model on the Python standard library's sources: which quantizer trains
the better ternary transformer? Seven variants, two seeds, one program, CPU-sized.

``transformer_small`` (2 pre-norm blocks, d_model 64, 2 heads, 64-byte context, 131k
parameters), Adam lr 1e-2 with a one-epoch linear warm-up and cosine decay, batch 32 windows of
64 bytes, 15 "epochs" of 100 steps (1,500 steps, 3.1M training bytes). Validation bits per byte
on 512 windows (32,768 bytes) evenly spaced over the validation files.

    tern-jax train --config experiments/configs/lm_stdlib.py --workdir runs/lm_stdlib
    tern-jax sample --workdir runs/lm_stdlib --model tern/seed0 --prompt "def "
"""

from tern_jax.train import Config

#: Full precision and the six ternary variants of tern_jax.presets.TRANSFORMER_RULES.
LM_VARIANTS = ("fp", "tern", "tern_pc", "tern_t2", "twn", "absmean", "tern_fl")


def get_config() -> Config:
    return Config(
        name="lm_stdlib", seeds=(0, 1),
        model={"name": "transformer_small", "variants": LM_VARIANTS},
        data={"dataset": "text", "steps_per_epoch": 100, "batch_size": 32, "augment": False,
              "test_subset": 512, "eval_batch_size": 128},
        optimizer={"name": "adam", "learning_rate": 1e-2, "weight_decay": 0.0},
        schedule={"epochs": 15, "name": "cosine", "warmup_epochs": 1},
        checkpointing={"every": 4},
    )
