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
from pathlib import Path

from tern_jax import report
from tern_jax.presets import FULL_PRECISION


def row(results: dict, variant: str, stats: dict, card: str) -> str:
    per_seed = ", ".join(f"{100 * a:.2f}" for a in stats["test_acc"])
    epochs = results["epochs"]
    if "stages" in results:
        pre, fine = (results["stages"][s] for s in report.STAGES)
        epochs = pre if variant == FULL_PRECISION else f"{pre}+{fine}"
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
    for path in args.runs:
        run = report.load_run(path)
        if not run.results:
            raise SystemExit(f"{path} has no results.json: the run did not finish")
        report.copy_run_files(run, out / run.path.name)
        for variant, stats in run.results["variants"].items():
            lines.append(row(run.results, variant, stats, args.device))
    table = out / "table.md"
    if not table.exists():
        table.write_text(HEADER + "\n")
    with open(table, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(HEADER)
    print("\n".join(lines))
    if args.plot:
        print(f"wrote {report.plot_runs(args.runs, out / 'curves.png')}")


if __name__ == "__main__":
    main()
