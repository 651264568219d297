"""A small ternary language model for llama.cpp: W1.58A8, exported to GGUF and compared there.

``transformer_llama`` (2 pre-norm blocks, d_model 256, 4 query / 2 key-value heads, a SwiGLU
MLP of width 512: 1.3M parameters) with the ``tern_a8`` rules (paper quantizer, 8-bit layer
inputs in llama.cpp's Q8_K blocks), Adam lr 3e-3 with a warm-up and cosine decay, batch 16
windows of 64 bytes of the Python standard library, 10 "epochs" of 100 steps.

    tern-jax train --config experiments/configs/lm_gguf.py --workdir runs/lm_gguf
    tern-jax export --workdir runs/lm_gguf --model tern_a8/seed0 --format gguf --type tq2_0 \\
        --out runs/lm_gguf.gguf
"""

from tern_jax.train import Config


def get_config() -> Config:
    return Config(
        name="lm_gguf", seeds=(0,),
        model={"name": "transformer_llama", "variants": ("tern_a8",)},
        data={"dataset": "text", "steps_per_epoch": 100, "batch_size": 16, "seq_len": 64,
              "augment": False, "test_subset": 64, "eval_batch_size": 32},
        optimizer={"name": "adam", "learning_rate": 3e-3, "weight_decay": 0.0},
        schedule={"epochs": 10, "name": "cosine", "warmup_epochs": 1},
        checkpointing={"every": 1},
    )
