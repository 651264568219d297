"""The optimizer, its learning-rate schedule and the threshold warm-up, from a config.

Every schedule here is a function of the optimizer step; the config gives epochs, and
``steps_per_epoch`` converts.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from tern_jax.train.config import Config

__all__ = ["make_schedule", "make_optimizer", "make_threshold_warmup"]


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule in optimizer steps (milestones are in epochs)."""
    lr = config.learning_rate
    total = config.epochs * steps_per_epoch
    if config.schedule == "multistep":
        boundaries = {}
        for epoch, factor in config.milestones:
            step = int(epoch * steps_per_epoch)
            boundaries[step] = boundaries.get(step, 1.0) * factor
        schedule = optax.piecewise_constant_schedule(lr, boundaries)
    elif config.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, max(total - config.warmup_epochs
                                                       * steps_per_epoch, 1))
    else:
        schedule = optax.constant_schedule(lr)
    if config.warmup_epochs:
        warm = config.warmup_epochs * steps_per_epoch
        schedule = optax.join_schedules(
            [optax.linear_schedule(lr / warm, lr, warm), schedule], [warm]
        )
    return schedule


def make_optimizer(config: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD with Nesterov momentum or Adam, with L2 weight decay added to the gradient."""
    decay = optax.add_decayed_weights(config.weight_decay)
    if config.optimizer == "sgd":
        return optax.chain(decay, optax.sgd(schedule, config.momentum, config.nesterov))
    return optax.chain(decay, optax.adam(schedule))


def make_threshold_warmup(config: Config,
                          steps_per_epoch: int) -> Callable[[jax.Array], jax.Array] | None:
    """The threshold warm-up factor as a function of the global step, or ``None`` (no warm-up).

    The factor ramps linearly from ``threshold_warmup_start`` to 1 over ``threshold_warmup``
    epochs and multiplies every threshold ``Δ``. ``None`` keeps the compiled step identical to
    one without the feature.
    """
    warmup_steps = config.threshold_warmup * steps_per_epoch
    if warmup_steps <= 0:
        return None
    start = config.threshold_warmup_start

    def factor(step):
        ramp = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
        return start + (1.0 - start) * ramp

    return factor
