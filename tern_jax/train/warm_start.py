"""Starting a run's models from trained weights: another run's models, or torchvision's.

Both keep the run's own optimizer (fresh optimizer states) and read the source weights
without loading any data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tern_jax.integrity import check_shapes, tree_shapes
from tern_jax.models.convert import load_torchvision_checkpoint
from tern_jax.train.config import Config, Slot
from tern_jax.train.restore import restore_run
from tern_jax.train.stack import ModelStack, TrainState

__all__ = ["from_run", "from_torchvision"]


def from_run(stack: ModelStack, config: Config, run_dir, *, verify: bool = True) -> TrainState:
    """Every model starts from the final weights of the source run's ``stages.init_variant``
    model of its seed (or of the source's first seed when it lacks that seed)."""
    source = restore_run(run_dir, verify=verify)
    if source.config.model.name != config.model.name:
        raise ValueError(f"stages.init_from run trained {source.config.model.name}, this run "
                         f"{config.model.name}")
    variant = config.stages.init_variant
    slots = source.config.slots
    picks = []
    for slot in stack.slots:
        wanted = Slot(variant, slot.seed)
        fallback = Slot(variant, source.config.seeds[0])
        if wanted in slots:
            picks.append(slots.index(wanted))
        elif fallback in slots:
            picks.append(slots.index(fallback))
        else:
            raise ValueError(f"stages.init_from run has no model of variant {variant!r}; "
                             f"it has {[s.name for s in slots]}")
    picks = np.array(picks)
    params = jax.tree.map(lambda a: a[picks], source.state.params)
    stats = jax.tree.map(lambda a: a[picks], source.state.model_state)
    wanted = stack.abstract_state()  # same model name, yet e.g. another number of classes
    for part, given in (("params", params), ("model_state", stats)):
        check_shapes(tree_shapes(getattr(wanted, part)), tree_shapes(given),
                     f"stages.init_from run {run_dir}")
    return stack.restart_optimizer(params, stats)


def from_torchvision(stack: ModelStack, config: Config, path, template: TrainState) -> TrainState:
    """Every model starts from a torchvision ResNet checkpoint (converted; fc kept if it fits)."""
    variables = load_torchvision_checkpoint(path, config.model.name)

    def stack_models(tree):
        return jax.tree.map(
            lambda a: jnp.broadcast_to(jnp.asarray(a), (stack.num_models,) + a.shape), tree)

    params, stats = stack_models(variables["params"]), stack_models(variables["batch_stats"])
    if jax.tree.map(jnp.shape, params) != jax.tree.map(jnp.shape, template.params):
        raise ValueError(f"{path} does not fit {config.model.name} with "
                         f"{stack.task.num_classes} classes")
    return stack.restart_optimizer(params, stats)
