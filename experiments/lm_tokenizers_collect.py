"""Collects the tokenizer study into experiments/results/lm_tokenizers.

    python experiments/lm_tokenizers_collect.py runs/lm_tokenizers \
        --out experiments/results/lm_tokenizers

Every run folder under the root (one per arm: ``bytes``, ``bpe1024``, ``bpe4096``, each
training fp and ternary side by side) is read through :mod:`tern_jax.report`. It writes:

* ``table.md``: one row per arm and variant: vocabulary, parameters (all / outside the
  embedding and the head), final validation bits per byte (mean ± half the spread of the
  seeds, and per seed: a byte model's loss, a BPE model's ``test_bits_per_byte``, the bits of
  its scored tokens over the bytes they cover), bits per token, the gap to the fp model of the
  same run (seed against seed), the stored size (ternary: ``tern-jax export``'s packed
  payload; fp: 16 bits a weight), the bytes of text a token covers, the training FLOPs per
  token (6 x the parameters a token passes through, attention scores apart) with the share
  the head takes, and the run's wall time;
* ``summary.json``: the table's figures; and each arm's ``config.json``, ``metrics.jsonl``,
  ``results.json`` and the ``tokenizer.json`` a BPE run keeps, no checkpoints (nor the token
  files, which the study script makes again from the standard library).

Only the public API is used (the stored sizes as the recipe study's collector measures them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

from tern_jax import report

_HERE = Path(__file__).parent


def _recipes():
    """The recipe study's collector: its stored-size measure and its ± format."""
    spec = importlib.util.spec_from_file_location("lm_recipes_collect",
                                                  _HERE / "lm_recipes_collect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _params(run: report.Run) -> dict:
    """Parameter counts of seed 0's first model: all, embedding, head."""
    import jax

    from tern_jax.train import restore_run

    restored = restore_run(run.path)
    params = jax.tree.map(lambda a: np.asarray(a[0]), restored.state.params)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    count = {"all": 0, "embed": 0, "head": 0}
    for path, leaf in flat:
        top = str(getattr(path[0], "key", path[0]))
        count["all"] += leaf.size
        if top in ("embed", "head"):
            count[top] += leaf.size
    task = restored.stack.task
    return {"params": count["all"], "embedding_params": count["embed"],
            "head_params": count["head"], "vocab": task.config.vocab_size,
            "d_model": task.config.d_model, "seq_len": task.seq_len}


def _rows(runs) -> list[dict]:
    recipes = _recipes()
    rows = []
    for run in runs:
        records = run.stages[-1].records
        last = records[-1]
        sizes = _params(run)
        steps = run.config["data"]["steps_per_epoch"] * last["epoch"]
        seconds = sum(r.get("seconds", 0.0) for r in records)
        tokens_per_step = run.config["data"]["batch_size"] * sizes["seq_len"]
        for variant in run.config["model"]["variants"]:
            models = sorted((m for m in last["models"] if m["variant"] == variant),
                            key=lambda m: m["seed"])
            per_byte = [m.get("test_bits_per_byte", m["test_loss"]) for m in models]
            per_token = [m["test_loss"] for m in models]
            non_embedding = sizes["params"] - sizes["embedding_params"] - sizes["head_params"]
            rows.append({
                "arm": run.name, "variant": variant, **sizes,
                "seeds": [m["seed"] for m in models], "steps": steps,
                "tokens_per_step": tokens_per_step,
                "bits_per_byte": per_byte, "bits_per_token": per_token,
                "bytes_per_token": float(np.mean([t / b for t, b in zip(per_token, per_byte)])),
                # a token passes through every weight but the embedding table (a lookup)
                "train_flops_per_token": 6 * (non_embedding + sizes["head_params"]),
                "head_flops_share": sizes["head_params"] / (non_embedding
                                                            + sizes["head_params"]),
                "run_seconds": seconds,
                "finished": bool(run.results.get("variants")),
                **recipes._stored_bytes(run, variant),
            })
    for row in rows:
        fp = next((r for r in rows if r["arm"] == row["arm"] and r["variant"] == "fp"), None)
        row["gap"] = (None if fp is None or row is fp else
                      [b - fp["bits_per_byte"][fp["seeds"].index(s)]
                       for b, s in zip(row["bits_per_byte"], row["seeds"])])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the folder holding one run folder per arm")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    runs = [r for r in report.load_runs(root) if r.losses_in_bits]
    if not runs:
        raise SystemExit(f"no language-model run folders under {root}")
    order = {"bytes": 0}
    runs.sort(key=lambda r: (order.get(r.name, 1), r.name))
    rows = _rows(runs)
    pm = _recipes()._pm
    lines = [
        "Final validation bits per byte (the bits of the scored tokens over the bytes of text "
        "they cover; 256 windows of 128 tokens evenly spaced over the held-out files), mean ± "
        "half the spread of the seeds; gap: bits per byte behind the fp model of the same run, "
        "seed against seed. Every model: the same width, depth, batch and window (the same "
        "non-embedding FLOPs per step); FLOPs/token: 6 x the weights a token passes through "
        "(the head included, the embedding lookup and attention scores not). Stored: ternary "
        "models as `tern-jax export` packs them, fp at 16 bits a weight. Wall time: the whole "
        "run (both variants, both seeds, evaluation included) on a 2-core CPU shared with other "
        "work.",
        "",
        "| arm | variant | vocab | params (non-emb.) | steps | val bits/byte | per seed | "
        "gap to fp | gap per seed | bits/token | bytes/token | train FLOPs/token (head) | "
        "stored KiB | run wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        non_embedding = r["params"] - r["embedding_params"] - r["head_params"]
        gap = "-" if r["gap"] is None else pm(r["gap"])
        gap_seeds = "-" if r["gap"] is None else ", ".join(f"{g:+.3f}" for g in r["gap"])
        lines.append(
            f"| {r['arm']}{'' if r['finished'] else ' (unfinished)'} | {r['variant']} | "
            f"{r['vocab']:,} | {r['params'] / 1e6:.2f}M ({non_embedding / 1e6:.2f}M) | "
            f"{r['steps']:,} | {pm(r['bits_per_byte'])} | "
            f"{', '.join(f'{b:.3f}' for b in r['bits_per_byte'])} | {gap} | {gap_seeds} | "
            f"{np.mean(r['bits_per_token']):.3f} | {r['bytes_per_token']:.2f} | "
            f"{r['train_flops_per_token'] / 1e6:.2f}M ({100 * r['head_flops_share']:.0f}%) | "
            f"{r['stored_bytes'] / 1024:.0f} | {r['run_seconds'] / 60:.1f} min |")
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    for run in runs:
        report.copy_run_files(run, out / run.name)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
