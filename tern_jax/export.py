"""GGUF export: a ternary transformer trained here, as a file llama.cpp (Ollama, LM Studio) runs.

:func:`to_gguf` writes a :class:`~tern_jax.models.transformer.Transformer` in llama.cpp's
``llama`` architecture with the ``gguf`` package (llama.cpp's own writer; ``pip install
'.[export]'``). Ternary kernels become ``TQ2_0`` (2 bits per code, 2.06 bits per weight)
or ``TQ1_0`` (base-3 packing, 1.69 bits per weight) tensors: blocks of 256 codes along a row
with one fp16 scale, which is the tensor's ``α`` (or the row's, for per-output-channel scales),
so the file holds ``fp16(α)·codes`` exactly. Norm scales are F32, other matrices F16.

Layout, for ``h`` query heads, ``kv`` key/value heads of ``head_dim`` features (GGUF shapes
are ``(rows, row width)``: a Flax kernel ``(in, out)`` is transposed)::

    token_embd.weight      embed/embedding                     (vocab, d)
    blk.N.attn_norm.weight blocks/N/attn_norm/scale            (d,)  F32
    blk.N.attn_q.weight    blocks/N/attn/query/kernel          (h·head_dim, d)   rotary-permuted
    blk.N.attn_k.weight    blocks/N/attn/key/kernel            (kv·head_dim, d)  rotary-permuted
    blk.N.attn_v.weight    blocks/N/attn/value/kernel          (kv·head_dim, d)
    blk.N.attn_output.weight  blocks/N/attn/out/kernel         (d, h·head_dim)
    blk.N.ffn_norm.weight  blocks/N/mlp_norm/scale             (d,)  F32
    blk.N.ffn_gate.weight / ffn_up.weight / ffn_down.weight   blocks/N/mlp/{gate,up,down}/kernel
    output_norm.weight     final_norm/scale                    (d,)  F32
    output.weight          head/kernel (absent when tie_embeddings: llama.cpp reuses token_embd)

Rotary positions: tern_jax rotates the pairs ``(x_i, x_{i+head_dim/2})`` (the "neox" layout);
llama.cpp's ``llama`` architecture rotates ``(x_{2i}, x_{2i+1})`` with the same frequencies.
The query and key output features of each head are reordered ``[0, half, 1, half+1, ...]``
so that llama.cpp's pairs are tern_jax's pairs; attention scores are unchanged by a common
permutation of the query and key features, so the model computes the same function.

The vocabulary is a byte-level BPE tokenizer's (``tokenizer=``: its tokens, merges and
pre-tokenizer in llama.cpp's ``gpt2`` layout, :mod:`tern_jax.export_vocab`), or without one
the 256 bytes as a byte-level BPE (``tokenizer.ggml.model = "gpt2"``)
without merges: token ``b`` is GPT-2's printable stand-in for byte ``b``, which llama.cpp
decodes back to the byte, so detokenizing gives the exact bytes, and any text tokenizes to its
bytes. No BOS is added; byte 0 (NUL) is the end-of-generation token.

What the format cannot hold is one clear error before anything is written: a GELU MLP
(``llama`` has the gated one: train with ``TransformerConfig(mlp="swiglu")``), and for the TQ
types residual expansion (``t_ex > 1``: 5 or 9 levels), a row width that is not a multiple of
256, and scales that vary along a row (per-head scales of ``attn/out``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tern_jax import fs
from tern_jax._args import argument_error, check_bool, check_path, unwritable_path_error
from tern_jax.core import NON_FINITE_FIX, TernaryCodes, decode, non_finite
from tern_jax.export_vocab import gguf_vocabulary
from tern_jax.integrity import check_shapes
from tern_jax.models.transformer import NORM_EPSILON, ROPE_BASE, TransformerConfig
from tern_jax.packing import SUPER_BLOCK
from tern_jax.rules import match_params, path_to_str

__all__ = ["GGUFType", "GGUF_TYPES", "to_gguf", "rotary_permutation", "byte_vocabulary"]


class GGUFType(NamedTuple):
    """How one ``type`` of :func:`to_gguf` writes the ternary kernels (names of ``gguf`` enums).

    Attributes:
      quantization: the ``gguf.GGMLQuantizationType`` member, or ``None`` for an F16 array.
      file_type: the ``gguf.LlamaFileType`` member the file's metadata names.
      ternary: whether the type holds the ternary codes exactly: 3 levels, one scale per
        block of :data:`~tern_jax.packing.SUPER_BLOCK` inputs of a row.
    """

    quantization: str | None
    file_type: str
    ternary: bool


#: The tensor types :func:`to_gguf` writes the ternary kernels as, by the name ``type`` takes
#: (and the command line's ``--type``): ``tq2_0``, ``tq1_0`` exactly; ``q8_0`` (8-bit, for
#: comparison) and ``f16`` rounded. The one list of them: every check reads it.
GGUF_TYPES: dict[str, GGUFType] = {
    "tq2_0": GGUFType("TQ2_0", "MOSTLY_TQ2_0", True),
    "tq1_0": GGUFType("TQ1_0", "MOSTLY_TQ1_0", True),
    "q8_0": GGUFType("Q8_0", "MOSTLY_Q8_0", False),
    "f16": GGUFType(None, "MOSTLY_F16", False),
}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("GGUF export needs the gguf package: pip install gguf (in the "
                          "checkout: pip install '.[export]')") from None
    return gguf


def rotary_permutation(head_dim: int) -> np.ndarray:
    """Feature order within a head that turns tern_jax's rotary pairs into llama.cpp's.

    ``new[2i] = old[i]``, ``new[2i+1] = old[i + head_dim/2]``.
    """
    half = head_dim // 2
    return np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)


def byte_vocabulary() -> list[str]:
    """The 256 token texts: GPT-2's printable stand-in of each byte, in byte order."""
    from gguf.vocab import bytes_to_unicode

    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def _is_codes(x) -> bool:
    return isinstance(x, TernaryCodes)


