"""Hugging Face ``transformers`` export: a ternary transformer as a folder ``from_pretrained``
loads.

:func:`to_hf` writes a :class:`~tern_jax.models.transformer.Transformer` with a gated MLP
as the ``llama`` architecture of ``transformers`` (``LlamaForCausalLM``): ``config.json``,
``model.safetensors`` (the ``safetensors`` package), ``generation_config.json`` and the
tokenizer files (``tokenizer.json``, ``tokenizer_config.json``: the model's byte-level BPE
tokenizer, or the 256 bytes as :func:`tern_jax.export_vocab.byte_tokenizer`). ``pip install
'.[hf]'``; the folder loads with ``transformers.AutoModelForCausalLM.from_pretrained(path)``.

Ternary models are written in transformers' BitNet format (``quantization_config`` with
``quant_method: "bitnet"``, ``linear_class: "bitlinear"``, ``quantization_mode: "offline"``):
the seven linears of every block (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
``gate_proj``, ``up_proj``, ``down_proj``) hold their ternary codes packed 2 bits each into
``uint8`` ``weight`` tensors of shape ``(out/4, in)`` (code ``c`` stored as ``c + 1``; output
row ``r = i·out/4 + j`` in bits ``2i..2i+1`` of packed row ``j``) and a ``weight_scale`` of
one value, ``1/α``: transformers' ``BitLinear`` divides its integer products by the input's
scale times ``weight_scale``. It quantizes every input of those linears to int8 with one
absmax scale per token, which is tern_jax's ``activations="int8"``. The embedding and the
``lm_head`` are full-precision modules there; a ternary embedding or head is written as its
values ``α·codes`` (exact in float32), and the head's input is not quantized.

So a model this format holds exactly is one trained with: every block linear ternary, one
``α`` per tensor (``t_ex = 1``), per-token int8 inputs of the block linears or none, and no
quantized head input; the preset ``tern_hf`` (:data:`tern_jax.presets.TRANSFORMER_RULES`) is
such rules. What it cannot hold is one clear error before anything is written: per-channel
or per-head scales, ``t_ex > 1``, block-wise activations (``int8_block``), a quantized head
input, a ternary and a full-precision block linear side by side, a GELU MLP, output widths
that are not multiples of 4. A model without ternary weights is a plain LLaMA (float32).

Loading a ternary folder needs ``accelerate`` too (transformers' BitNet loader asks for it).
transformers' ``BitLinear`` passes three small functions through ``torch.compile``: the first
forward pass compiles them (C++, minutes on a small CPU); ``TORCH_COMPILE_DISABLE=1`` runs
them eagerly, the same arithmetic.

``latent_dtype="bfloat16"`` (or ``"float32"``) writes the latent weights instead, unquantized:
a plain LLaMA without ``quantization_config``, to train further in PyTorch.

Layout (tern_jax and transformers rotate the same feature pairs ``(x_i, x_{i+head_dim/2})``
with the same frequencies, so no permutation is needed; kernels ``(in, out)`` become
``(out, in)``)::

    model.embed_tokens.weight                    embed/embedding
    model.layers.N.input_layernorm.weight        blocks/N/attn_norm/scale
    model.layers.N.self_attn.{q,k,v,o}_proj      blocks/N/attn/{query,key,value,out}/kernel
    model.layers.N.post_attention_layernorm      blocks/N/mlp_norm/scale
    model.layers.N.mlp.{gate,up,down}_proj       blocks/N/mlp/{gate,up,down}/kernel
    model.norm.weight                            final_norm/scale
    lm_head.weight                               head/kernel (absent when tie_embeddings)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tern_jax import fs
from tern_jax._args import check_bool, check_path
from tern_jax.core import TernaryCodes, decode
from tern_jax.export import _codes_of, _expected_shapes, _is_codes
from tern_jax.export_vocab import begin_token, byte_tokenizer, end_token, load_tokenizer
from tern_jax.integrity import check_shapes
from tern_jax.models.transformer import NORM_EPSILON, ROPE_BASE, TransformerConfig
from tern_jax.rules import first_match

__all__ = ["to_hf", "pack_bitnet", "unpack_bitnet", "HF_LINEARS", "LATENT_DTYPES"]

#: The block linears (tern_jax path within a block -> transformers module), the ones
#: transformers' BitNet format quantizes.
HF_LINEARS = {"attn/query/kernel": "self_attn.q_proj", "attn/key/kernel": "self_attn.k_proj",
              "attn/value/kernel": "self_attn.v_proj", "attn/out/kernel": "self_attn.o_proj",
              "mlp/gate/kernel": "mlp.gate_proj", "mlp/up/kernel": "mlp.up_proj",
              "mlp/down/kernel": "mlp.down_proj"}
#: ``latent_dtype`` choices of :func:`to_hf`.
LATENT_DTYPES = ("bfloat16", "float32")
_WHAT = "a Hugging Face export (to_hf)"
_FIX = ("train with one scale per tensor, t_ex=1 and activations='int8' or none (the "
        "'tern_hf' preset), or export the latent weights (latent_dtype='bfloat16', on the "
        "command line --dtype bfloat16)")


def _imports():
    try:
        import safetensors.numpy  # noqa: F401
        import transformers
    except ImportError as e:
        raise ImportError(f"the Hugging Face export needs transformers and safetensors "
                          f"({e.name} is missing): pip install '.[hf]'") from None
    return transformers


def pack_bitnet(codes: np.ndarray) -> np.ndarray:
    """Ternary codes ``(out, in)`` in {-1, 0, 1} as transformers' BitNet ``uint8`` weight
    ``(out/4, in)``: row ``i·out/4 + j`` in bits ``2i, 2i+1`` of row ``j``, as ``code + 1``."""
    codes = np.asarray(codes)
    rows = codes.shape[0] // 4
    shifted = (codes.astype(np.int16) + 1).astype(np.uint8).reshape(4, rows, *codes.shape[1:])
    packed = np.zeros(shifted.shape[1:], np.uint8)
    for i in range(4):
        packed |= shifted[i] << np.uint8(2 * i)
    return packed


def unpack_bitnet(packed: np.ndarray) -> np.ndarray:
    """The codes ``(4·rows, in)`` of :func:`pack_bitnet`'s ``packed`` ``(rows, in)``."""
    packed = np.asarray(packed, np.uint8)
    return np.concatenate([((packed >> np.uint8(2 * i)) & 3).astype(np.int8) - 1
                           for i in range(4)])


