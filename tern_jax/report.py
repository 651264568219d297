"""Finished training runs read back from disk: curves, final accuracies, the paper's table.

A *run folder* is what ``tern-jax train`` writes and ``experiments/collect.py`` copies into
``experiments/results/``: ``config.json``, ``metrics.jsonl`` (one JSON line per epoch, each
with every model's figures) and ``results.json`` (final-epoch accuracies per variant). A
two-stage run (full precision, then ternary fine-tuned from it) keeps its epochs in the
``pretrain/`` and ``finetune/`` subfolders and a merged ``results.json`` at the top::

    from tern_jax import report

    runs = report.load_runs("experiments/results")
    print(report.compare_table(runs))       # Markdown, beside the paper's CIFAR-10 numbers
    report.plot_curves(runs)                # test accuracy per epoch, fp solid, ternary dashed
    report.plot_grid(runs)                  # one panel per run (notebook 4)
    report.plot_runs(["runs/a"], "curves.png")  # accuracy and loss panels (tern-jax plot)

This is the one reader of run folders: the command line's ``plot``, the notebooks and
``experiments/collect.py`` all read through it. Accuracies are final-epoch figures (never the
best epoch) in percent; a language model's losses are bits per byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

from tern_jax.data.tokens import TOKENIZER_FILE
from tern_jax.presets import FULL_PRECISION
from tern_jax.train.metrics import read
from tern_jax.train.run_folder import RUN_FILES, STAGES, RunFolder

__all__ = ["PAPER_CIFAR10", "RUN_FILES", "STAGES", "Stage", "Run", "Curve", "load_run", "load_runs",
           "copy_run_files", "curves", "final_accuracy", "final_bits_per_byte", "compare_table",
           "plot_curves", "plot_format", "plot_grid", "plot_runs", "runs_figure"]

#: He, Gong & Fan (WACV 2019), CIFAR-10 top-1 test accuracy in percent: full precision
#: (``fp``), every layer ternarized (``tern``, t_ex = 1), and TTQ (Zhu et al. 2017) as the
#: paper quotes it. Keyed by the model names of :mod:`tern_jax.models`.
PAPER_CIFAR10 = {
    "resnet20": {"fp": 91.70, "tern": 91.65, "ttq": 91.13},
    "resnet32": {"fp": 92.36, "tern": 92.48, "ttq": 92.37},
    "resnet44": {"fp": 92.47, "tern": 92.71, "ttq": 92.98},
    "resnet56": {"fp": 92.68, "tern": 92.86, "ttq": 93.56},
}

class Stage(NamedTuple):
    """One training program of a run: its folder, config and per-epoch records."""

    name: str        # "" for a one-stage run, else "pretrain" or "finetune"
    path: Path
    config: dict     # config.json ({} if missing)
    records: list    # the metrics.jsonl lines, in order


class Run(NamedTuple):
    """A run folder: its name (path relative to the root searched), results and stages."""

    name: str
    path: Path
    config: dict     # the top-level config.json ({} if missing)
    results: dict    # results.json ({} while a run has not finished)
    stages: tuple    # of Stage: one, or (pretrain, finetune)

    @property
    def model(self) -> str | None:
        return self.results.get("model") or self.config.get("model", {}).get("name")

    @property
    def dataset(self) -> str | None:
        return self.results.get("dataset") or self.config.get("data", {}).get("dataset")

    @property
    def loss_name(self) -> str:
        """What the run's loss is called, as its model family declared it in the run folder
        (results, else the first metrics record): read without importing the model."""
        if "loss_name" in self.results:
            return self.results["loss_name"]
        for stage in self.stages:
            if stage.records:
                return stage.records[0].get("loss_name", "loss")
        return "loss"

    @property
    def losses_in_bits(self) -> bool:
        """Its losses are bits (a language model: per byte, or per token of its tokenizer;
        accuracy is next-token)."""
        return self.loss_name in ("bits/byte", "bits/token")


class Curve(NamedTuple):
    """One model's training curve; a two-stage run's stages as one timeline."""

    run: str
    model: str       # the model's name in the run, e.g. "tern/seed0"
    variant: str
    epochs: list     # epoch numbers, continuing across stages
    test_acc: list   # percent, None for epochs without evaluation
    train_loss: list
    test_loss: list  # None for epochs without evaluation (bits per byte for a language model)


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); a run folder's config.json and "
                         "results.json are written by tern-jax train") from e
    return value if isinstance(value, dict) else {}


def _stage(name: str, path: Path) -> Stage:
    folder = RunFolder(path)
    return Stage(name, path, _read_json(folder.config_file), read(folder.metrics_file))


def _stage_paths(path: Path) -> list[Path] | None:
    """The metric folders of the run at ``path`` (itself, or its stages in order), or None."""
    if RunFolder(path).metrics_file.exists():
        return [path]
    stages = [path / s for s in STAGES]
    if all(RunFolder(s).metrics_file.exists() for s in stages):
        return stages
    return None


def _load_run(root: Path, path: Path) -> Run:
    parts = _stage_paths(path)
    stages = ((_stage("", path),) if parts == [path]
              else tuple(_stage(p.name, p) for p in parts))
    folder = RunFolder(path)
    name = path.relative_to(root).as_posix() if path != root else path.name
    return Run(name, path, _read_json(folder.config_file), _read_json(folder.results_file),
               stages)


def load_run(path) -> Run:
    """The run folder ``path`` itself (one stage, or ``pretrain/`` and ``finetune/``).

    Raises ``FileNotFoundError`` naming the folder when it is not a run folder (no
    ``metrics.jsonl``, nor one in each stage).
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"load_run: path must be a run folder (str or Path), got "
                        f"{type(path).__name__}")
    path = Path(path).absolute()
    if _stage_paths(path) is None:
        raise FileNotFoundError(
            f"{path} is not a run folder: it has no {RunFolder(path).metrics_file.name} (nor "
            f"{' and '.join(STAGES)} stages holding one); give the --workdir of a training run")
    return _load_run(path.parent, path)