def _flat(params) -> dict[str, object]:
    """``{path: leaf}`` of ``params``, whose leaves are arrays or :class:`TernaryCodes`."""
    import jax
    from flax import nnx

    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_codes)[0]
    return {path_to_str(p): leaf for p, leaf in leaves}


def _expected_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    from flax import nnx

    from tern_jax.models.transformer import Transformer

    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    return {k: tuple(v.shape) for k, v in _flat(nnx.state(abstract, nnx.Param)).items()}


def _codes_of(params, rules) -> dict[str, object]:
    """Every leaf as an array, or as its :class:`TernaryCodes` when a rule ternarizes it."""
    flat = _flat(params)
    plain = {k: v for k, v in flat.items() if not _is_codes(v)}
    out = dict(flat)
    for key, leaf in flat.items():  # named here: encoded, a NaN would only show as odd scales
        bad = non_finite(leaf.scales if _is_codes(leaf) else leaf)
        if bad is not None:
            what = f"the scales of parameter {key!r} hold" if _is_codes(leaf) else \
                f"parameter {key!r} holds"
            raise ValueError(f"to_gguf: {what} {bad}; {NON_FINITE_FIX}")
    if rules is not None and plain:
        matches, _ = match_params(plain, rules, unused="ignore")
        for m in matches:
            if m.quantized:
                out[m.path] = m.rule.codes(m.leaf)
    return out


def _as_matrix(name: str, value: np.ndarray, config: TransformerConfig) -> np.ndarray:
    """A Flax kernel as GGUF's ``(rows, row width)`` matrix, rotary-permuted where needed."""
    hd = config.head_dim
    if name.endswith(("attn/query/kernel", "attn/key/kernel", "attn/value/kernel")):
        if not name.endswith("value/kernel"):
            value = value[..., rotary_permutation(hd)]
        return value.reshape(value.shape[0], -1).T  # (heads·head_dim, d)
    if name.endswith("attn/out/kernel"):
        return value.reshape(-1, value.shape[-1]).T  # (d, heads·head_dim)
    if name.endswith("embed/embedding"):
        return value  # (vocab, d): a lookup row per token
    return value.T  # dense kernel (in, out) -> (out, in)


