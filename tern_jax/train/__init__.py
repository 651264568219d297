"""Training: configs, the vmapped multi-model loop, run folders, metrics and plots.

One concept per module, each importing only the ones listed before it (checked by
``tests/test_layering.py`` for cycles):

* ``task``: the seams: :class:`Task` (batch -> loss and metrics; image classification) and
  :class:`Inputs` (what the loop asks of the data); ``language_model``: the text task;
* ``families``: the model families (task, input kind, presets, fields, capabilities), held
  against the datasets of :mod:`tern_jax.data.specs`; :func:`resolve` turns a config's names
  into objects, once;
* ``config``: :class:`Config` and its sections, :class:`Slot` (variant, seed), ``--set``,
  config files (fields checked from their annotations by :mod:`tern_jax.fields`);
  ``recipes``: the paper's;
* ``optim``: optimizer, learning-rate schedule, threshold warm-up;
* ``stack``: :class:`ModelStack` (the models trained together) and :class:`TrainState`;
* ``step``: the pure ``train_step`` / ``eval_step``;
* ``distributed``: several processes: start-up, one writer, failures;
* ``metrics``: per-epoch records, final tables, curves;
* ``run_folder``: config, metrics, results and verified checkpoints of a run;
* ``restore``: a run's models read back without data; ``warm_start``: init from weights;
* ``loop``: :func:`train_and_evaluate`, one run;
* ``stages``: :func:`run`, recipes of several stages on top of the loop.
"""

from tern_jax.train.config import (
    CheckpointConfig,
    Config,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
    ShardingConfig,
    Slot,
    StagesConfig,
    load_config,
    override,
    quickstart_config,
)
from tern_jax.train.families import ModelFamily, Resolved, resolve
from tern_jax.train.loop import Trainer, TrainingDiverged, train_and_evaluate
from tern_jax.train.restore import Restored, restore_run
from tern_jax.train.run_folder import CheckpointDamaged, DamagedCheckpointWarning, latest_checkpoint
from tern_jax.train.stack import ModelStack, TrainState
from tern_jax.train.stages import run, stage_configs
from tern_jax.train.step import eval_step, train_step
from tern_jax.train.task import ImageClassification, Inputs, Task

__all__ = ["CheckpointConfig", "CheckpointDamaged", "Config", "DamagedCheckpointWarning",
           "DataConfig", "ImageClassification", "Inputs", "ModelConfig", "ModelFamily",
           "ModelStack", "OptimizerConfig", "Resolved", "Restored", "ScheduleConfig",
           "ShardingConfig", "Slot",
           "StagesConfig", "Task", "TrainState", "Trainer", "TrainingDiverged", "eval_step",
           "latest_checkpoint", "load_config", "override", "quickstart_config", "resolve",
           "restore_run", "run", "stage_configs", "train_and_evaluate", "train_step"]