def _linear_matrix(path: str, value: np.ndarray) -> np.ndarray:
    """A kernel as torch's ``(out, in)`` weight."""
    if path.endswith(("attn/query/kernel", "attn/key/kernel", "attn/value/kernel")):
        return value.reshape(value.shape[0], -1).T
    if path.endswith("attn/out/kernel"):
        return value.reshape(-1, value.shape[-1]).T
    if path.endswith("embed/embedding"):
        return value
    return value.T


def _hf_name(path: str) -> str:
    fixed = {"embed/embedding": "model.embed_tokens.weight", "final_norm/scale":
             "model.norm.weight", "head/kernel": "lm_head.weight"}
    if path in fixed:
        return fixed[path]
    parts = path.split("/")
    inner = "/".join(parts[2:])
    module = {"attn_norm/scale": "input_layernorm", "mlp_norm/scale":
              "post_attention_layernorm", **HF_LINEARS}[inner]
    return f"model.layers.{parts[1]}.{module}.weight"


def _check_config(config) -> None:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"to_hf: config must be the model's TransformerConfig, got "
                        f"{type(config).__name__}")
    if config.mlp != "swiglu":
        raise ValueError(f"transformers' llama architecture has a gated MLP; this model has "
                         f"mlp={config.mlp!r}. Train it with TransformerConfig(mlp='swiglu') "
                         "(--set model.kwargs.mlp=swiglu; transformer_llama has it)")


