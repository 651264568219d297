"""tern_jax: ternary-weight networks in JAX/Flax.

Implements He, Gong & Fan, "Optimize Deep Convolutional Neural Network with Ternarized
Weights and High Accuracy" (WACV 2019): statistical weight scaling, whole-network
ternarization and residual expansion, as pure functions over arrays and parameter pytrees.

Layers of the package, each importing only downward (checked by ``tests/test_layering.py``):

1. ``core`` (jax only: quantizers, codes, the straight-through gradient); ``packing`` (NumPy);
   ``_args``, ``_imports``, ``fields`` and ``fs`` (argument checks, import paths, dataclass
   fields checked from their annotations, safe file writes);
2. ``rules`` (rules over parameter pytrees) <- ``presets`` (every named rule set),
   ``summary``, ``checkpoint``, ``layers``, ``nnx_utils``;
3. ``models``, ``data`` (models know nothing of ternarization; data knows no model);
4. ``train`` (configs, the loop, run folders), one concept per module;
5. ``cli``.
"""

import importlib

# Public names and the module each lives in. They are imported on first use (PEP 562), so
# ``import tern_jax`` (and ``tern-jax --help``) does not pay for JAX and Flax until needed.
_HOMES = {
    "CheckpointError": "checkpoint", "load_ternary": "checkpoint", "save_ternary": "checkpoint",
    **{name: "core" for name in (
        "METHODS", "TernaryCodes", "decode", "dequantize", "encode", "expand",
        "expanded_apply", "expansion_codes", "fold", "ternarize", "ternary_codes")},
    **{name: "rules" for name in (
        "DEFAULT_RULES", "Match", "Rule", "UnusedRuleWarning", "match_params",
        "quantize_params")},
    "Summary": "summary", "summary": "summary",
}
_SUBMODULES = ("layers", "nnx_utils", "presets")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"tern_jax.{name}")
    if name in _HOMES:
        value = getattr(importlib.import_module(f"tern_jax.{_HOMES[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'tern_jax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_HOMES, *_SUBMODULES])


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
