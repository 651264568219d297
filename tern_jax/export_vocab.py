"""A language model's tokenizer in its exports: GGUF's ``gpt2`` vocabulary, Hugging Face files.

A model reads the 256 bytes (the default) or the tokens of a byte-level BPE tokenizer made
with the ``tokenizers`` package (a ``tokenizer.json``). The exports carry that vocabulary so
that the program running the model splits text into the same tokens:

* GGUF (:func:`gguf_vocabulary`, used by :func:`tern_jax.export.to_gguf`): llama.cpp's BPE
  tokenizer (``tokenizer.ggml.model = "gpt2"``) reads the token texts, the merges in rank
  order, each token's type, and a pre-tokenizer name (``tokenizer.ggml.pre``) that selects the
  regular expression splitting text into words before the merges. The ``tokenizer.json``
  must be one llama.cpp reproduces: a BPE model without dropout, subword prefixes or byte
  fallback; no normalizer; a ``ByteLevel`` pre-tokenizer with GPT-2's expression and without
  an added prefix space (llama.cpp adds none), which llama.cpp runs for its ``gpt-2`` and
  ``trillion`` pre-tokenizers (the file names ``trillion``: :data:`GPT2_PRE`); a
  ``ByteLevel`` decoder; and no post-processor other than ``ByteLevel`` or a template adding
  a BOS token. Anything else is one clear error naming the field.
* Hugging Face (:func:`byte_tokenizer`, used by :func:`tern_jax.export_hf.to_hf`): the BPE
  tokenizer is written as it is; the byte vocabulary as a byte-level BPE *without merges*
  (token ``b`` is GPT-2's printable stand-in for byte ``b``), which the ``tokenizers``
  package runs exactly: any text becomes its UTF-8 bytes, token ``i`` decodes to byte ``i``.

Special tokens: added tokens marked special become llama.cpp ``CONTROL`` tokens, other added
tokens ``USER_DEFINED``. The end-of-generation token is the tokenizer's (``<|endoftext|>``,
``</s>``, ... or its only special token); without one, the token of byte NUL (which text does
not hold), as in the byte export.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

__all__ = ["GGUFVocabulary", "byte_tokenizer", "byte_symbols", "gguf_vocabulary",
           "load_tokenizer", "end_token", "begin_token"]

#: GPT-2's pre-tokenizer expression (``tokenizers``' ``ByteLevel(use_regex=True)``), which
#: llama.cpp runs for ``tokenizer.ggml.pre = "gpt-2"``.
GPT2_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
#: The ``tokenizer.ggml.pre`` written for it. llama.cpp's ``gpt-2`` and ``trillion`` split text
#: with that same expression (the same code: tokenization is the same); ``gpt-2`` also "cleans
#: up" spaces when llama.cpp detokenizes a sequence (``a != b`` comes back as ``a!= b``,
#: `` 'x'`` as ``'x'``), ``trillion`` gives the bytes back as they are, as the ``tokenizers``
#: decoder does. So the file names ``trillion``.
GPT2_PRE = "trillion"
_END_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>")
_BEGIN_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
#: llama.cpp's token types (``gguf.TokenType``: NORMAL 1, USER_DEFINED 4, CONTROL 3).
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in of each byte, in byte order: printable Latin-1 bytes stand
    for themselves, the others for ``chr(256 + k)``, k counting them in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("a BPE vocabulary needs the tokenizers package: pip install "
                          "tokenizers") from None
    return tokenizers


def load_tokenizer(tokenizer, func: str = "load_tokenizer"):
    """``tokenizer`` as a ``tokenizers.Tokenizer``: one already, a
    :class:`tern_jax.data.tokens.Tokenizer`, or the path of a ``tokenizer.json`` (read by
    :func:`tern_jax.data.tokens.load_tokenizer`: a file that does not parse is one clear error
    naming it)."""
    from tern_jax.data import tokens

    tokenizers = _tokenizers()
    if isinstance(tokenizer, tokenizers.Tokenizer):
        return tokenizer
    if isinstance(tokenizer, tokens.Tokenizer):
        return tokenizer.backend
    if not isinstance(tokenizer, (str, os.PathLike)):
        raise TypeError(f"{func}: tokenizer must be a tokenizers.Tokenizer or the path of a "
                        f"tokenizer.json, got {type(tokenizer).__name__}")
    return tokens.load_tokenizer(tokenizer).backend


def byte_tokenizer():
    """The 256-byte vocabulary as a ``tokenizers.Tokenizer``: token ``b`` is byte ``b``.

    A byte-level BPE without merges and without the word-splitting expression, so every text
    becomes its UTF-8 bytes; decoding gives the bytes back (invalid UTF-8 as U+FFFD, as any
    text decoder). No special token: byte NUL is the end of generation.
    """
    tokenizers = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {s: b for b, s in enumerate(byte_symbols())}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


class GGUFVocabulary(NamedTuple):
    """What :func:`tern_jax.export.to_gguf` writes as the GGUF tokenizer.

    Attributes:
      tokens: the token texts, by id (byte-level symbols; added tokens as written).
      types: llama.cpp's token type of each (1 normal, 3 control, 4 user defined).
      merges: ``"left right"`` in rank order.
      pre: llama.cpp's pre-tokenizer name.
      bos, eos: token ids; add_bos: whether a BOS starts every text.
    """

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int
    eos: int
    add_bos: bool


def _spec(tokenizer) -> dict:
    return json.loads(tokenizer.to_str())


def end_token(tokenizer) -> int | None:
    """The tokenizer's end-of-text token id (a special token), or ``None``."""
    return _special(tokenizer, _END_NAMES, only=True)


