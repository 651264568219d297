"""The tokenizer study (BPE-4096 arm): ``lm_tok_bytes.py``'s recipe on a byte-level BPE of
4096 tokens learnt from the training split of the standard library's sources, streamed from a
token file of the same text (``tern-jax tokenizer train`` / ``encode``, made by
``experiments/lm_tokenizer_study.sh`` under ``runs/lm_tokenizers/data``, or
``$TOKENIZER_DATA``)."""

import os
from pathlib import Path

from tern_jax.train import Config, load_config, override

#: Where the tokenizer and the token file are (the study script sets it).
DATA = Path(os.environ.get("TOKENIZER_DATA", "runs/lm_tokenizers/data"))


def get_config() -> Config:
    base = load_config(str(Path(__file__).with_name("lm_tok_bytes.py")))
    return override(base, {"name": "lm_tok_bpe4096",
                           "data.tokenizer": str(DATA / "bpe4096.json"),
                           "data.text_path": str(DATA / "stdlib_bpe4096.tok")})
