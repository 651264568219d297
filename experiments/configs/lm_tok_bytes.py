"""The tokenizer study (byte arm): bytes against BPE-1024 and BPE-4096 at equal training
FLOPs, full precision and ternary side by side, seeds 0 and 1.

Every arm is the recipe study's best recipe at its width (``lm_recipe_fp_slow`` /
``lm_recipe_scratch_slow``: ``transformer_llama`` at d_model 128, Adam lr 2e-3 without weight
decay, a one-epoch warm-up and cosine decay, batch 16 windows of 128 tokens) on the Python
standard library's sources, trained fp and ``tern`` together. Same width, depth, batch and
window, so every model runs the same non-embedding FLOPs per step; only the embedding and the
softmax head grow with the vocabulary. ``experiments/lm_tokenizer_study.sh`` trains the arms
and collects the table: this config as it is (bytes), and with ``--set
data.tokenizer=.../bpeN.json --set data.text_path=.../stdlib_bpeN.tok --set
name=lm_tok_bpeN`` for N = 1024 and 4096 (byte-level BPEs learnt from the training split by
``tern-jax tokenizer train``, the corpus tokenized by ``tern-jax tokenizer encode``: the
script makes both first).
"""

from pathlib import Path

from tern_jax.train import Config, load_config, override

#: Steps per model: EPOCHS epochs of 100 steps (the recipe study ran 20).
EPOCHS = 6


def get_config() -> Config:
    fp = load_config(str(Path(__file__).with_name("lm_recipe_fp.py")))
    return override(fp, {"name": "lm_tok_bytes", "model.variants": ("fp", "tern"),
                         "optimizer.learning_rate": 2e-3, "schedule.epochs": EPOCHS,
                         "checkpointing.every": 3})