def load_runs(root) -> list[Run]:
    """Every run folder under ``root`` (``root`` itself included), sorted by path.

    A folder is a run when it holds ``metrics.jsonl``, or ``pretrain/metrics.jsonl`` and
    ``finetune/metrics.jsonl`` (a two-stage run, read as one run). Other files (tables,
    pictures, checkpoints) are ignored. An existing folder without runs gives ``[]``.

    Raises:
      TypeError: ``root`` is not a path.
      FileNotFoundError: ``root`` is not an existing folder.
    """
    if not isinstance(root, (str, Path)):
        raise TypeError(f"load_runs: root must be a folder path (str or Path), got "
                        f"{type(root).__name__}; pass e.g. 'experiments/results'")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"load_runs: root {str(root)!r} is not an existing folder; pass "
                                "the folder that holds the run folders (experiments/results)")
    runs, pending = [], [root]
    while pending:
        path = pending.pop()
        if _stage_paths(path) is not None:
            runs.append(_load_run(root, path))
            continue  # a run's own subfolders are its stages, not runs
        pending.extend(p for p in path.iterdir() if p.is_dir())
    return sorted(runs, key=lambda r: r.path.as_posix())


def copy_run_files(run: Run, target) -> None:
    """Copies the run's files (and each stage's, into ``target/STAGE``) to ``target``: its
    config, metrics and results, the copy of its tokenizer a BPE run keeps (so the config
    loads where it is copied), never its checkpoints."""
    for source in (run.path, *(s.path for s in run.stages if s.name)):
        folder = Path(target) / source.relative_to(run.path)
        folder.mkdir(parents=True, exist_ok=True)
        for name in (*RUN_FILES, TOKENIZER_FILE):
            if (source / name).exists():  # a two-stage run keeps its metrics in the stages
                shutil.copy(source / name, folder / name)


