"""Training: configs, the vmapped multi-model trainer, metrics and plots."""

from tern_jax.train.config import PRESETS, Config, load_config, override, quickstart_config
from tern_jax.train.trainer import (
    Trainer,
    TrainingDiverged,
    latest_checkpoint,
    restore_run,
    train_and_evaluate,
)

__all__ = ["PRESETS", "Config", "Trainer", "TrainingDiverged", "latest_checkpoint",
           "load_config", "override", "quickstart_config", "restore_run", "train_and_evaluate"]