def _gguf_name(path: str) -> str:
    parts = path.split("/")
    fixed = {"embed/embedding": "token_embd.weight", "final_norm/scale": "output_norm.weight",
             "head/kernel": "output.weight"}
    if path in fixed:
        return fixed[path]
    layer = {"attn_norm/scale": "attn_norm", "attn/query/kernel": "attn_q",
             "attn/key/kernel": "attn_k", "attn/value/kernel": "attn_v",
             "attn/out/kernel": "attn_output", "mlp_norm/scale": "ffn_norm",
             "mlp/gate/kernel": "ffn_gate", "mlp/up/kernel": "ffn_up",
             "mlp/down/kernel": "ffn_down"}["/".join(parts[2:])]
    return f"blk.{parts[1]}.{layer}.weight"


def _ternary_matrix(path: str, codes: TernaryCodes, config, type_: str) -> np.ndarray:
    """``Σ_k α_k·code_k`` (:func:`tern_jax.core.decode`) as the GGUF matrix; checks that a TQ
    type can hold it exactly."""
    ternary = GGUF_TYPES[type_].ternary
    t_ex = np.shape(codes.scales)[0]
    if t_ex != 1 and ternary:
        raise ValueError(
            f"{path}: residual expansion (t_ex={t_ex}, {2 * t_ex + 1} levels) does not fit "
            f"{type_.upper()}, which holds 3 levels; train with t_ex=1 or export with "
            "type='f16' (on the command line --type f16)")
    matrix = _as_matrix(path, np.asarray(decode(codes)), config)
    if not ternary:
        return matrix
    scales = np.asarray(codes.scales, np.float32)
    row_scales = _as_matrix(path, np.broadcast_to(scales[0], np.shape(codes.levels)), config)
    if matrix.shape[1] % SUPER_BLOCK:
        raise ValueError(
            f"{path}: rows of {matrix.shape[1]} inputs; {type_.upper()} packs blocks of "
            f"{SUPER_BLOCK} inputs of a row. Use d_model (and the MLP's hidden width) multiples "
            f"of {SUPER_BLOCK}, or export with type='f16' (on the command line --type f16)")
    if np.any(row_scales != row_scales[:, :1]):
        raise ValueError(
            f"{path}: its scales vary along a row (per-head scales of attn/out, or per-input "
            f"channel ones); a {type_.upper()} block holds one scale for {SUPER_BLOCK} inputs "
            "of a row. Use one scale per tensor or per output channel (presets 'tern', "
            "'tern_pc'), or export with type='f16' (on the command line --type f16)")
    return matrix


def _check_config(config) -> None:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be the model's TransformerConfig, got "
                        f"{type(config).__name__}")
    if config.mlp != "swiglu":
        raise ValueError(
            f"llama.cpp's llama architecture has a gated MLP; this model has mlp="
            f"{config.mlp!r}. Train a model with TransformerConfig(mlp='swiglu') (in a run "
            "config model.kwargs mlp='swiglu', on the command line --set "
            "model.kwargs.mlp=swiglu; transformer_llama has it) to export it")


def _check_vocab_size(config, vocab) -> None:
    size = 256 if vocab is None else len(vocab.tokens)
    if config.vocab_size != size:
        what = ("the 256 bytes (no tokenizer given)" if vocab is None else
                f"the tokenizer's {size} tokens")
        raise ValueError(f"the GGUF vocabulary is {what}; this model has vocab_size="
                         f"{config.vocab_size}. Pass the tokenizer the model was trained with"
                         " (tokenizer=, on the command line the run's tokenizer.json)")


