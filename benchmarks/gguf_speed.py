"""llama.cpp decode speed and file size of one ternary transformer as F16, Q8_0, TQ2_0, TQ1_0.

One model (untrained weights, ternarized by the ``tern`` rules: every matrix, embedding and
head included) is exported four times with :func:`tern_jax.export.to_gguf` and each file is
loaded in llama.cpp (``pip install llama-cpp-python``). Decode speed: after a prompt, tokens
fed one at a time (``Llama.eval([token])``: one forward pass of a single token through the
KV cache), timed over ``--tokens`` tokens in wall time and in the process's CPU time; the
types take turns for ``--rounds`` rounds and the best round of each is reported. On a shared
machine the best round is the least disturbed one, and with one thread (the default) the CPU
time is what decoding costs whatever else runs. Sizes: the file, and its split into
ternary-tensor bytes, full-precision tensor bytes and the rest (header, metadata,
alignment), with bits per ternary weight.

    python benchmarks/gguf_speed.py --out experiments/results/export/speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from flax import nnx

from tern_jax import fs
from tern_jax.export import to_gguf
from tern_jax.models.transformer import Transformer, TransformerConfig
from tern_jax.presets import TRANSFORMER_RULES

TYPES = ("f16", "q8_0", "tq2_0", "tq1_0")


def file_accounting(path: Path) -> dict:
    """Bytes of the file by kind (read back with the ``gguf`` package's reader)."""
    import gguf

    reader = gguf.GGUFReader(path)
    ternary = {gguf.GGMLQuantizationType.TQ1_0, gguf.GGMLQuantizationType.TQ2_0}
    out = {"file_bytes": path.stat().st_size, "ternary_tensor_bytes": 0,
           "other_tensor_bytes": 0, "ternary_weights": 0, "other_weights": 0}
    for t in reader.tensors:
        kind = "ternary" if t.tensor_type in ternary else "other"
        out[f"{kind}_tensor_bytes"] += int(t.n_bytes)
        out[f"{kind}_weights"] += int(t.n_elements)
    out["header_and_padding_bytes"] = (out["file_bytes"] - out["ternary_tensor_bytes"]
                                       - out["other_tensor_bytes"])
    return out


def decode_speed(llm, prompt: list[int], tokens: int) -> tuple[float, float]:
    """Decoded tokens per second of wall time and per second of this process's CPU time."""
    llm.reset()
    llm.eval(prompt)
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(tokens):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d_model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--mlp_ratio", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32, help="decoded tokens per timing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    import llama_cpp

    config = TransformerConfig(max_len=512, d_model=args.d_model, num_heads=args.heads,
                               num_layers=args.layers, mlp_ratio=args.mlp_ratio,
                               num_kv_heads=args.kv_heads, mlp="swiglu")
    params = nnx.state(Transformer(config, rngs=nnx.Rngs(0)), nnx.Param)
    rules = TRANSFORMER_RULES["tern"]
    prompt = list(b"def main(argv=None):\n    ")
    result = {"command": "python benchmarks/gguf_speed.py " + " ".join(argv),
              "model": {k: getattr(config, k) for k in ("d_model", "num_layers", "num_heads",
                                                        "num_kv_heads", "mlp", "mlp_ratio")},
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "threads": args.threads, "decode_tokens": args.tokens, "rounds": args.rounds,
              "llama_cpp_python": llama_cpp.__version__, "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for type_ in TYPES:
            path = to_gguf(Path(tmp) / f"bench_{type_}.gguf", params, config, rules, type=type_)
            result["types"][type_] = file_accounting(path) | {"tokens_per_s": [],
                                                              "tokens_per_cpu_s": []}
            models[type_] = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True,
                                            verbose=False,
                                            n_threads=args.threads, n_batch=64)
        for _ in range(args.rounds):
            for type_, llm in models.items():
                wall, cpu = decode_speed(llm, prompt, args.tokens)
                result["types"][type_]["tokens_per_s"].append(wall)
                result["types"][type_]["tokens_per_cpu_s"].append(cpu)
    for entry in result["types"].values():
        entry["best_tokens_per_s"] = max(entry["tokens_per_s"])
        entry["best_tokens_per_cpu_s"] = max(entry["tokens_per_cpu_s"])
        if entry["ternary_weights"]:
            entry["bits_per_ternary_weight"] = (8 * entry["ternary_tensor_bytes"]
                                                / entry["ternary_weights"])
    f16 = result["types"]["f16"]
    for entry in result["types"].values():
        entry["speed_vs_f16"] = entry["best_tokens_per_s"] / f16["best_tokens_per_s"]
        entry["cpu_speed_vs_f16"] = entry["best_tokens_per_cpu_s"] / f16["best_tokens_per_cpu_s"]
    tq1 = result["types"]["tq1_0"]
    weights = tq1["ternary_weights"]
    budget = 1.75 * weights / 8 + tq1["other_tensor_bytes"]
    result["tq1_0_size_target"] = {
        "ternary_weights": weights, "budget_bytes_1.75_bits_plus_fp": budget,
        "file_bytes": tq1["file_bytes"], "met": tq1["file_bytes"] <= budget,
        "file_bits_per_ternary_weight_after_fp": 8 * (tq1["file_bytes"]
                                                      - tq1["other_tensor_bytes"]) / weights}
    print(json.dumps(result, indent=1))
    if args.out:
        fs.write_owned_text(args.out, json.dumps(result, indent=1) + "\n",
                            what="benchmark figures")
    return result


if __name__ == "__main__":
    main()
