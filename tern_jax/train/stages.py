"""Recipes of several stages on top of the single-run loop: ``run(config, workdir)``.

A config with ``stages.finetune_epochs > 0`` is the two-stage recipe: stage 1 trains the
full-precision models (``WORKDIR/pretrain``), stage 2 starts every ternary variant from the
full-precision model of its seed and fine-tunes it (``WORKDIR/finetune``). Each stage is an
ordinary run folder trained by :func:`tern_jax.train.loop.train_and_evaluate`, which knows
nothing of stages; ``WORKDIR/results.json`` merges the two. A config without stages runs as
one :func:`train_and_evaluate`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tern_jax.presets import FULL_PRECISION, is_full_precision_rules
from tern_jax.train import distributed, lock
from tern_jax.train import metrics as metrics_lib
from tern_jax.train.config import Config, override
from tern_jax.train.families import Resolved, resolve
from tern_jax.train.loop import check_same_run, train_and_evaluate
from tern_jax.train.run_folder import STAGES, RunFolder

__all__ = ["STAGES", "run", "stage_configs"]


def stage_configs(config: Config, workdir, resolved: Resolved | None = None
                  ) -> tuple[Config, Config]:
    """The two single-stage configs of a two-stage config (``stages.finetune_epochs > 0``).

    Stage 1 trains the full-precision variant for ``schedule.epochs`` epochs with the
    config's schedule. Stage 2 starts every other variant from the stage-1 model of its seed
    and trains ``stages.finetune_epochs`` epochs at ``stages.finetune_learning_rate`` with
    ``stages.finetune_schedule``; with ``stages.distill_weight > 0`` the full-precision model
    continues alongside as the teacher.
    """
    workdir = Path(workdir).absolute()
    family = (resolved or resolve(config)).family
    stages = config.stages
    ternary = tuple(v for v in config.model.variants
                    if not is_full_precision_rules(family.rules(v)))
    pretrain = override(config, {
        "name": f"{config.name}/{STAGES[0]}", "model.variants": (FULL_PRECISION,),
        "stages.finetune_epochs": 0, "stages.distill_weight": 0.0,
        "schedule.threshold_warmup": 0.0})
    finetune = override(config, {
        "name": f"{config.name}/{STAGES[1]}",
        "model.variants": ((FULL_PRECISION,) + ternary) if stages.distill_weight else ternary,
        "schedule.epochs": stages.finetune_epochs,
        "optimizer.learning_rate": stages.finetune_learning_rate,
        "schedule.name": stages.finetune_schedule, "schedule.warmup_epochs": 0,
        "stages.finetune_epochs": 0, "stages.init_from": str(workdir / STAGES[0]),
        "stages.init_variant": FULL_PRECISION})
    return pretrain, finetune


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _check_two_stage(folder: RunFolder, config: Config, stages, resume: bool) -> None:
    """Refuses what would lose work in a two-stage folder: a new run over an old one, or a
    resume that changes a stage already trained (the full-precision epochs may not change
    once fine-tuning started from them)."""
    folder.check_trainable()
    saved = folder.read_config()
    if saved is not None and not resume:
        raise FileExistsError(
            f"{folder.path} already holds a run; pass --resume to continue it or choose another "
            "--workdir")
    if saved is None:
        return
    started = stages[1][1].latest_checkpoint()
    fixed = (f"{folder.path}/{STAGES[1]} already fine-tuned {started} epoch(s) from the "
             f"{saved.schedule.epochs}-epoch full-precision models" if started is not None
             else None)
    for old, (new, stage) in zip(stage_configs(saved, folder.path), stages):
        done = stage.latest_checkpoint()
        if done is not None:
            check_same_run(old, new, done, stage.path,
                           epochs_fixed=fixed if stage is stages[0][1] else None)


def _stages(config: Config, folder: RunFolder, resolved: Resolved) -> tuple:
    """``(config, folder)`` of each stage: the run itself, or its two stages' subfolders."""
    if not config.stages.finetune_epochs:
        return ((config, folder),)
    return tuple(zip(stage_configs(config, folder.path, resolved),
                     (RunFolder(folder.path / name) for name in STAGES)))


def _merged(config: Config, results: list, resolved: Resolved) -> dict:
    """A two-stage run's results: ``fp`` from stage 1 (the parent of the ternary models),
    every other variant from stage 2."""
    first, second = results
    variants = ({FULL_PRECISION: first["variants"][FULL_PRECISION]}
                if FULL_PRECISION in config.model.variants else {})
    variants.update({v: r for v, r in second["variants"].items()
                     if not is_full_precision_rules(resolved.family.rules(v))})
    return {"name": config.name, "model": config.model.name,
            "dataset": config.data.dataset, "loss_name": first["loss_name"],
            "epochs": first["epochs"] + second["epochs"],
            "stages": {STAGES[0]: first["epochs"], STAGES[1]: second["epochs"]},
            "seeds": list(config.seeds),
            "train_seconds": first["train_seconds"] + second["train_seconds"],
            "variants": variants}


def run(config: Config, workdir, *, resume: bool = False, devices=None, log=print,
        verify: bool = True) -> dict:
    """Trains ``config`` into ``workdir``: one run, or each stage of a two-stage recipe, each
    by :func:`~tern_jax.train.loop.train_and_evaluate` with the names resolved once.

    A finished stage is not trained again on resume; ``resume`` on a folder that holds no run
    is refused. Returns the (merged) final results: for a
    two-stage run ``fp`` from stage 1 (the parent of the ternary models), every other variant
    from stage 2. ``verify``: check restored checkpoints against their integrity records.
    """
    resolved = resolve(config)  # the names, once: every stage receives the objects
    folder = RunFolder(workdir)
    if resume and not folder.config_file.is_file():  # resume means resume
        raise FileNotFoundError(
            f"--resume: {folder.path} holds no run to resume (no config.json); check the path, "
            "or drop --resume to start a new run there")
    stages = _stages(config, folder, resolved)
    two = len(stages) > 1
    # a first start that fails takes back what it wrote, and only that
    created, fresh = not folder.path.exists(), not folder.config_file.is_file()
    folder.check_trainable()  # a file, or a folder of others' files: refused before the lock
    with lock.held(folder.path, main=distributed.is_main(), log=log):
        if two:
            _check_two_stage(folder, config, stages, resume)
            distributed.barrier(f"checked {folder.path}")  # every process read the folder
            if distributed.is_main():  # several processes: process 0 writes and prints
                folder.write_config(config)
                folder.write_tokenizer(config)
            log = distributed.main_log(log)
            first, second = (c.schedule.epochs for c, _ in stages)
            log(f"{config.name}: two stages, {_epochs(first)} full precision "
                f"(schedule.epochs), then {_epochs(second)} fine-tuning "
                f"{', '.join(stages[1][0].model.variants)} from it (stages.finetune_epochs): "
                f"{_epochs(first + second)} in all")
        results = []
        for stage_config, stage in stages:
            try:
                results.append(train_and_evaluate(stage_config, stage.path, resume=resume,
                                                  devices=devices, log=log, resolved=resolved,
                                                  verify=verify))
            except BaseException:
                if (two and not results and fresh and distributed.is_main()
                        and not stage.holds_run()):
                    folder.config_file.unlink(missing_ok=True)
                    if created:
                        with contextlib.suppress(OSError):  # only if nothing else is in it
                            folder.path.rmdir()
                raise
    if not two:
        return results[0]
    merged = _merged(config, results, resolved)
    if distributed.is_main():
        folder.write_results(merged)
    log(metrics_lib.results_table(merged))
    return merged