def _tensors(params, config, rules, type_: str):
    """``[(gguf name, array, gguf type or None)]`` in file order, all checks done."""
    gguf = _gguf()
    expected = _expected_shapes(config)
    flat = _codes_of(params, rules)
    check_shapes(expected, {k: np.shape(v.levels if _is_codes(v) else v)
                            for k, v in flat.items()},
                 "params (to_gguf takes the model's own nnx.Param state: a run's, or "
                 "load_ternary's)")
    if type_ != "f16" and not any(_is_codes(v) for v in flat.values()):
        raise ValueError(f"no parameter is ternary (no rule ternarizes one), so there is "
                         f"nothing to write as {type_.upper()}; pass the rules the model was "
                         "trained with, or export a full-precision model with type='f16' (on "
                         "the command line --type f16)")
    quantization = GGUF_TYPES[type_].quantization
    out = []
    for path in sorted(expected, key=_order):
        leaf = flat[path]
        if _is_codes(leaf):
            matrix = _ternary_matrix(path, leaf, config, type_)
            if quantization is None:
                out.append((_gguf_name(path), matrix.astype(np.float16), None))
            else:
                qtype = getattr(gguf.GGMLQuantizationType, quantization)
                out.append((_gguf_name(path), gguf.quants.quantize(matrix, qtype), qtype))
        else:
            value = np.asarray(leaf, np.float32)
            if value.ndim == 1:
                out.append((_gguf_name(path), value, None))
            else:
                out.append((_gguf_name(path), _as_matrix(path, value, config).astype(np.float16),
                            None))
    return out


def _order(path: str):
    """Tensor order in the file: embedding, blocks in order, final norm, head."""
    parts = path.split("/")
    if parts[0] == "blocks":
        return (1, int(parts[1]), path)
    return ({"embed": 0, "final_norm": 2, "head": 3}.get(parts[0], 4), 0, path)


