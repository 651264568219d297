"""Collects finished runs into experiments/results/: per run its config, final metrics and a
Markdown table row per variant (final-epoch test accuracy, mean ± std over seeds).

    python experiments/collect.py RUN_DIR [RUN_DIR ...] --out experiments/results/SET
           [--plot]            also write curves.png of the runs

Copies config.json, metrics.jsonl and results.json of each run, and of the pretrain/ and
finetune/ stages of a two-stage run (no checkpoints), and prints the Markdown table it
appends to OUT/table.md. A two-stage run's epochs read "fp+finetune", e.g. 200+80.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

RUN_FILES = ("config.json", "metrics.jsonl", "results.json")


def row(results: dict, variant: str, stats: dict, card: str) -> str:
    per_seed = ", ".join(f"{100 * a:.2f}" for a in stats["test_acc"])
    epochs = results["epochs"]
    if "stages" in results:
        pre, fine = results["stages"]["pretrain"], results["stages"]["finetune"]
        epochs = pre if variant == "fp" else f"{pre}+{fine}"
    return (f"| {results['name']} | {results['model']} | {variant} | {epochs} | "
            f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f} | {per_seed} | "
            f"{100 * stats['zero_fraction']:.1f} | {results['train_seconds'] / 60:.1f} | {card} |")


HEADER = ("| run | model | variant | epochs | test acc % (mean ± std) | per seed | zeros % | "
          "train min | device |\n|---|---|---|---|---|---|---|---|---|")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu (2 cores)")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for run in map(Path, args.runs):
        results_file = run / "results.json"
        if not results_file.exists():
            raise SystemExit(f"{run} has no results.json: the run did not finish")
        results = json.loads(results_file.read_text())
        target = out / run.name
        target.mkdir(exist_ok=True)
        for name in RUN_FILES:
            if (run / name).exists():  # a two-stage run keeps its metrics in the stages
                shutil.copy(run / name, target / name)
        for stage in results.get("stages", {}):
            (target / stage).mkdir(exist_ok=True)
            for name in RUN_FILES:
                shutil.copy(run / stage / name, target / stage / name)
        for variant, stats in results["variants"].items():
            lines.append(row(results, variant, stats, args.device))
    table = out / "table.md"
    if not table.exists():
        table.write_text(HEADER + "\n")
    with open(table, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(HEADER)
    print("\n".join(lines))
    if args.plot:
        from tern_jax.train.metrics import plot_runs

        print(f"wrote {plot_runs(args.runs, out / 'curves.png')}")


if __name__ == "__main__":
    main()
