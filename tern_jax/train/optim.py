"""The optimizer, its learning-rate and weight-decay schedules and the threshold warm-up.

Every schedule here is a function of the optimizer step; the config gives epochs, and
``steps_per_epoch`` converts.

``schedule.name="bitnet"`` with ``schedule.weight_decay="bitnet"`` is the two-stage schedule BitNet
b1.58 trains with (Ma et al. 2024, "The Era of 1-bit LLMs"; the figures of the BitNet b1.58
2B4T report). What is implemented here, for a run of ``T`` steps and ``h = T // 2``:

* learning rate: after the warm-up, a cosine decay from ``learning_rate`` at the warm-up's
  end to ``8/15 · learning_rate`` at step ``h`` (the report's 1.5e-3 -> 8e-4); at step ``h``
  it drops to ``learning_rate / 3`` (the report's 5e-4) and decays by a cosine to 0 at ``T``;
* weight decay: a cosine decay from ``weight_decay`` at step 0 to 0 at step ``h``, then 0 for
  the second half (the report: a cosine schedule peaking at 0.1, then none).

BitNet's weight decay is decoupled (AdamW): ``optimizer.name="adamw"``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from tern_jax.train.config import Config

__all__ = ["BITNET_FIRST_HALF_END", "BITNET_SECOND_HALF_PEAK", "make_schedule",
           "make_weight_decay", "make_optimizer", "make_threshold_warmup"]

#: The BitNet schedule's learning rate at the end of its first half, and at the start of its
#: second, as fractions of the peak (the 2B4T report's 8e-4 and 5e-4 of 1.5e-3).
BITNET_FIRST_HALF_END = 8 / 15
BITNET_SECOND_HALF_PEAK = 1 / 3


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule in optimizer steps (milestones are in epochs)."""
    lr, sched = config.optimizer.learning_rate, config.schedule
    total = sched.epochs * steps_per_epoch
    warm = sched.warmup_epochs * steps_per_epoch
    if sched.name == "multistep":
        boundaries = {}
        for epoch, factor in sched.milestones:
            step = int(epoch * steps_per_epoch)
            boundaries[step] = boundaries.get(step, 1.0) * factor
        schedule = optax.piecewise_constant_schedule(lr, boundaries)
    elif sched.name == "cosine":
        schedule = optax.cosine_decay_schedule(lr, max(total - warm, 1))
    elif sched.name == "bitnet":  # steps counted after the warm-up: the drop is at T // 2
        first = total // 2 - warm
        schedule = optax.join_schedules(
            [optax.cosine_decay_schedule(lr, first, BITNET_FIRST_HALF_END),
             optax.cosine_decay_schedule(lr * BITNET_SECOND_HALF_PEAK, total - total // 2)],
            [first])
    else:
        schedule = optax.constant_schedule(lr)
    if warm:
        schedule = optax.join_schedules(
            [optax.linear_schedule(lr / warm, lr, warm), schedule], [warm]
        )
    return schedule


def make_weight_decay(config: Config, steps_per_epoch: int) -> float | optax.Schedule:
    """The weight decay: ``optimizer.weight_decay``, or its schedule (``schedule.weight_decay``)
    in optimizer steps."""
    if config.schedule.weight_decay == "constant":
        return config.optimizer.weight_decay
    half = config.schedule.epochs * steps_per_epoch // 2
    return optax.join_schedules([optax.cosine_decay_schedule(config.optimizer.weight_decay,
                                                             half),
                                 optax.constant_schedule(0.0)], [half])


def make_optimizer(config: Config, schedule: optax.Schedule,
                   weight_decay: float | optax.Schedule | None = None
                   ) -> optax.GradientTransformation:
    """SGD with Nesterov momentum or Adam, with L2 weight decay added to the gradient; or
    AdamW, whose decay is added to Adam's step (decoupled, Loshchilov & Hutter 2019), both
    then scaled by the learning rate.

    ``weight_decay``: a number or a schedule (:func:`make_weight_decay`); ``None``:
    ``optimizer.weight_decay``.
    """
    opt = config.optimizer
    weight_decay = opt.weight_decay if weight_decay is None else weight_decay
    if callable(weight_decay):  # the decay's own step count, kept in the optimizer state
        decay = optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=weight_decay)
    else:
        decay = optax.add_decayed_weights(weight_decay)
    if opt.name == "sgd":
        return optax.chain(decay, optax.sgd(schedule, opt.momentum, opt.nesterov))
    if opt.name == "adamw":
        return optax.chain(optax.scale_by_adam(), decay, optax.scale_by_learning_rate(schedule))
    return optax.chain(decay, optax.adam(schedule))


def make_threshold_warmup(config: Config,
                          steps_per_epoch: int) -> Callable[[jax.Array], jax.Array] | None:
    """The threshold warm-up factor as a function of the global step, or ``None`` (no warm-up).

    The factor ramps linearly from ``threshold_warmup_start`` to 1 over ``threshold_warmup``
    epochs and multiplies every threshold ``Δ``. ``None`` keeps the compiled step identical to
    one without the feature.
    """
    warmup_steps = config.schedule.threshold_warmup * steps_per_epoch
    if warmup_steps <= 0:
        return None
    start = config.schedule.threshold_warmup_start

    def factor(step):
        ramp = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
        return start + (1.0 - start) * ramp

    return factor