def to_gguf(path, params, config: TransformerConfig, rules=None, *, type: str = "tq2_0",
            overwrite: bool = False, name: str = "tern_jax", tokenizer=None) -> Path:
    """Writes a :class:`Transformer`'s weights as a GGUF file llama.cpp loads; returns the path.

    Args:
      path: the ``.gguf`` file to create. An existing file is an error unless ``overwrite``,
        and even then only a file tern_jax wrote (and nobody changed) is replaced.
      params: the model's ``nnx.Param`` weights (nested dict or ``nnx.State``: a run's latent
        weights, or ``load_ternary(path, codes=True)["params"]`` whose ternary leaves are
        :class:`TernaryCodes` already).
      config: the model's :class:`TransformerConfig` (``mlp="swiglu"``; ``vocab_size`` 256,
        or the tokenizer's). With ``scan_layers=True`` the params are stacked over layers; they
        are unstacked (:func:`tern_jax.models.transformer.unstack_layers`) and each layer
        ternarized on its own, so the file is the one the unscanned model writes.
      rules: the rules it was trained with; the float leaves they ternarize are encoded with
        them (``None``: only leaves given as :class:`TernaryCodes` are ternary).
      type: a name of :data:`GGUF_TYPES`: ``"tq2_0"``, ``"tq1_0"`` (exact ternary), ``"q8_0"``
        or ``"f16"`` (the ternary weights ``α·codes`` rounded to 8-bit blocks or fp16) for the
        ternary kernels; others are F16, norm scales F32.
      overwrite: replace an earlier export of tern_jax at ``path``.
      name: the model name in the file's metadata.
      tokenizer: the model's byte-level BPE tokenizer (a ``tokenizers.Tokenizer`` or the path
        of its ``tokenizer.json``), written as llama.cpp's ``gpt2`` vocabulary
        (:func:`tern_jax.export_vocab.gguf_vocabulary`); ``None``: the 256 bytes.

    Raises before anything is written: ``ValueError`` naming what llama.cpp cannot represent
    (see the module docstring) or a tokenizer it cannot reproduce, a vocabulary size other
    than the tokenizer's (256 without one), a parameter that does not fit ``config`` or one
    holding NaN or Inf (with the count), or an empty ``path``; ``IsADirectoryError`` for a
    ``path`` that is a folder or ends in a separator (a GGUF export is one file);
    ``NotADirectoryError`` when a folder on the way is a file, ``FileNotFoundError`` when the
    folder does not exist, ``PermissionError`` when it cannot be written (each naming ``path``
    and the cause); ``FileExistsError`` for an existing ``path`` without ``overwrite``;
    :class:`tern_jax.fs.NotOwnedError` when ``path`` is not a file tern_jax wrote.
    """
    given = path
    path = check_path(path, "path", "to_gguf")
    if (isinstance(given, str) and given.endswith(tuple(filter(None, (os.sep, os.altsep))))) \
            or path.is_dir():
        raise IsADirectoryError(f"to_gguf: path {given} is a folder; a GGUF export is one file: "
                                f"give a file path such as {path / 'model.gguf'}")
    if not isinstance(type, str) or type not in GGUF_TYPES:
        raise argument_error(ValueError, "to_gguf", "type", f"one of {tuple(GGUF_TYPES)}",
                             repr(type))
    check_bool(overwrite, "overwrite", "to_gguf")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to "
                                  "replace an earlier export, or choose a new path")
        fs.check_replaceable(path, fs.owned_file, "a GGUF export (to_gguf)")
    unwritable = unwritable_path_error(path, "to_gguf")
    if isinstance(unwritable, NotADirectoryError):
        raise unwritable
    if not path.parent.is_dir():
        raise FileNotFoundError(f"to_gguf: the folder {path.parent} does not exist; create it "
                                "or choose another path")
    if unwritable is not None:
        raise unwritable
    _check_config(config)
    if config.scan_layers:  # the file holds numbered layers: each ternarized on its own
        import dataclasses

        from tern_jax.models.transformer import unstack_layers

        params = unstack_layers(params)
        config = dataclasses.replace(config, scan_layers=False, remat=False)
    gguf = _gguf()
    vocab = None if tokenizer is None else gguf_vocabulary(tokenizer)
    _check_vocab_size(config, vocab)
    tensors = _tensors(params, config, rules, type)

    writer_path = None
    try:
        try:
            with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=path.parent, delete=False) as tmp:
                writer_path = Path(tmp.name)
            writer = gguf.GGUFWriter(writer_path, "llama")
            _write_metadata(writer, gguf, config, name, type, vocab)
            for tensor_name, array, qtype in tensors:
                writer.add_tensor(tensor_name, array, raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            data = writer_path.read_bytes()
        except OSError as e:  # named by the user's path (the temporary file is ours); `type`
            # is the argument here, not the builtin
            raise e.__class__(f"to_gguf: cannot write {path}: {e.strerror or e}") from e
        fs.write_owned_bytes(path, data, what="a GGUF export (to_gguf)")
    finally:
        if writer_path is not None:
            writer_path.unlink(missing_ok=True)
    return path


def _write_metadata(writer, gguf, config: TransformerConfig, name: str, type_: str,
                    vocab=None) -> None:
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, GGUF_TYPES[type_].file_type))
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.mlp_ratio * config.d_model)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_layer_norm_rms_eps(NORM_EPSILON)
    writer.add_tokenizer_model("gpt2")
    if vocab is not None:  # a byte-level BPE tokenizer's
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        writer.add_token_merges(vocab.merges)
        writer.add_add_bos_token(vocab.add_bos)
        writer.add_bos_token_id(vocab.bos)
        writer.add_eos_token_id(vocab.eos)
        return
    writer.add_tokenizer_pre("default")
    writer.add_token_list(byte_vocabulary())
    writer.add_token_types([gguf.TokenType.NORMAL] * 256)
    # llama.cpp requires a merge list and GGUF has no empty arrays: one merge of two 2-symbol
    # pieces, which never applies since no merge makes a 2-symbol piece (tokens stay bytes).
    pair = byte_vocabulary()[0] * 2
    writer.add_token_merges([f"{pair} {pair}"])
    writer.add_add_bos_token(False)
    # No byte is a BOS/EOS: llama.cpp's gpt2 default (11, '\v') would end generation on a
    # vertical tab; NUL, which text does not hold, is the end-of-generation byte instead.
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