def _check_runs(runs, func: str) -> list[Run]:
    if isinstance(runs, Run):
        return [runs]
    runs = list(runs) if isinstance(runs, (list, tuple)) else runs
    if not isinstance(runs, list) or not all(isinstance(r, Run) for r in runs):
        raise TypeError(f"{func}: runs must be a Run or a list of Run (from "
                        f"tern_jax.report.load_runs), got {type(runs).__name__}")
    return runs


def curves(runs) -> list[Curve]:
    """Per model of each run, test accuracy (%) and train loss per epoch.

    The fine-tuning epochs of a two-stage run continue after the full-precision ones, and the
    full-precision curve of its first stage is the parent of every fine-tuned curve.
    """
    out = []
    for run in _check_runs(runs, "curves"):
        offset = 0
        by_model: dict[str, Curve] = {}  # a model trained on in a later stage continues
        for stage in run.stages:
            if not stage.records:
                continue
            for record in stage.records:
                for m in record.get("models", []):
                    c = by_model.setdefault(m["name"], Curve(run.name, m["name"], m["variant"],
                                                              [], [], [], []))
                    c.epochs.append(offset + int(record["epoch"]))
                    acc = m.get("test_acc")
                    c.test_acc.append(None if acc is None else 100.0 * acc)
                    c.train_loss.append(m.get("train_loss"))
                    c.test_loss.append(m.get("test_loss") if acc is not None else None)
            offset += int(stage.records[-1]["epoch"])
        out.extend(by_model.values())
    return out


def final_accuracy(run: Run) -> dict[str, float]:
    """Final-epoch test accuracy (%) per variant, mean over seeds.

    From ``results.json`` when the run finished; otherwise from the last evaluated epoch of
    each model in ``metrics.jsonl`` (a run still in progress), so a partial run still shows.
    """
    _check_runs(run, "final_accuracy")
    if run.results.get("variants"):
        return {v: 100.0 * s["mean"] for v, s in run.results["variants"].items()}
    return _last_evaluated(run, "test_acc")


def _last_evaluated(run: Run, metric: str) -> dict[str, float]:
    """Per variant, the mean over its models of ``metric`` at each model's last evaluated
    epoch (a run still in progress)."""
    last: dict[str, dict[str, float]] = {}
    for c in curves(run):
        evaluated = [a for a in getattr(c, metric) if a is not None]
        if evaluated:
            last.setdefault(c.variant, {})[c.model] = evaluated[-1]
    return {v: sum(per_model.values()) / len(per_model) for v, per_model in last.items()}


def _epochs(run: Run) -> str:
    stages = run.results.get("stages")
    if stages:
        return "+".join(str(stages[s]) for s in STAGES if s in stages)
    if run.results.get("epochs"):
        return str(run.results["epochs"])
    return str(max((r["epoch"] for s in run.stages for r in s.records), default=0))


