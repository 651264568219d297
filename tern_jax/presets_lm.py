"""The transformer presets' former home, kept so that older code still imports: every preset
lives in :mod:`tern_jax.presets`."""

from tern_jax.presets import (  # noqa: F401 (the names older code imports from here)
    ATTENTION_OUT,
    ATTENTION_QKV,
    EMBEDDINGS_AND_HEAD,
    EMBEDDINGS_AND_HEAD_FP,
    TRANSFORMER_RULES,
    WEIGHTS,
)

__all__ = ["ATTENTION_OUT", "ATTENTION_QKV", "EMBEDDINGS_AND_HEAD", "EMBEDDINGS_AND_HEAD_FP",
           "TRANSFORMER_RULES", "WEIGHTS"]
