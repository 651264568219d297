"""Per-epoch metrics (JSONL), the final table over seeds, and training-curve plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tern_jax.train.config import FULL_PRECISION

__all__ = ["append", "truncate", "read", "epoch_record", "epoch_line", "final_results",
           "results_table", "plot_runs"]


def _number(x):
    """float, or None for NaN (an epoch without evaluation); JSON has no NaN."""
    x = float(x)
    return None if np.isnan(x) else x


def epoch_record(epoch, lr, seconds, slots, train_loss, train_acc, evaluation) -> dict:
    """One epoch's line: per model (a :class:`~tern_jax.train.config.Slot`) its figures."""
    models = []
    for i, slot in enumerate(slots):
        models.append({
            "name": slot.name, "variant": slot.variant, "seed": int(slot.seed),
            "train_loss": float(train_loss[i]), "train_acc": float(train_acc[i]),
            "test_loss": _number(evaluation["test_loss"][i]),
            "test_acc": _number(evaluation["test_acc"][i]),
            "zero_fraction": _number(evaluation["zero_fraction"][i]),
        })
    return {"epoch": int(epoch), "lr": float(lr), "seconds": float(seconds), "models": models}


def append(path: Path, record: dict) -> None:
    """Appends one line and syncs it to disk, so a crash loses at most the epoch in flight."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read(path) -> list[dict]:
    """The records of a metrics file; a torn last line (crash mid-write) is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate(path: Path, last_epoch: int) -> None:
    """Keeps the records of epochs ``<= last_epoch`` (on resume), rewriting atomically."""
    if not path.exists():
        return
    kept = [r for r in read(path) if r["epoch"] <= last_epoch]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def epoch_line(record: dict) -> str:
    by_variant: dict[str, list] = {}
    for m in record["models"]:
        by_variant.setdefault(m["variant"], []).append(m)
    parts = [f"epoch {record['epoch']:3d} lr {record['lr']:.2e} {record['seconds']:6.1f}s"]
    for variant, models in by_variant.items():
        accs = [m["test_acc"] for m in models if m["test_acc"] is not None]
        test = f"{100 * np.mean(accs):.2f}%" if accs else "-"
        parts.append(f"{variant}: loss {np.mean([m['train_loss'] for m in models]):.3f} "
                     f"test {test}")
    return " | ".join(parts)


def final_results(path, config) -> dict:
    """Final-epoch test accuracy per model and mean/spread per variant (never the best epoch)."""
    records = read(path)
    if not records:
        return {"name": config.name, "epochs": 0, "variants": {}}
    last = records[-1]
    variants = {}
    for variant in config.variants:
        accs = [m["test_acc"] for m in last["models"] if m["variant"] == variant]
        variants[variant] = {
            "test_acc": accs,
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            "min": float(np.min(accs)), "max": float(np.max(accs)),
            "zero_fraction": float(np.mean([m["zero_fraction"] for m in last["models"]
                                            if m["variant"] == variant])),
        }
    return {"name": config.name, "model": config.model, "dataset": config.dataset,
            "epochs": last["epoch"], "seeds": list(config.seeds),
            "train_seconds": float(sum(r["seconds"] for r in records)), "variants": variants}


def results_table(results: dict) -> str:
    lines = [f"{results['name']}: final test accuracy after {results['epochs']} epochs "
             f"(mean ± std over seeds {results.get('seeds')})",
             f"{'variant':12s} {'mean %':>8s} {'± std':>7s} {'per seed %':>24s} {'zeros':>6s}"]
    for variant, r in results["variants"].items():
        per_seed = ", ".join(f"{100 * a:.2f}" for a in r["test_acc"])
        lines.append(f"{variant:12s} {100 * r['mean']:8.2f} {100 * r['std']:7.2f} "
                     f"{per_seed:>24s} {100 * r['zero_fraction']:5.1f}%")
    return "\n".join(lines)


def _run_parts(run) -> list[Path]:
    """The metric folders of a run: itself, or the stages of a two-stage run in order."""
    run = Path(run)
    stages = [run / "pretrain", run / "finetune"]
    if not (run / "metrics.jsonl").exists() and all((s / "metrics.jsonl").exists()
                                                     for s in stages):
        return stages
    return [run]


def _plot_records(ax_acc, ax_loss, records, label_prefix, offset):
    names = [m["name"] for m in records[0]["models"]]
    epochs = [offset + r["epoch"] for r in records]
    for i, name in enumerate(names):
        acc = [np.nan if r["models"][i]["test_acc"] is None
               else 100 * r["models"][i]["test_acc"] for r in records]
        loss = [r["models"][i]["train_loss"] for r in records]
        style = "-" if records[0]["models"][i]["variant"] == FULL_PRECISION else "--"
        evaluated = [(e, a) for e, a in zip(epochs, acc) if not np.isnan(a)]
        ax_acc.plot(*zip(*evaluated), style, label=f"{label_prefix}:{name}", linewidth=1.2)
        ax_loss.plot(epochs, loss, style, label=f"{label_prefix}:{name}", linewidth=1.2)


def plot_runs(run_dirs, out_png, *, title: str | None = None) -> Path:
    """Test accuracy and train loss per epoch of every model of one or more runs, to PNG.

    A two-stage run (``pretrain/`` then ``finetune/``) is drawn as one timeline: the
    fine-tuning epochs continue after the full-precision ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for run in run_dirs:
        label_prefix = Path(run).name
        offset = 0
        for part in _run_parts(run):
            records = read(part)
            if not records:
                raise ValueError(f"{part} has no metrics.jsonl records to plot")
            _plot_records(ax_acc, ax_loss, records, label_prefix, offset)
            offset += records[-1]["epoch"]
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="train loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    import io

    from tern_jax import fs

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    # replaces only a plot tern_jax wrote there before (never a user's file)
    fs.write_owned_bytes(out_png, buffer.getvalue(), what="a plot (tern-jax plot)")
    return out_png
