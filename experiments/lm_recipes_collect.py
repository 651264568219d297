"""Collects the language-model recipe study into experiments/results/lm_recipes.

    python experiments/lm_recipes_collect.py runs/lm_recipe --out experiments/results/lm_recipes

Every run folder under the root (one per arm, e.g. ``runs/lm_recipe/finetune_half``, one- or
two-stage) is read through :mod:`tern_jax.report`. It writes:

* ``table.md``: one row per arm and variant: model width, steps per model, final validation
  bits per byte (mean ± half the spread of the seeds, and per seed), the gap to the fp arm of
  the reference: the best full-precision arm (one stage, fp alone) of the same width, trained
  as many steps (per seed: same seed against same seed), the stored size of the model
  (ternary: the packed payload ``tern-jax export`` writes; fp: 16 bits a weight), and the run's
  wall time (all the models the run trains together, every stage, evaluation included);
* ``curves.png``: validation bits per byte against training steps (mean of the seeds) for the
  arms at the study's width, and the gap to fp against width;
* ``summary.json``: the table's figures; and each arm's ``config.json``, ``metrics.jsonl`` and
  ``results.json`` (per stage for a two-stage arm), no checkpoints.

A model that trained fewer steps than the reference (the first stage of a two-stage arm) is
listed but not compared. Only the public API is used.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from tern_jax import report

#: Arms that are another arm's recipe at another width: ``lm_recipe_wide`` is ternary from
#: scratch at d_model 256.
RECIPE_OF = {"lm_recipe_wide": "lm_recipe_scratch"}


def _width(config: dict) -> int:
    """The model's d_model as a run's ``config.json`` states it: ``model.kwargs`` over the
    named size."""
    from tern_jax.models import transformer_config

    model = config["model"]
    return transformer_config(model["name"], **model.get("kwargs", {})).d_model


def _stored_bytes(run: report.Run, variant: str) -> dict:
    """Parameter count and stored bytes of seed 0's model of ``variant`` in ``run``."""
    import jax

    import tern_jax
    from tern_jax.presets import is_full_precision_rules
    from tern_jax.train import restore_run

    folder = run.path
    restored = restore_run(folder)
    if variant not in restored.config.model.variants:  # the first stage's fp model
        restored = restore_run(folder / "pretrain")
    config = restored.config
    i = config.slots.index(next(s for s in config.slots if s.variant == variant))
    params = jax.tree.map(lambda a: np.asarray(a[i]), restored.state.params)
    rules = restored.resolved.family.rules(variant)
    summary = tern_jax.summary(params, rules, print_fn=None, unused="ignore")
    fp = is_full_precision_rules(rules)
    stored = summary.total_params * 2 if fp else summary.bytes_packed  # fp at 16 bits
    return {"params": summary.total_params, "stored_bytes": int(stored),
            "fp32_bytes": summary.bytes_fp32}


def _rows(runs) -> list[dict]:
    rows = []
    for run in runs:
        config = run.stages[-1].config or run.config
        steps_per_epoch = config["data"]["steps_per_epoch"]
        seconds = sum(r.get("seconds", 0.0) for s in run.stages for r in s.records)
        by_variant: dict[str, list] = {}
        for c in report.curves([run]):
            by_variant.setdefault(c.variant, []).append(c)
        for variant, curves in by_variant.items():
            curves.sort(key=lambda c: c.model)
            finals = [next(x for x in reversed(c.test_loss) if x is not None) for c in curves]
            steps = [c.epochs[-1] * steps_per_epoch for c in curves]
            rows.append({
                "arm": run.name, "config": run.config.get("name"), "model": run.model,
                "width": _width(run.config), "variant": variant,
                "seeds": [int(c.model.rsplit("seed", 1)[1]) for c in curves],
                "steps": max(steps), "bits_per_byte": finals,
                "curve_steps": [e * steps_per_epoch for e in curves[0].epochs],
                "curve_mean": np.mean([[x for x in c.test_loss] for c in curves], 0).tolist(),
                "run_seconds": seconds, "run": run,
                "finished": bool(run.results.get("variants")),
                "fp_arm": (variant == "fp" and len(run.stages) == 1
                           and set(run.config["model"]["variants"]) == {"fp"}
                           and bool(run.results.get("variants"))),
            })
    return rows


