"""Per-epoch metrics (JSONL) and the final results over seeds (plots: :mod:`tern_jax.report`).

Every record and the results name the run's loss (``loss_name``, declared by its model
family: ``bits/byte`` for a byte language model), so a report reads it from the run folder.
A family whose results include bits per byte (:data:`~tern_jax.train.families.BITS_PER_BYTE`)
has them per variant as ``bits_per_byte``, and its table leads with them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tern_jax.train.families import BITS_PER_BYTE, ModelFamily
from tern_jax.train.run_folder import METRICS_FILE

__all__ = ["append", "truncate", "read", "epoch_record", "epoch_line", "final_results",
           "results_table"]


def _number(x):
    """float, or None for NaN (an epoch without evaluation); JSON has no NaN."""
    x = float(x)
    return None if np.isnan(x) else x


def epoch_record(epoch, lr, seconds, slots, train_loss, train_acc, evaluation,
                 loss_name: str = "loss") -> dict:
    """One epoch's line: per model (a :class:`~tern_jax.train.config.Slot`) its figures; the
    loss's name (``bits/byte``) as the family declares it."""
    models = []
    for i, slot in enumerate(slots):
        models.append({
            "name": slot.name, "variant": slot.variant, "seed": int(slot.seed),
            "train_loss": float(train_loss[i]), "train_acc": float(train_acc[i]),
            "test_loss": _number(evaluation["test_loss"][i]),
            "test_acc": _number(evaluation["test_acc"][i]),
            "zero_fraction": _number(evaluation["zero_fraction"][i]),
        })
        if "test_bits_per_byte" in evaluation:  # a tokenizer's model: bits over bytes covered
            models[-1]["test_bits_per_byte"] = _number(evaluation["test_bits_per_byte"][i])
    return {"epoch": int(epoch), "lr": float(lr), "seconds": float(seconds),
            "loss_name": loss_name, "models": models}


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
        path = path / METRICS_FILE
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


def _spread(values) -> dict:
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def final_results(path, config, family: ModelFamily) -> dict:
    """Final-epoch test accuracy per model and mean/spread per variant (never the best epoch).

    A family whose results include bits per byte (a language model) gives its variants
    ``bits_per_byte`` too (the final validation loss, per seed and as mean/std), the figure
    its table leads with.
    """
    records = read(path)
    if not records:
        return {"name": config.name, "epochs": 0, "loss_name": family.loss_name_of(config),
                "variants": {}}
    last = records[-1]
    variants = {}
    for variant in config.model.variants:
        accs = [m["test_acc"] for m in last["models"] if m["variant"] == variant]
        variants[variant] = {
            "test_acc": accs,
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            "min": float(np.min(accs)), "max": float(np.max(accs)),
            "zero_fraction": float(np.mean([m["zero_fraction"] for m in last["models"]
                                            if m["variant"] == variant])),
        }
        if BITS_PER_BYTE in family.results:
            mine = [m for m in last["models"] if m["variant"] == variant]
            bits = [m.get("test_bits_per_byte", m["test_loss"]) for m in mine]
            variants[variant]["bits_per_byte"] = {"per_seed": bits, **_spread(bits)}
            if any("test_bits_per_byte" in m for m in mine):  # a tokenizer's: per token too
                per_token = [m["test_loss"] for m in mine]
                variants[variant]["bits_per_token"] = {"per_seed": per_token,
                                                       **_spread(per_token)}
    return {"name": config.name, "model": config.model.name, "dataset": config.data.dataset,
            "loss_name": family.loss_name_of(config), "epochs": last["epoch"],
            "seeds": list(config.seeds),
            "train_seconds": float(sum(r["seconds"] for r in records)), "variants": variants}


def results_table(results: dict) -> str:
    """The final table printed after a run: per variant accuracy over seeds (a language
    model: bits per byte first, then next-byte accuracy)."""
    if any("bits_per_byte" in r for r in results["variants"].values()):
        return _bits_table(results)
    lines = [f"{results['name']}: final test accuracy after {results['epochs']} epochs "
             f"(mean ± std over seeds {results.get('seeds')})",
             f"{'variant':12s} {'mean %':>8s} {'± std':>7s} {'per seed %':>24s} {'zeros':>6s}"]
    for variant, r in results["variants"].items():
        per_seed = ", ".join(f"{100 * a:.2f}" for a in r["test_acc"])
        lines.append(f"{variant:12s} {100 * r['mean']:8.2f} {100 * r['std']:7.2f} "
                     f"{per_seed:>24s} {100 * r['zero_fraction']:5.1f}%")
    return "\n".join(lines)


def _bits_table(results: dict) -> str:
    lines = [f"{results['name']}: final validation bits per byte after {results['epochs']} "
             f"epochs (mean ± std over seeds {results.get('seeds')}; lower is better)",
             f"{'variant':12s} {'bits/byte':>9s} {'± std':>7s} {'per seed':>20s} "
             f"{'next-byte acc %':>16s} {'zeros':>6s}"]
    for variant, r in results["variants"].items():
        bits = r["bits_per_byte"]
        per_seed = ", ".join(f"{b:.4f}" for b in bits["per_seed"])
        lines.append(f"{variant:12s} {bits['mean']:9.4f} {bits['std']:7.4f} {per_seed:>20s} "
                     f"{100 * r['mean']:16.2f} {100 * r['zero_fraction']:5.1f}%")
    return "\n".join(lines)
