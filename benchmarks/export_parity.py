"""Do the exports of a BPE language model compute what tern_jax computes? Measured end to end.

On a text corpus (by default Python standard-library sources, split by file), this trains a
byte-level BPE tokenizer with the ``tokenizers`` package and two small ternary transformers
on its tokens with tern_jax (the ``tern_a8`` rules for GGUF, ``tern_hf`` for transformers),
exports them and compares on held-out windows:

* transformers (``to_hf`` folder, ``AutoModelForCausalLM`` on CPU): logits, bits per byte
  (total nats over the bytes the scored tokens cover), greedy tokens; and the tokenizer files
  (``AutoTokenizer``) against ``tokenizers`` on held-out lines and adversarial strings;
* llama.cpp (``to_gguf`` file) through ``llama-cpp-python`` when it is installed: tokenization
  of the same strings, logits, bits per byte, greedy tokens.

``--dump DIR`` also writes what another llama.cpp front end needs to measure the GGUF side
(the GGUF file, the strings with their ``tokenizers`` ids, the windows, prompts and tern_jax's
logits and greedy tokens), as ``parity_inputs.json`` beside the file.

    python benchmarks/export_parity.py --out experiments/results/export/bpe_parity.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tern_jax import fs
from tern_jax.export import to_gguf
from tern_jax.export_hf import to_hf
from tern_jax.export_vocab import byte_symbols
from tern_jax.models.transformer import Transformer, TransformerConfig
from tern_jax.nnx_utils import ternarized
from tern_jax.presets import TRANSFORMER_RULES

#: Strings where tokenizers disagree if any do: whitespace runs, tabs and newlines, non-ASCII
#: letters, emoji, digit runs, contractions, the replacement character of invalid UTF-8,
#: special-token text.
ADVERSARIAL = [
    "", " ", "  ", "   x", "x   ", "\t", "\t\t\tdef", "\n", "\n\n\n", " \n \n", "\r\n", "a\u00a0b",
    "   \t  \n\t  end", "word  \n  word", "tab\tsep\tvalues\t", "trailing spaces   ",
    "it's I'm you're we've they'll he'd IT'S", "don't can't won't 'quoted'",
    "12345678901234567890", "3.14159 2.71828 1e-10 0x1F", "1,000,000 and 1 000 000",
    "Déjà vu, naïve café", "Größe Straße", "Ærøskøbing ñandú İstanbul", "Числа и слова",
    "東京タワー 2024年", "مرحبا بالعالم", "हिन्दी भाषा", "🙂🚀✓", "👨‍👩‍👧‍👦 family", "a🙂b 🙂 c",
    "“curly” ‘quotes’ — dash … ellipsis", "\u200bzero\u200bwidth", "combining e\u0301",
    "\ufffd\ufffd bad bytes", b"caf\xe9 \xff\xfe \xe2\x82".decode("utf-8", "replace"),
    "<|endoftext|>", "text<|endoftext|>more", "def f(x):\n    return x  # comment",
    "    if a == b:\n        pass\n", "x=1;y=2\n\n\nz=3", "ﬁ ligature ½ ² ℌ", "\x00\x01\x7f",
]


def corpus(limit: int, val_share: float = 0.1):
    """Standard-library sources: (train text, validation text), split by file."""
    root = Path(os.__file__).parent
    files = sorted(p for p in root.glob("*.py"))
    texts, size = [], 0
    for p in files:
        t = p.read_text(errors="replace")
        texts.append(t)
        size += len(t.encode())
        if size >= limit:
            break
    cut = max(1, int(len(texts) * (1 - val_share)))
    return "".join(texts[:cut]), "".join(texts[cut:])


def train_tokenizer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tok


def token_bytes(tok) -> np.ndarray:
    """Bytes each token stands for (special tokens: their text's)."""
    inverse = {s: b for b, s in enumerate(byte_symbols())}
    out = np.zeros(tok.get_vocab_size(), np.int64)
    for token, i in tok.get_vocab(with_added_tokens=True).items():
        out[i] = len(token) if all(c in inverse for c in token) else len(token.encode())
    return out


def train(config, rules, tokens: np.ndarray, steps: int, batch: int, lr: float, seed: int):
    model = Transformer(config, rngs=nnx.Rngs(seed))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), steps)
    optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        def loss_fn(model):
            logits = ternarized(model, rules, unused="ignore")(x[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    window = config.max_len + 1
    loss = None
    for _ in range(steps):
        starts = rng.integers(0, tokens.size - window, batch)
        x = jnp.asarray(np.stack([tokens[s:s + window] for s in starts]), jnp.int32)
        loss = step(model, optimizer, x)
    return model, float(loss)


def nats(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``-log softmax(logits)[target]`` per position (float64)."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def bits_per_byte(logits, targets, nbytes) -> float:
    return float(nats(logits, targets).sum() / math.log(2) / nbytes[targets].sum())


def compare(theirs, ours, targets, nbytes) -> dict:
    diff = np.abs(theirs - ours)
    return {"bpb": bits_per_byte(theirs, targets, nbytes),
            "bpb_difference": bits_per_byte(theirs, targets, nbytes)
            - bits_per_byte(ours, targets, nbytes),
            "mean_abs_logit_diff": float(diff.mean()), "max_abs_logit_diff": float(diff.max()),
            "argmax_agreement": float(np.mean(theirs.argmax(-1) == ours.argmax(-1)))}


def greedy(next_logits, prompt, steps) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(next_logits(ids))))
    return ids[len(prompt):]


def same_share(a, b) -> float:
    return float(np.mean([x == y for p, q in zip(a, b) for x, y in zip(p, q)]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus_bytes", type=int, default=1_500_000)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--greedy_steps", type=int, default=32)
    parser.add_argument("--lines", type=int, default=500, help="held-out lines tokenized")
    parser.add_argument("--dump", default=None, help="write the GGUF side's inputs here")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    t0 = time.time()
    train_text, val_text = corpus(args.corpus_bytes)
    tok = train_tokenizer(train_text, args.vocab)
    nbytes = token_bytes(tok)
    config = TransformerConfig(vocab_size=tok.get_vocab_size(), max_len=64, d_model=256,
                               num_heads=4, num_kv_heads=2, num_layers=2, mlp_ratio=2,
                               mlp="swiglu")
    tokens = np.asarray(tok.encode(train_text).ids, np.int32)
    val = np.asarray(tok.encode(val_text).ids, np.int32)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, val.size - config.max_len - 1, args.windows)
    windows = np.stack([val[s:s + config.max_len + 1] for s in starts])
    inputs, targets = windows[:, :-1], windows[:, 1:]
    prompts = [val[s:s + args.prompt_len].tolist() for s in
               rng.integers(0, val.size - args.prompt_len, args.prompts)]
    lines = [line for line in val_text.splitlines(keepends=True) if line.strip()][: args.lines]
    result = {"command": "python benchmarks/export_parity.py " + " ".join(argv),
              "corpus": {"train_bytes": len(train_text.encode()),
                         "validation_bytes": len(val_text.encode()),
                         "train_tokens": int(tokens.size), "validation_tokens": int(val.size)},
              "vocab_size": tok.get_vocab_size(), "windows": args.windows,
              "tokens_scored": int(targets.size), "bytes_scored": int(nbytes[targets].sum()),
              "prompts": args.prompts, "greedy_steps": args.greedy_steps}
    models = {}
    for variant in ("tern_a8", "tern_hf"):
        rules = TRANSFORMER_RULES[variant]
        model, loss = train(config, rules, tokens, args.steps, args.batch, args.lr, 0)
        ours = ternarized(model, rules, unused="ignore")
        forward = jax.jit(lambda x, m=ours: m(x))
        logits = np.asarray(forward(jnp.asarray(inputs)))

        def next_logits(ids, forward=forward):
            window = np.zeros((1, config.max_len), np.int32)
            window[0, :len(ids)] = ids
            return np.asarray(forward(jnp.asarray(window)))[0, len(ids) - 1]

        models[variant] = (model, rules, logits, [greedy(next_logits, p, args.greedy_steps)
                                                  for p in prompts])
        result[variant] = {"train_loss_last_step": loss,
                           "tern_jax_bpb": bits_per_byte(logits, targets, nbytes)}
    with tempfile.TemporaryDirectory() as tmp:
        result["hf"] = _hf(Path(tmp), tok, config, models["tern_hf"], inputs, targets, nbytes,
                           prompts, args.greedy_steps, lines)
        gguf_path = Path(args.dump or tmp) / "model_tq2_0.gguf"
        Path(gguf_path.parent).mkdir(parents=True, exist_ok=True)
        model, rules, logits, ours_greedy = models["tern_a8"]
        to_gguf(gguf_path, nnx.state(model, nnx.Param), config, rules, type="tq2_0",
                tokenizer=tok, overwrite=True)
        result["gguf_file_bytes"] = gguf_path.stat().st_size
        strings = lines + ADVERSARIAL
        if args.dump:
            tok.save(str(gguf_path.parent / "tokenizer.json"))
            fs.write_owned_text(gguf_path.parent / "parity_inputs.json", json.dumps({
                "strings": strings, "ids": [tok.encode(s).ids for s in strings],
                "windows": inputs.tolist(), "targets": targets.tolist(),
                "token_bytes": nbytes.tolist(), "logits": logits.tolist(),
                "prompts": prompts, "greedy": ours_greedy, "greedy_steps": args.greedy_steps,
                "held_out_lines": len(lines)}), what="parity inputs")
        try:
            import llama_cpp
        except ImportError:
            result["llama_cpp"] = "not installed: measured elsewhere from --dump"
        else:
            result["llama_cpp"] = _llama(llama_cpp, gguf_path, tok, strings, len(lines), inputs,
                                         targets, nbytes, logits, prompts, ours_greedy,
                                         args.greedy_steps, config)
    result["seconds"] = time.time() - t0
    print(json.dumps(result, indent=1))
    if args.out:
        fs.write_owned_text(args.out, json.dumps(result, indent=1) + "\n", what="parity figures")
    return result


def _tokenization(encode, tok, strings, n_lines) -> dict:
    same = [encode(s) == tok.encode(s).ids for s in strings]
    return {"held_out_lines": n_lines, "held_out_same": int(sum(same[:n_lines])),
            "adversarial": len(strings) - n_lines, "adversarial_same": int(sum(same[n_lines:])),
            "different": [s for s, ok in zip(strings, same) if not ok]}


def _hf(tmp, tok, config, trained, inputs, targets, nbytes, prompts, steps, lines) -> dict:
    import torch
    import transformers

    model, rules, logits, ours_greedy = trained
    path = to_hf(tmp / "hf", nnx.state(model, nnx.Param), config, rules, tokenizer=tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        theirs = hf(torch.tensor(inputs, dtype=torch.long)).logits.numpy()

    def next_logits(ids):
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0, -1].numpy()

    greedy_hf = [greedy(next_logits, p, steps) for p in prompts]
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    out = compare(theirs, logits, targets, nbytes)
    out |= {"greedy_same_tokens": same_share(greedy_hf, ours_greedy),
            "folder_bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
            "tokenizer": _tokenization(lambda s: hf_tok(s)["input_ids"], tok,
                                       lines + ADVERSARIAL, len(lines))}
    return out


def _llama(llama_cpp, path, tok, strings, n_lines, inputs, targets, nbytes, logits, prompts,
           ours_greedy, steps, config) -> dict:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=config.max_len, logits_all=True,
                          verbose=False, n_threads=2)
    out = {"tokenizer": _tokenization(
        lambda s: llm.tokenize(s.encode(), add_bos=False, special=True), tok, strings, n_lines)}
    theirs = []
    for window in inputs:
        llm.reset()
        llm.eval(window.tolist())
        theirs.append(np.array(llm.scores[: len(window)], np.float32))
    out |= compare(np.stack(theirs), logits, targets, nbytes)

    def next_logits(ids):
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[len(ids) - 1])

    out["greedy_same_tokens"] = same_share([greedy(next_logits, p, steps) for p in prompts],
                                           ours_greedy)
    return out


if __name__ == "__main__":
    main()