def compare_table(runs, paper: dict | None = None) -> str:
    """A Markdown table: each variant of each run, its accuracy, and the paper's figures.

    ``paper`` maps a model name to ``{"fp": %, "tern": %}`` (default :data:`PAPER_CIFAR10`);
    its columns are filled only for CIFAR-10 runs of a model it lists, and show "-" otherwise;
    a model of ``paper`` that no run trained gets a "not run" row, so the table always shows
    the target.
    A two-stage run's epochs read "pretrain+finetune" (e.g. ``200+80``).
    """
    runs = _check_runs(runs, "compare_table")
    paper = PAPER_CIFAR10 if paper is None else paper
    if not isinstance(paper, dict):
        raise TypeError(f"compare_table: paper must be a dict of model -> {{'fp': %, 'tern': %}}"
                        f", got {type(paper).__name__}; the default is PAPER_CIFAR10")
    bits = any(run.losses_in_bits for run in runs)  # a language model's figure: bits/byte
    head = "| bits/byte " if bits else ""
    lines = [f"| run | model | variant | epochs | test acc % {head}| paper fp % "
             "| paper ternary % |",
             "| --- " * (8 if bits else 7) + "|"]
    run_models = {run.model for run in runs if run.dataset in (None, "cifar10")}
    for run in runs:
        ref = paper.get(run.model, {}) if run.dataset in (None, "cifar10") else {}
        per_bits = final_bits_per_byte(run) if run.losses_in_bits else {}
        for variant, acc in final_accuracy(run).items():
            fp, tern = ref.get("fp"), ref.get("tern")
            acc_cell = "-" if run.losses_in_bits else f"{acc:.2f}"  # next-byte accuracy: noise
            bits_cell = (f"{per_bits[variant]:.4f} | " if variant in per_bits else "- | "
                         ) if bits else ""
            lines.append(f"| {run.name} | {run.model or '-'} | {variant} | {_epochs(run)} | "
                         f"{acc_cell} | {bits_cell}{'-' if fp is None else f'{fp:.2f}'} | "
                         f"{'-' if tern is None else f'{tern:.2f}'} |")
    for model, ref in paper.items():  # the paper's rows nobody has run yet
        if model not in run_models:
            blank = "- | " if bits else ""
            lines.append(f"| not run | {model} | - | - | - | {blank}{ref['fp']:.2f} | "
                         f"{ref['tern']:.2f} |")
    return "\n".join(lines)


def final_bits_per_byte(run: Run) -> dict[str, float]:
    """A language model's final validation bits per byte per variant, mean over seeds (from
    ``results.json``; a run in progress: the last evaluated epoch of each model)."""
    _check_runs(run, "final_bits_per_byte")
    variants = run.results.get("variants") or {}
    if variants and all("bits_per_byte" in v for v in variants.values()):
        return {v: r["bits_per_byte"]["mean"] for v, r in variants.items()}
    return _last_evaluated(run, "test_loss")


_METRICS = ("test_acc", "test_loss", "train_loss")


def _axis_label(metric: str, runs) -> str:
    if metric == "test_acc":
        return "test accuracy (%)"
    which = "test" if metric == "test_loss" else "train"
    if runs and all(r.loss_name == "bits/byte" for r in runs):
        return f"{which} bits per byte"
    if runs and all(r.losses_in_bits for r in runs):
        return f"{which} bits per token"
    return f"{which} loss"


def plot_curves(runs, ax=None, *, metric: str = "test_acc"):
    """Draws every model's curve of ``runs`` on ``ax`` (a new figure if ``None``).

    One colour per variant (the same in every call, so panels compare), full precision solid
    and ternary variants dashed; labels name the run only when several are drawn. ``metric`` is
    ``"test_acc"`` (percent), ``"test_loss"`` (bits per byte for a language model; both skip
    epochs without evaluation) or ``"train_loss"``. Returns the matplotlib ``Axes``. Needs
    matplotlib (``pip install '.[plot]'`` in the checkout).
    """
    if metric not in _METRICS:
        raise ValueError(f"plot_curves: metric must be one of {', '.join(map(repr, _METRICS))}"
                         f", got {metric!r}")
    runs = _check_runs(runs, "plot_curves")
    import matplotlib.pyplot as plt  # only plotting needs matplotlib

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for c in curves(runs):
        points = [(e, y) for e, y in zip(c.epochs, getattr(c, metric)) if y is not None]
        if not points:
            continue
        style = "-" if c.variant == FULL_PRECISION else "--"
        label = c.model if len(runs) == 1 else f"{c.run}: {c.model}"
        ax.plot(*zip(*points), style, color=_colour(c.variant), marker=".", linewidth=1.2,
                label=label)
        drawn += 1
    ax.set(xlabel="epoch", ylabel=_axis_label(metric, runs))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    return ax