def _ternary_plan(flat, rules) -> dict[str, TernaryCodes]:
    """The block linears' codes when the model is ternary (``{}`` when it is not), checked
    against what transformers' BitNet format holds."""
    linears = [p for p in flat if p.startswith("blocks/") and
               "/".join(p.split("/")[2:]) in HF_LINEARS]
    ternary = [p for p in linears if _is_codes(flat[p])]
    if not ternary:
        return {}
    plain = sorted(set(linears) - set(ternary))
    if plain:
        raise ValueError(f"to_hf: {plain[0]} is full precision while {ternary[0]} is ternary; "
                         f"transformers' BitNet format quantizes every block linear. "
                         f"{_FIX[0].upper()}{_FIX[1:]}")
    for path in [*ternary, *(["head/kernel"] if "head/kernel" in flat else [])]:
        rule = None if not rules else first_match(path, None, rules)
        mode = None if rule is None else rules[rule].activations
        if path == "head/kernel" and mode is not None:
            raise ValueError(f"to_hf: the rules quantize the head's input ({mode!r}); "
                             "transformers' BitNet lm_head takes full-precision inputs; "
                             f"{_FIX}")
        if path != "head/kernel" and mode not in (None, "int8"):
            raise ValueError(f"to_hf: {path} has activations={mode!r} (one scale per block of "
                             "features); transformers' BitLinear quantizes each token's "
                             f"input with one scale; {_FIX}")
    out = {}
    for path in ternary:
        codes = flat[path]
        scales = np.asarray(codes.scales, np.float32)
        if scales.shape[0] != 1:
            raise ValueError(f"to_hf: {path}: residual expansion (t_ex={scales.shape[0]}, "
                             f"{2 * scales.shape[0] + 1} levels) does not fit transformers' "
                             f"BitNet format, which holds 3 levels; {_FIX}")
        if np.unique(scales).size != 1:
            raise ValueError(f"to_hf: {path}: its scales vary across channels or heads; "
                             "transformers' BitNet format holds one weight_scale per tensor; "
                             f"{_FIX}")
        rows = _linear_matrix(path, np.asarray(codes.levels)).shape[0]
        if rows % 4:
            raise ValueError(f"to_hf: {path}: {rows} outputs; transformers' BitNet format "
                             "packs 4 output rows per byte: use widths that are multiples of 4")
        out[path] = codes
    return out


def _tensors(flat, plan) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in flat.items():
        name = _hf_name(path)
        if path in plan:
            codes = plan[path]
            levels = _linear_matrix(path, np.asarray(codes.levels))
            alpha = np.float32(np.asarray(codes.scales, np.float32).reshape(-1)[0])
            out[name] = pack_bitnet(levels)
            out[name.removesuffix("weight") + "weight_scale"] = np.asarray(
                [1.0 / alpha if alpha else 1.0], np.float32)
            continue
        value = np.asarray(decode(leaf) if _is_codes(leaf) else leaf, np.float32)
        out[name] = np.ascontiguousarray(_linear_matrix(path, value) if value.ndim > 1
                                         else value)
    return out


def _tokenizer_and_ids(tokenizer, vocab_size: int):
    tok = byte_tokenizer() if tokenizer is None else load_tokenizer(tokenizer, "to_hf")
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != vocab_size:
        what = "the 256 bytes (no tokenizer given)" if tokenizer is None else \
            f"the tokenizer's {size} tokens"
        raise ValueError(f"to_hf: the vocabulary is {what}; this model has vocab_size="
                         f"{vocab_size}. Pass the tokenizer the model was trained with "
                         "(tokenizer=, on the command line the run's tokenizer.json)")
    eos = end_token(tok)
    eos = eos if eos is not None else 0  # byte NUL (token 0 of the byte vocabulary)
    bos = begin_token(tok)
    return tok, (eos if bos is None else bos), eos


def _check_destination(path: Path, overwrite: bool) -> None:
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) "
                                  "to replace an earlier export, or choose a new path")
        if not path.is_dir():
            raise fs.NotOwnedError(f"{path} is a file that tern_jax did not write as {_WHAT};"
                                   " it is left untouched. Choose a new path")
        fs.check_replaceable(path, fs.owned_folder, _WHAT)
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"to_hf: {path.parent} is a file, not a folder; give a path "
                                 "in a folder")


