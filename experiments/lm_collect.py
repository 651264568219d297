"""Collects a language-model run into experiments/results/lm: files, table and curves.

    python experiments/lm_collect.py RUN_DIR --out experiments/results/lm
           [--benchmark BENCH.json]   tokens/s per variant from benchmarks/lm_train_step.py --json

Copies the run's config.json, metrics.jsonl and results.json (no checkpoints), writes
``table.md`` (per variant: final validation bits per byte, mean ± sample std over seeds and the
per-seed values; next-byte accuracy; fraction of zeros among the ternarized weights; the packed
size of seed 0's model, as ``tern-jax export`` writes it; training tokens/s and its ratio to
full precision from the benchmark) and ``curves.png`` (validation and training bits per byte
per epoch, one line per model, drawn by ``tern_jax.report``). Only the public API is used.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tern_jax import report


def _packed_sizes(run: Path, variants) -> dict:
    """Seed 0's model of every variant: packed payload bytes, bytes on disk, fp32 bytes."""
    import jax

    import tern_jax
    from tern_jax.train import restore_run

    restored = restore_run(run)
    config = restored.config
    sizes = {}
    for variant in variants:
        slot = next(s for s in config.slots if s.variant == variant)
        i = config.slots.index(slot)
        params = jax.tree.map(lambda a, i=i: np.asarray(a[i]), restored.state.params)
        rules = restored.resolved.family.rules(variant)
        summary = tern_jax.summary(params, rules, print_fn=None, unused="ignore")
        with tempfile.TemporaryDirectory() as tmp:
            path = tern_jax.save_ternary(Path(tmp) / "packed", params, rules, unused="ignore")
            on_disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        sizes[variant] = {"payload": summary.bytes_packed, "disk": on_disk,
                          "fp32": summary.bytes_fp32, "params": summary.total_params,
                          "ternary_params": summary.ternary_params}
    return sizes


def _plot(run: report.Run, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = report.runs_figure([run], title=title)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--benchmark", default=None)
    args = parser.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in report.RUN_FILES:
        shutil.copy2(run / name, out / name)
    loaded = report.load_run(run)
    config, records = loaded.config, loaded.stages[-1].records
    last = records[-1]["models"]
    variants = list(dict.fromkeys(m["variant"] for m in last))
    sizes = _packed_sizes(run, variants)
    bench = json.loads(Path(args.benchmark).read_text())["variants"] if args.benchmark else {}
    data, model = config["data"], config["model"]
    steps = records[-1]["epoch"] * data["steps_per_epoch"]
    from tern_jax.models import transformer_config

    seq_len = data["seq_len"] or transformer_config(model["name"], **model["kwargs"]).max_len
    tokens = steps * data["batch_size"] * seq_len
    lines = [
        f"Final validation bits per byte after {steps} steps ({tokens:,} training bytes per "
        f"model), seeds {config['seeds']}: mean ± sample std over seeds (per seed).",
        "",
        "| variant | val bits/byte | per seed | next-byte acc % | zeros % | packed KiB "
        "(payload / on disk) | vs fp32 | train tokens/s | step time / fp |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        bpb = [m["test_loss"] for m in last if m["variant"] == v]
        acc = [m["test_acc"] for m in last if m["variant"] == v]
        zeros = np.mean([m["zero_fraction"] for m in last if m["variant"] == v])
        spread = np.std(bpb, ddof=1) if len(bpb) > 1 else 0.0
        size = sizes[v]
        speed = bench.get(v)
        speed_text = (f"{speed['tokens_per_second']:,.0f} | {speed['ratio_to_fp']:.3f}"
                      if speed else "- | -")
        lines.append(
            f"| {v} | {np.mean(bpb):.3f} ± {spread:.3f} | "
            f"{', '.join(f'{b:.3f}' for b in bpb)} | {100 * np.mean(acc):.1f} | "
            f"{100 * zeros:.1f} | {size['payload'] / 1024:.1f} / {size['disk'] / 1024:.1f} | "
            f"{size['fp32'] / size['payload']:.1f}x | {speed_text} |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1))
    if args.benchmark:
        shutil.copy2(args.benchmark, out / "benchmark.json")
    _plot(loaded, out / "curves.png", f"{config['name']}: {model['name']} on "
          f"{data['dataset']}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
