"""Recipes of several stages on top of the single-run loop: ``run(config, workdir)``.

A config with ``finetune_epochs > 0`` is the two-stage recipe: stage 1 trains the
full-precision models (``WORKDIR/pretrain``), stage 2 starts every ternary variant from the
full-precision model of its seed and fine-tunes it (``WORKDIR/finetune``). Each stage is an
ordinary run folder trained by :func:`tern_jax.train.loop.train_and_evaluate`, which knows
nothing of stages; ``WORKDIR/results.json`` merges the two. A config without stages runs as
one :func:`train_and_evaluate`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tern_jax.train import distributed
from tern_jax.train import metrics as metrics_lib
from tern_jax.train.config import FULL_PRECISION, Config, is_full_precision
from tern_jax.train.loop import train_and_evaluate
from tern_jax.train.run_folder import STAGES, RunFolder

__all__ = ["STAGES", "run", "stage_configs"]


def stage_configs(config: Config, workdir) -> tuple[Config, Config]:
    """The two single-stage configs of a two-stage config (``finetune_epochs > 0``).

    Stage 1 trains the full-precision variant for ``epochs`` epochs with the config's
    schedule. Stage 2 starts every other variant from the stage-1 model of its seed and trains
    ``finetune_epochs`` epochs at ``finetune_learning_rate`` with ``finetune_schedule``; with
    ``distill_weight > 0`` the full-precision model continues alongside as the teacher.
    """
    workdir = Path(workdir).absolute()
    ternary = tuple(v for v in config.variants if not is_full_precision(v, config.model))
    pretrain = dataclasses.replace(
        config, name=f"{config.name}/{STAGES[0]}", variants=(FULL_PRECISION,), finetune_epochs=0,
        distill_weight=0.0, threshold_warmup=0.0)
    finetune = dataclasses.replace(
        config, name=f"{config.name}/{STAGES[1]}",
        variants=((FULL_PRECISION,) + ternary) if config.distill_weight else ternary,
        epochs=config.finetune_epochs, learning_rate=config.finetune_learning_rate,
        schedule=config.finetune_schedule, warmup_epochs=0, finetune_epochs=0,
        init_from=str(workdir / STAGES[0]), init_variant=FULL_PRECISION)
    return pretrain, finetune


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _check_two_stage(folder: RunFolder, config: Config, resume: bool) -> None:
    saved = folder.read_config()
    if saved is not None and not resume:
        raise FileExistsError(
            f"{folder.path} already holds a run; pass --resume to continue it or choose another "
            "--workdir")
    started = RunFolder(folder.path / STAGES[1]).latest_checkpoint()
    if saved is not None and saved.epochs != config.epochs and started is not None:
        raise ValueError(
            f"{folder.path}/{STAGES[1]} already fine-tuned {started} epoch(s) from the "
            f"{saved.epochs}-epoch full-precision models; resume with epochs="
            f"{saved.epochs} (finetune_epochs may grow) or start a new --workdir")


def run(config: Config, workdir, *, resume: bool = False, devices=None, log=print) -> dict:
    """Trains ``config`` into ``workdir``: one run, or each stage of a two-stage recipe.

    A finished stage is not trained again on resume. Returns the (merged) final results: for a
    two-stage run ``fp`` from stage 1 (the parent of the ternary models), every other variant
    from stage 2.
    """
    if not config.finetune_epochs:
        return train_and_evaluate(config, workdir, resume=resume, devices=devices, log=log)
    folder = RunFolder(workdir)
    folder.check_trainable()
    _check_two_stage(folder, config, resume)
    distributed.barrier(f"checked {folder.path}")  # every process read the folder first
    if distributed.is_main():  # several processes: process 0 writes and prints
        folder.write_config(config)
    log = distributed.main_log(log)
    pretrain, finetune = stage_configs(config, folder.path)
    log(f"{config.name}: two stages, {_epochs(pretrain.epochs)} full precision (epochs), then "
        f"{_epochs(finetune.epochs)} fine-tuning {', '.join(finetune.variants)} from it "
        f"(finetune_epochs): {_epochs(pretrain.epochs + finetune.epochs)} in all")
    first = train_and_evaluate(pretrain, folder.path / STAGES[0], resume=resume,
                               devices=devices, log=log)
    second = train_and_evaluate(finetune, folder.path / STAGES[1], resume=resume,
                                devices=devices, log=log)
    variants = ({FULL_PRECISION: first["variants"][FULL_PRECISION]}
                if FULL_PRECISION in config.variants else {})
    variants.update({v: r for v, r in second["variants"].items()
                     if not is_full_precision(v, config.model)})
    results = {"name": config.name, "model": config.model, "dataset": config.dataset,
               "epochs": first["epochs"] + second["epochs"],
               "stages": {STAGES[0]: first["epochs"], STAGES[1]: second["epochs"]},
               "seeds": list(config.seeds),
               "train_seconds": first["train_seconds"] + second["train_seconds"],
               "variants": variants}
    if distributed.is_main():
        folder.write_results(results)
    log(metrics_lib.results_table(results))
    return results