def begin_token(tokenizer) -> int | None:
    """The tokenizer's beginning-of-text token id (a special token), or ``None``."""
    return _special(tokenizer, _BEGIN_NAMES, only=False)


def _special(tokenizer, names, only: bool) -> int | None:
    special = {t["content"]: t["id"] for t in _spec(tokenizer).get("added_tokens") or []
               if t.get("special")}
    for name in names:
        if name in special:
            return special[name]
    if only and len(special) == 1:
        return next(iter(special.values()))
    return None


def _refuse(what: str, fix: str) -> ValueError:
    return ValueError(f"the tokenizer's {what}, which llama.cpp's BPE tokenizer cannot "
                      f"reproduce; {fix}")


def _check_model(model: dict) -> list[str]:
    if model.get("type") != "BPE":
        raise _refuse(f"model is {model.get('type')!r}, not BPE",
                      "export a byte-level BPE tokenizer (tokenizers.models.BPE)")
    for field, bad in (("dropout", model.get("dropout")),
                       ("continuing_subword_prefix", model.get("continuing_subword_prefix")),
                       ("end_of_word_suffix", model.get("end_of_word_suffix")),
                       ("byte_fallback", model.get("byte_fallback")),
                       ("ignore_merges", model.get("ignore_merges"))):
        if bad:
            raise _refuse(f"BPE model sets {field}={bad!r}",
                          f"train the tokenizer without {field}")
    merges = []
    for merge in model.get("merges") or []:
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2 or not all(pair):
            raise _refuse(f"merge {merge!r} is not a pair of tokens without spaces",
                          "use a byte-level BPE, whose tokens hold no space")
        merges.append(f"{pair[0]} {pair[1]}")
    return merges


def _pre(spec: dict, merges: list[str]) -> str:
    if spec.get("normalizer") is not None:
        raise _refuse(f"normalizer ({spec['normalizer'].get('type')})",
                      "train the tokenizer without a normalizer")
    pre = spec.get("pre_tokenizer") or {}
    # without merges, how text splits into words changes nothing (byte_tokenizer)
    if pre.get("type") != "ByteLevel" or not (pre.get("use_regex", True) or not merges):
        raise _refuse(f"pre-tokenizer {json.dumps(pre)[:120]}",
                      "use pre_tokenizers.ByteLevel(add_prefix_space=False) (GPT-2's "
                      "expression: llama.cpp's 'gpt-2')")
    if pre.get("add_prefix_space"):
        raise _refuse("pre-tokenizer adds a space before the text (add_prefix_space=True)",
                      "train it with pre_tokenizers.ByteLevel(add_prefix_space=False)")
    decoder = spec.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise _refuse(f"decoder is {decoder.get('type')!r}, not ByteLevel",
                      "set tokenizer.decoder = decoders.ByteLevel()")
    return GPT2_PRE


def _added_bos(spec: dict) -> int | None:
    """The BOS id a ``TemplateProcessing`` post-processor puts first, or ``None``."""
    post = spec.get("post_processor")
    if post is None or post.get("type") == "ByteLevel":
        return None
    single = post.get("single") if post.get("type") == "TemplateProcessing" else None
    pieces = [next(iter(p)) for p in single or []]
    if pieces == ["SpecialToken", "Sequence"]:
        name = single[0]["SpecialToken"]["id"]
        ids = post.get("special_tokens", {}).get(name, {}).get("ids") or []
        if len(ids) == 1:
            return int(ids[0])
    if pieces == ["Sequence"]:
        return None
    raise _refuse(f"post-processor ({post.get('type')}) adds tokens other than one BOS",
                  "use no post-processor, or a TemplateProcessing 'BOS $A'")


def gguf_vocabulary(tokenizer) -> GGUFVocabulary:
    """The GGUF tokenizer of a byte-level BPE ``tokenizers.Tokenizer`` (or tokenizer.json
    path); raises ``ValueError`` naming what llama.cpp cannot reproduce (module docstring)."""
    tokenizer = load_tokenizer(tokenizer, "to_gguf")
    spec = _spec(tokenizer)
    merges = _check_model(spec.get("model") or {})
    pre = _pre(spec, merges)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = len(vocab)
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(size)):
        raise ValueError(f"the tokenizer's ids are not 0..{size - 1} (one token each); a GGUF "
                         "vocabulary lists tokens by id without gaps")
    types = [NORMAL] * size
    for added in spec.get("added_tokens") or []:
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    tokens = [by_id[i] for i in range(size)]
    if not merges:  # llama.cpp requires a merge list and GGUF holds no empty array
        pair = byte_symbols()[0] * 2
        merges = [f"{pair} {pair}"]  # two 2-symbol pieces: no merge makes one, never applies
    nul = vocab.get(byte_symbols()[0])
    eos = end_token(tokenizer)
    eos = eos if eos is not None else (nul if nul is not None else 0)
    added_bos = _added_bos(spec)
    bos = added_bos if added_bos is not None else begin_token(tokenizer)
    return GGUFVocabulary(tokens, types, merges, pre, eos if bos is None else bos, eos,
                          added_bos is not None)