def _panel_metric(run: Run) -> str:
    """What a run's panel shows: bits per byte for a language model, else test accuracy, or
    the training loss when fewer than two epochs were evaluated."""
    if run.losses_in_bits:
        return "test_loss"
    evaluated = max((sum(a is not None for a in c.test_acc) for c in curves(run)), default=0)
    return "test_acc" if evaluated >= 2 else "train_loss"


def plot_grid(runs, *, cols: int = 4):
    """One panel per run (every run of ``runs``), ``cols`` panels a row; returns the Figure.

    Each panel shows :func:`_panel_metric`'s figure: a language model's validation bits per
    byte, else test accuracy (or the training loss of a run evaluated at fewer than two
    epochs).
    """
    runs = _check_runs(runs, "plot_grid")
    import matplotlib.pyplot as plt

    cols = max(1, min(cols, len(runs)))
    rows = max(1, -(-len(runs) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), squeeze=False)
    for ax, run in zip(axes.ravel(), runs):
        metric = _panel_metric(run)
        plot_curves(run, ax, metric=metric)
        ax.set_title(f"{run.name} ({_axis_label(metric, [run]).replace(' (%)', '')})",
                     fontsize=8)
        ax.set_ylabel("")
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def runs_figure(runs, *, title: str | None = None):
    """The figure of ``tern-jax plot``: test accuracy (a language model's: validation bits per
    byte) and train loss per epoch of every model of ``runs``, side by side."""
    runs = _check_runs(runs, "runs_figure")
    import matplotlib.pyplot as plt

    fig, (ax_test, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    lm = bool(runs) and all(r.losses_in_bits for r in runs)
    plot_curves(runs, ax_test, metric="test_loss" if lm else "test_acc")
    plot_curves(runs, ax_loss, metric="train_loss")
    ax_test.set(title=ax_test.get_ylabel().removesuffix(" (%)"))
    ax_loss.set(title=ax_loss.get_ylabel(), yscale="linear" if lm else "log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


#: What :func:`plot_runs` writes into a user's folder (replaced only while it is ours).
PLOT_WHAT = "a plot (tern-jax plot)"


def plot_format(path) -> str:
    """The image format a plot's path names by its suffix (``.png``, ``.pdf``, ``.svg``, ...,
    as matplotlib writes them); a path without one, or with one matplotlib cannot write, is
    refused naming the formats it can."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = FigureCanvasAgg(Figure()).get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in kinds:
        raise ValueError(f"plot path {path} names no image format matplotlib writes "
                         f"({'no suffix' if not suffix else '.' + suffix}); end it in one of "
                         f"{', '.join('.' + k for k in sorted(kinds))}")
    return suffix


def plot_runs(run_dirs, out_png, *, title: str | None = None) -> Path:
    """:func:`runs_figure` of the run folders ``run_dirs``, written to ``out_png`` in the
    format its suffix names (:func:`plot_format`).

    A two-stage run (``pretrain/`` then ``finetune/``) is drawn as one timeline: the
    fine-tuning epochs continue after the full-precision ones. The PNG replaces only a plot
    tern_jax wrote there before (never a user's file).
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tern_jax import fs

    runs = [load_run(d) for d in run_dirs]
    for run in runs:
        if not any(s.records for s in run.stages):
            raise ValueError(f"{run.path} has no {RunFolder(run.path).metrics_file.name} "
                             "records to plot")
    kind = plot_format(out_png)
    fig = runs_figure(runs, title=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=kind, dpi=90)
    plt.close(fig)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fs.write_owned_bytes(out_png, buffer.getvalue(), what=PLOT_WHAT)
    return out_png


_VARIANT_COLOURS = {"fp": "C0", "tern": "C3", "tern_pc": "C1", "twn": "C2", "absmean": "C4"}


def _colour(variant: str) -> str:
    """A fixed colour per variant; unknown variants get one of the rest by their name."""
    if variant in _VARIANT_COLOURS:
        return _VARIANT_COLOURS[variant]
    return f"C{5 + sum(map(ord, variant)) % 5}"
