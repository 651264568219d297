"""The train step and the eval step: pure functions of a model stack, a state and a batch.

Both are module-level functions of ``(stack, state, batch, ...)`` with :class:`ModelStack`
static, so the loop, the tests and the benchmarks jit the same code::

    train = jax.jit(functools.partial(train_step, stack), donate_argnums=0)
    state, metrics = train(state, batch, step)

A training batch carries the model axis: every leaf is ``(num_models, batch, ...)`` (models of
one seed see the same examples); an evaluation batch has no model axis, since every model is
scored on the same examples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from tern_jax.train.stack import ModelStack, TrainState

__all__ = ["train_step", "eval_step", "zero_fractions"]


def _kl(teacher: jax.Array, student: jax.Array, t: float) -> jax.Array:
    """``KL(softmax(teacher/T) ‖ softmax(student/T))`` averaged over the batch (and positions)."""
    teacher = teacher / t
    kl = jnp.sum(jax.nn.softmax(teacher) * (jax.nn.log_softmax(teacher)
                                            - jax.nn.log_softmax(student / t)), -1)
    return jnp.mean(kl)


def train_step(stack: ModelStack, state: TrainState, batch: dict, step: jax.Array):
    """One optimizer step of every model; returns ``(state, {"loss": (M,), ...})``.

    ``loss`` is the task's loss (without the distillation term), the other metrics are the
    task's ``train_metrics``, each one value per model. ``step`` is the global step (it sets
    the threshold warm-up factor).

    Each model takes the gradient of its own loss, mapped over the model axis (a
    ``vmap`` of per-model gradients runs ~2x faster on CPU than the gradient of a vmapped
    sum, measured here for two ResNet-20s). With distillation, the teachers' outputs at the
    current weights come from one extra forward pass, without gradient.
    """
    threshold_scale = None if stack.threshold_warmup is None else stack.threshold_warmup(step)
    variant_index = jnp.asarray(stack.variant_index)

    def forward(params, model_state, batch, variant):
        return stack.apply(params, model_state, batch, variant, train=True,
                           threshold_scale=threshold_scale)

    def one_model(params, model_state, opt_state, batch, variant, *teaching):
        def loss_fn(p):
            outputs, new_state = forward(p, model_state, batch, variant)
            loss = stack.task.loss(outputs, batch)
            total = loss
            if teaching:
                teacher, is_student = teaching
                t = stack.distill_temperature
                total = loss + (stack.distill_weight * (t * t) * _kl(teacher, outputs, t)
                                * is_student)
            return total, (loss, outputs, new_state)

        grads, (loss, outputs, new_state) = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = stack.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, **stack.task.train_metrics(outputs, batch)}
        return TrainState(params, new_state, opt_state), metrics

    teaching = ()
    if stack.teacher_index is not None:
        outputs, _ = stack.over_models(forward)(state.params, state.model_state, batch,
                                                variant_index)
        teaching = (jax.lax.stop_gradient(outputs[stack.teacher_index]),
                    jnp.asarray(stack.is_student))
    return stack.over_models(one_model)(state.params, state.model_state, state.opt_state,
                                        batch, variant_index, *teaching)


def eval_step(stack: ModelStack, state: TrainState, batch: dict, mask: jax.Array) -> dict:
    """Sums over one evaluation batch per model: ``{"loss", "correct", "count"}``, each (M,).

    The full thresholds are used (no warm-up): evaluation scores the model that ships.
    """
    def forward(params, model_state, variant):
        outputs, _ = stack.apply(params, model_state, batch, variant, train=False)
        return stack.task.eval_sums(outputs, batch, mask)

    return stack.over_models(forward)(state.params, state.model_state,
                                      jnp.asarray(stack.variant_index))


def zero_fractions(stack: ModelStack, state: TrainState) -> jax.Array:
    """Per model, the fraction of zero weights among those its rules ternarize."""
    return jax.vmap(stack.zero_fraction)(state.params, jnp.asarray(stack.variant_index))


# Handy for tests and notebooks: ``jitted(train_step, stack)``.
def jitted(fn, stack: ModelStack, **jit_kwargs):
    """``jax.jit(functools.partial(fn, stack), **jit_kwargs)``."""
    return jax.jit(functools.partial(fn, stack), **jit_kwargs)
