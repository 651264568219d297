"""Does llama.cpp compute what tern_jax computes? A trained run, exported to GGUF, compared.

For one model of a language-model run (``tern-jax train``), this exports GGUF files
(``tern_jax.export.to_gguf``), loads them in llama.cpp (``pip install llama-cpp-python``) and
compares on the run's own validation windows (the trainer's ``test_loss`` windows):

* next-byte logits, llama.cpp against tern_jax with and without 8-bit activations (the rules'
  ``activations`` on, and off): mean and max absolute difference, argmax agreement;
* validation bits per byte from llama.cpp's logits against tern_jax's (and the trainer's
  ``test_loss`` of the same checkpoint, which tern_jax's figure must reproduce);
* greedy generation (temperature 0) from prompts cut from the validation text: the fraction of
  generated positions where llama.cpp and ``tern_jax.models.transformer.generate`` give the
  same byte.

    python benchmarks/gguf_parity.py --workdir runs/lm_gguf --model tern_a8/seed0 \\
        --out experiments/results/export/parity.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from tern_jax import fs
from tern_jax.data.text import eval_windows
from tern_jax.export import to_gguf
from tern_jax.models.transformer import Transformer, generate
from tern_jax.nnx_utils import ternarized, with_params
from tern_jax.train import restore_run


def bits_per_byte(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean ``-log2 softmax(logits)[target]`` over every position."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return float(np.mean(log_z - picked) / math.log(2.0))


def llama_logits(llm, windows: np.ndarray) -> np.ndarray:
    """llama.cpp's logits ``(n, T, vocab)`` at every position of each window (fresh cache)."""
    out = []
    for window in windows:
        llm.reset()
        llm.eval(window.tolist())
        out.append(np.array(llm.scores[: len(window)], np.float32))
    return np.stack(out)


def llama_greedy(llm, prompt: bytes, steps: int) -> bytes:
    llm.reset()
    tokens = list(prompt)
    llm.eval(tokens)
    generated = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        generated.append(token)
        llm.eval([token])
    return bytes(generated)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--model", default="tern_a8/seed0")
    parser.add_argument("--windows", type=int, default=None,
                        help="validation windows (default: the run's test_subset)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64, help="greedy bytes per prompt")
    parser.add_argument("--types", default="tq2_0,tq1_0,f16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    import llama_cpp

    restored = restore_run(args.workdir)
    config = restored.config
    slot = next(s for s in config.slots if s.name == args.model)
    i = config.slots.index(slot)
    params = jax.tree.map(lambda a: np.asarray(a[i]), restored.state.params)
    rules = restored.resolved.family.rules(slot.variant)
    tconfig = restored.stack.task.config
    model = with_params(nnx.eval_shape(lambda: Transformer(tconfig, rngs=nnx.Rngs(0))), params)
    without = tuple(dataclasses.replace(r, activations=None) for r in rules)
    models = {"a8": ternarized(model, rules, unused="ignore"),
              "fp_acts": ternarized(model, without, unused="ignore")}

    dataset = restored.resolved.dataset.open(config)  # the run's corpus, as the trainer reads it
    windows = eval_windows(dataset.validation, restored.stack.task.seq_len,
                           args.windows or config.data.test_subset).astype(np.int32)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    ours = {k: np.asarray(jax.jit(lambda x, m=m: m(x))(inputs)) for k, m in models.items()}
    result = {
        "command": "python benchmarks/gguf_parity.py " + " ".join(argv),
        "run": str(args.workdir), "model": args.model, "epoch": restored.epoch,
        "windows": int(windows.shape[0]), "bytes_scored": int(targets.size),
        "trainer_test_bpb": _trainer_test_loss(args.workdir, restored.epoch, i),
        "tern_jax_bpb": {k: bits_per_byte(v, targets) for k, v in ours.items()},
        "gguf": {},
    }
    rng = np.random.default_rng(0)
    text = np.asarray(dataset.validation)
    starts = rng.integers(0, text.size - args.prompt_len, args.prompts)
    prompts = [bytes(text[s:s + args.prompt_len].astype(np.uint8)) for s in starts]
    ours_greedy = [generate(models["a8"], p, steps=args.steps, key=jax.random.key(0),
                            temperature=0) for p in prompts]
    ours_greedy_fp = [generate(models["fp_acts"], p, steps=args.steps, key=jax.random.key(0),
                               temperature=0) for p in prompts]
    with tempfile.TemporaryDirectory() as tmp:
        for type_ in args.types.split(","):
            path = to_gguf(Path(tmp) / f"model_{type_}.gguf", params, tconfig, rules,
                           type=type_)
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=tconfig.max_len, logits_all=True,
                                  verbose=False, n_threads=args.threads)
            theirs = llama_logits(llm, inputs)
            entry = {"file_bytes": path.stat().st_size, "bpb": bits_per_byte(theirs, targets)}
            for k, v in ours.items():
                diff = np.abs(theirs - v)
                entry[f"vs_{k}"] = {
                    "bpb_difference": entry["bpb"] - result["tern_jax_bpb"][k],
                    "mean_abs_logit_diff": float(diff.mean()),
                    "max_abs_logit_diff": float(diff.max()),
                    "argmax_agreement": float(np.mean(theirs.argmax(-1) == v.argmax(-1))),
                }
            greedy = [llama_greedy(llm, p, args.steps) for p in prompts]
            for k, mine in (("a8", ours_greedy), ("fp_acts", ours_greedy_fp)):
                same = sum(a == b for g, o in zip(greedy, mine) for a, b in zip(g, o))
                entry[f"vs_{k}"]["greedy_same_bytes"] = same / (len(prompts) * args.steps)
            j = max(range(len(prompts)), key=lambda j: len(set(ours_greedy[j])))  # most varied
            entry["greedy_example"] = {"prompt": prompts[j].decode("utf-8", "replace"),
                                       "llama_cpp": greedy[j].decode("utf-8", "replace"),
                                       "tern_jax": ours_greedy[j].decode("utf-8", "replace")}
            result["gguf"][type_] = entry
            del llm
    print(json.dumps(result, indent=1))
    if args.out:
        fs.write_owned_text(args.out, json.dumps(result, indent=1) + "\n",
                            what="parity figures")
    return result


def _trainer_test_loss(workdir, epoch, index):
    """The run's own ``test_loss`` (bits per byte) for model ``index`` at ``epoch``."""
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("epoch") == epoch and "models" in record:
            return record["models"][index].get("test_loss")
    return None


if __name__ == "__main__":
    main()
