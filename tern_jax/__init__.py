"""tern_jax: ternary-weight networks in JAX/Flax.

Implements He, Gong & Fan, "Optimize Deep Convolutional Neural Network with Ternarized
Weights and High Accuracy" (WACV 2019): statistical weight scaling, whole-network
ternarization and residual expansion, as pure functions over arrays and parameter pytrees.

Layers of the package, each importing only downward (checked by ``tests/test_layering.py``):

1. ``core`` (jax only: quantizers, codes, the straight-through gradient); ``packing`` (NumPy);
   ``_args``, ``_imports`` and ``fs`` (argument checks, import paths, safe file writes);
2. ``rules`` (rules over parameter pytrees) <- ``presets`` (every named rule set), ``summary``,
   ``checkpoint``, ``layers``, ``nnx_utils``;
3. ``models``, ``data`` (models know nothing of ternarization; data knows no model);
4. ``train`` (configs, the loop, run folders), one concept per module;
5. ``cli``.
"""

from tern_jax import layers, nnx_utils, presets
from tern_jax.checkpoint import CheckpointError, load_ternary, save_ternary
from tern_jax.core import (
    METHODS,
    TernaryCodes,
    decode,
    dequantize,
    encode,
    expand,
    expanded_apply,
    expansion_codes,
    fold,
    ternarize,
    ternary_codes,
)
from tern_jax.rules import (
    DEFAULT_RULES,
    Match,
    Rule,
    UnusedRuleWarning,
    match_params,
    quantize_params,
)
from tern_jax.summary import Summary, summary

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "DEFAULT_RULES",
    "CheckpointError",
    "Match",
    "Rule",
    "Summary",
    "TernaryCodes",
    "UnusedRuleWarning",
    "decode",
    "dequantize",
    "encode",
    "expand",
    "expanded_apply",
    "expansion_codes",
    "fold",
    "layers",
    "nnx_utils",
    "presets",
    "load_ternary",
    "match_params",
    "quantize_params",
    "save_ternary",
    "summary",
    "ternarize",
    "ternary_codes",
]