def to_hf(path, params, config: TransformerConfig, rules=None, *, tokenizer=None,
          latent_dtype: str | None = None, overwrite: bool = False) -> Path:
    """Writes a :class:`Transformer` as a Hugging Face ``transformers`` folder; returns it.

    Args:
      path: the folder to create. An existing one is an error unless ``overwrite``, and even
        then only a folder tern_jax wrote (and nobody changed) is replaced. The export is
        written into a temporary folder beside it and renamed into place when complete.
      params: the model's ``nnx.Param`` weights (a run's latent weights, or
        ``load_ternary(path, codes=True)["params"]``).
      config: its :class:`TransformerConfig` (``mlp="swiglu"``).
      rules: the rules it was trained with (``None``: only :class:`TernaryCodes` leaves are
        ternary).
      tokenizer: its byte-level BPE tokenizer (``tokenizers.Tokenizer`` or ``tokenizer.json``
        path); ``None``: the 256 bytes (:func:`tern_jax.export_vocab.byte_tokenizer`).
      latent_dtype: ``None`` (the ternary model in BitNet format), or ``"bfloat16"`` /
        ``"float32"``: the latent weights unquantized, a plain LLaMA in that dtype.
      overwrite: replace an earlier export of tern_jax at ``path``.

    Raises before anything is written: ``ValueError`` naming what the format cannot hold
    (module docstring), a vocabulary size other than the tokenizer's, a parameter that does
    not fit ``config``; ``FileExistsError`` for an existing ``path`` without ``overwrite``,
    :class:`tern_jax.fs.NotOwnedError` for one tern_jax did not write; ``ImportError``
    without transformers or safetensors.
    """
    path = check_path(path, "path", "to_hf")
    check_bool(overwrite, "overwrite", "to_hf")
    if latent_dtype is not None and latent_dtype not in LATENT_DTYPES:
        raise ValueError(f"to_hf: latent_dtype must be None or one of {LATENT_DTYPES}, got "
                         f"{latent_dtype!r}")
    _check_destination(path, overwrite)
    _check_config(config)
    transformers = _imports()
    tok, bos, eos = _tokenizer_and_ids(tokenizer, config.vocab_size)
    if latent_dtype is not None:
        flat = _codes_of(params, None)
        if any(_is_codes(v) for v in flat.values()):
            raise ValueError("to_hf: these weights are ternary codes (a packed checkpoint): "
                             "they have no latent weights; export the run's checkpoint")
        plan = {}
    else:
        flat = _codes_of(params, rules)
        plan = _ternary_plan(flat, rules)
    check_shapes(_expected_shapes(config), {k: np.shape(v.levels if _is_codes(v) else v)
                                            for k, v in flat.items()},
                 "params (to_hf takes the model's own nnx.Param state)")
    tensors = _tensors(flat, plan)
    hf_config = _hf_config(transformers, config, bos, eos, latent_dtype or "float32",
                           bool(plan))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = fs.staging_dir(path)
    try:
        target = staging / "export"
        target.mkdir()
        hf_config.save_pretrained(target)
        transformers.GenerationConfig(bos_token_id=bos, eos_token_id=eos).save_pretrained(target)
        _save_tokenizer(transformers, tok, bos, eos, target)
        _save_weights(tensors, target / "model.safetensors", latent_dtype)
        fs.own_folder(target)
        fs.swap_in(target, path, staging)
    except OSError as e:
        raise type(e)(f"to_hf: could not write {path}: {e.strerror or e}") from e
    finally:
        fs.remove_tree(staging)
    return path


def _hf_config(transformers, config: TransformerConfig, bos: int, eos: int, dtype: str,
               ternary: bool):
    hf = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model,
        intermediate_size=config.mlp_ratio * config.d_model,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.kv_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_len, rms_norm_eps=NORM_EPSILON,
        rope_theta=ROPE_BASE, hidden_act="silu", tie_word_embeddings=config.tie_embeddings,
        attention_bias=False, mlp_bias=False, bos_token_id=bos, eos_token_id=eos,
        dtype=dtype)
    hf.architectures = ["LlamaForCausalLM"]
    if ternary:
        hf.quantization_config = {"quant_method": "bitnet", "linear_class": "bitlinear",
                                  "quantization_mode": "offline",
                                  "modules_to_not_convert": ["lm_head"]}
    return hf


def _save_tokenizer(transformers, tok, bos: int, eos: int, target: Path) -> None:
    # Only the tokenizer's own special tokens are named: naming an ordinary token (byte NUL
    # of the byte vocabulary) would make its text a special token the tokenizer matches.
    special = {t["id"] for t in json.loads(tok.to_str()).get("added_tokens") or []
               if t.get("special")}
    named = {f"{k}_token": tok.id_to_token(i) for k, i in (("bos", bos), ("eos", eos))
             if i in special}
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **named).save_pretrained(target)


def _save_weights(tensors: dict, file: Path, latent_dtype) -> None:
    if latent_dtype == "bfloat16":  # numpy has no bfloat16: written through torch
        import safetensors.torch
        import torch

        safetensors.torch.save_file(
            {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}, str(file),
            metadata={"format": "pt"})
        return
    import safetensors.numpy

    safetensors.numpy.save_file(tensors, str(file), metadata={"format": "pt"})


def read_config(path) -> dict:
    """The ``config.json`` of an export (for checks and messages)."""
    return json.loads((Path(path) / "config.json").read_text())