def _size(row) -> tuple[str, int]:
    """What a row's model is: its named model (``config.json``'s) and its width."""
    return row["run"].config["model"]["name"], row["width"]


def _fp_reference(rows, size: tuple[str, int]) -> dict | None:
    """The best full-precision arm of a model and width (lowest mean): the fp twin at its best
    rate."""
    fps = [r for r in rows if r["fp_arm"] and _size(r) == size]
    return min(fps, key=lambda r: np.mean(r["bits_per_byte"]), default=None)


def _recipe(row) -> str:
    """The recipe a row's model followed, as named in the width table."""
    config = RECIPE_OF.get(row["config"], row["config"])
    return f"{config.removeprefix('lm_recipe_')}: {row['variant']}"


def _width_table(rows) -> list[str]:
    """Per width: fp and every ternary recipe run at more than one width, with the gap; then
    each ternary model against the fp model of half its width (about the same stored bytes)."""
    fp = {r["width"]: r for r in rows if r["reference"]}
    recipes: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["gap"] is not None:
            recipes.setdefault(_recipe(r), {})[r["width"]] = r
    recipes = {k: v for k, v in recipes.items() if len(v) > 1}
    if len(fp) < 2 or not recipes:
        return []
    lines = ["", "The gap against width (bits per byte behind the best fp arm of the same "
             "width, mean ± half the spread of the seeds):", "",
             "| d_model | params | fp | " + " | ".join(recipes) + " |",
             "|---|---|---|" + "---|" * len(recipes)]
    for width in sorted(fp):
        cells = [f"{np.mean(v[width]['bits_per_byte']):.3f} (gap {_pm(v[width]['gap'])})"
                 if width in v else "-" for v in recipes.values()]
        lines.append(f"| {width} | {fp[width]['params'] / 1e6:.2f}M | "
                     f"{np.mean(fp[width]['bits_per_byte']):.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Equal bytes: each ternary model against the fp model of half its width "
              "(stored KiB, bits per byte; negative: the ternary model is better):", ""]
    for name, by_width in recipes.items():
        for width, r in sorted(by_width.items()):
            half = fp.get(width // 2)
            if half is not None and half["seeds"] == r["seeds"]:
                diff = np.mean(r["bits_per_byte"]) - np.mean(half["bits_per_byte"])
                lines.append(f"- {name} at d_model {width} ({r['stored_bytes'] / 1024:.0f} KiB): "
                             f"{np.mean(r['bits_per_byte']):.3f} against fp at d_model "
                             f"{width // 2} ({half['stored_bytes'] / 1024:.0f} KiB): "
                             f"{np.mean(half['bits_per_byte']):.3f}, {diff:+.3f}")
    return lines


def _pm(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():.3f} ± {(values.max() - values.min()) / 2:.3f}"


def _plot(rows, width: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom, gap) = plt.subplots(1, 3, figsize=(17, 5))
    mine = [r for r in rows if r["width"] == width
            and (r["variant"] != "fp" or r["fp_arm"])]
    colours = itertools.cycle(plt.cm.tab20(np.arange(20)))
    dashes = itertools.cycle(["--", ":", "-."])
    for r in mine:
        label = f"{r['arm']}: {r['variant']}" + (" (reference)" if r["reference"] else "")
        if r["variant"] == "fp":
            style = dict(color="black", lw=2, ls="-" if r["reference"] else next(dashes))
        else:
            style = dict(color=next(colours), lw=1.5)
        for a in (ax, zoom):
            a.plot(r["curve_steps"], r["curve_mean"], label=label, **style)
    if mine:
        finals = [r["curve_mean"][-1] for r in mine]
        zoom.set_ylim(min(finals) - 0.05, max(finals) + 0.25)
        zoom.set_xlim(max(r["steps"] for r in mine) * 0.4, None)
    for a, title in ((ax, f"d_model {width}: validation bits per byte (mean of seeds)"),
                     (zoom, "the last 60% of the steps")):
        a.set_xlabel("training steps (of each model)")
        a.set_ylabel("validation bits per byte")
        a.set_title(title)
        a.grid(alpha=0.3)
    ax.legend(fontsize=7)
    series: dict[str, list] = {}
    for r in rows:
        if r.get("gap") is not None:
            series.setdefault(_recipe(r), []).append((r["width"], np.mean(r["gap"])))
    for name, points in sorted(series.items()):
        if len(points) > 1:
            xs, ys = zip(*sorted(points))
            gap.plot(xs, ys, "o-", label=name)
    gap.axhline(0.05, color="grey", ls=":", label="target: 0.05")
    gap.set_xscale("log", base=2)
    widths = sorted({r["width"] for r in rows})
    gap.set_xticks(widths, [str(w) for w in widths])
    gap.minorticks_off()
    gap.set_xlabel("d_model")
    gap.set_ylabel("bits per byte behind fp of the same width")
    gap.set_title("gap to full precision against width (mean of seeds)")
    gap.grid(alpha=0.3)
    gap.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the folder holding one run folder per arm")
    parser.add_argument("--out", required=True)
    parser.add_argument("--width", type=int, default=128, help="the width the curves show")
    args = parser.parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    runs = [r for r in report.load_runs(root) if r.losses_in_bits]
    if not runs:
        raise SystemExit(f"no language-model run folders under {root}")
    rows = _rows(runs)
    refs = {size: _fp_reference(rows, size) for size in {_size(r) for r in rows}}
    for row in rows:
        ref = refs[_size(row)]
        row["reference"] = ref is row
        comparable = (ref is not None and ref is not row and row["steps"] == ref["steps"]
                      and set(row["seeds"]) <= set(ref["seeds"]))
        row["gap"] = ([b - ref["bits_per_byte"][ref["seeds"].index(s)]
                       for b, s in zip(row["bits_per_byte"], row["seeds"])]
                      if comparable else None)
        row.update(_stored_bytes(row["run"], row["variant"]))
    rows.sort(key=lambda r: (r["width"], not r["fp_arm"], r["arm"], r["variant"]))
    lines = [
        "Final validation bits per byte (256 windows of 128 bytes from the held-out files of "
        "the corpus), mean ± half the spread of the seeds; gap: bits per byte behind the "
        "reference (**ref**): the best full-precision arm of the same width, same seed against "
        "same seed, for models trained as many steps. Stored: ternary models as `tern-jax "
        "export` packs them, fp at 16 bits a weight. Wall time: the whole run (every model it "
        "trains together, every stage, evaluation included) on a 2-core CPU.",
        "",
        "| arm | variant | d_model | params | steps | val bits/byte | per seed | gap to fp | "
        "gap per seed | stored KiB | run wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = "-" if r["gap"] is None else _pm(r["gap"])
        gap_seeds = "-" if r["gap"] is None else ", ".join(f"{g:+.3f}" for g in r["gap"])
        done = (" (**ref**)" if r["reference"] else "") + ("" if r["finished"] else
                                                             " (unfinished)")
        lines.append(
            f"| {r['arm']}{done} | {r['variant']} | {r['width']} | {r['params'] / 1e6:.2f}M | "
            f"{r['steps']:,} | {_pm(r['bits_per_byte'])} | "
            f"{', '.join(f'{b:.3f}' for b in r['bits_per_byte'])} | {gap} | {gap_seeds} | "
            f"{r['stored_bytes'] / 1024:.0f} | {r['run_seconds'] / 60:.1f} min |")
    table = "\n".join(lines + _width_table(rows)) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    summary = [{k: v for k, v in r.items() if k != "run"} for r in rows]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for run in runs:
        report.copy_run_files(run, out / run.name)
    _plot(rows, args.width, out / "curves.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
