"""Sharded training against one device, run in a process with 8 CPU devices.

:func:`compare_meshes` trains a few steps of a model under several meshes (data parallel,
FSDP, tensor parallel, FSDP x tensor) and on one device, in the same process, and prints,
as JSON, how far the losses, the weights and the ternarized weights lie from the
one-device run's; ``tests/test_sharded_training.py`` holds them to tolerances.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

#: The meshes compared with one device, by name: (data, fsdp, tensor[, model_axis]).
MESHES = {"dp": (8, 1, 1), "fsdp": (1, 8, 1), "tp": (4, 1, 2), "fsdp_tp": (1, 4, 2),
          "models_over_data": (2, 4, 1, "data")}


def _run(config, devices, steps: int):
    """``(losses (steps, M), initial state, final state, trainer)`` of ``steps`` steps."""
    from tern_jax.train import Trainer

    trainer = Trainer(config, devices=devices)
    state = trainer.init_state()
    first = jax.device_get(state)
    idx, keys = trainer.inputs.epoch_plan(0)
    losses = []
    for s in range(steps):
        state, metrics = trainer.step_at(state, trainer.inputs.arrays, idx[s], keys[s],
                                         jnp.int32(s))
        losses.append(np.asarray(metrics["loss"]))
    return np.stack(losses), first, state, trainer


def _max_rel(a, b) -> float:
    """max |a - b| / max |b| over every leaf of two pytrees (0 for an all-zero leaf)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = np.max(np.abs(y)) or 1.0
        worst = max(worst, float(np.max(np.abs(x - y)) / scale))
    return worst


def _per_model(a, b) -> list[float]:
    """:func:`_max_rel` of each model's leaves (the leading model axis)."""
    models = len(jax.tree.leaves(b)[0]) if jax.tree.leaves(b) else 0
    return [_max_rel(jax.tree.map(lambda x, i=i: x[i], a), jax.tree.map(lambda x, i=i: x[i], b))
            for i in range(models)]


def _quantized(trainer, params):
    """Every model's weights as its variant's forward pass sees them (ternarized)."""
    stack = trainer.stack
    fn = jax.jit(jax.vmap(lambda p, v: stack.quantize(p, v)))
    return jax.device_get(fn(params, jnp.asarray(stack.variant_index)))


def _codes_and_scales(q, ref):
    """Whether the signs (the codes) of the ternarized weights are identical, and the worst
    relative difference of their values (the scales α)."""
    same = all(np.array_equal(np.sign(x), np.sign(y))
               for x, y in zip(jax.tree.leaves(q), jax.tree.leaves(ref)))
    return same, _max_rel(q, ref)


def compare_meshes(base: dict, steps: int = 2, meshes=tuple(MESHES)[:4]) -> dict:
    """For each mesh of :data:`MESHES` named in ``meshes``: the config ``base`` (dotted
    paths over the quickstart) trained ``steps`` steps there and on one device."""
    from tern_jax.train import override, quickstart_config

    config = override(quickstart_config(), base)
    single_losses, single_first, single_state, single = _run(config, jax.devices()[:1], steps)
    single_final = jax.device_get(single_state)
    single_q = _quantized(single, single_first.params)
    out = {"devices": len(jax.devices()), "models": single.names, "meshes": {}}
    for name in meshes:
        data, fsdp, tensor, *model_axis = MESHES[name]
        sharded = override(config, {"sharding.data": data, "sharding.fsdp": fsdp,
                                    "sharding.tensor": tensor,
                                    "sharding.model_axis": (model_axis or [None])[0]})
        losses, first, state, trainer = _run(sharded, jax.devices(), steps)
        wanted = jax.tree.leaves(trainer.state_sharding)
        kept = all(leaf.sharding.is_equivalent_to(want, leaf.ndim)
                   for leaf, want in zip(jax.tree.leaves(state), wanted))
        split = sum(not s.is_fully_replicated for s in jax.tree.leaves(
            trainer.state_sharding.params))
        same_codes, scale_rel = None, None
        if fsdp > 1:  # the same weights (the one-device run's first) ternarized, every
            # kernel split (over tensor too with fsdp x tensor)
            q = _quantized(trainer, trainer.place(single_first).params)
            same_codes, scale_rel = _codes_and_scales(q, single_q)
        final = jax.device_get(state)
        out["meshes"][name] = {
            "mesh": dict(trainer.mesh.shape),
            "init_equal": bool(_max_rel(first, single_first) == 0.0),
            # (steps, models): relative difference of each step's loss
            "loss_rel": (np.abs(losses - single_losses) / np.abs(single_losses)).tolist(),
            "params_rel": _per_model(final.params, single_final.params),
            "opt_rel": _per_model(final.opt_state, single_final.opt_state),
            "model_state_rel": _per_model(final.model_state, single_final.model_state),
            "codes_equal": same_codes, "scales_rel": scale_rel,
            "sharded_leaves": int(split),
            "kept_sharding": bool(kept),
        }
    return out


def local_scales_hlo() -> dict:
    """Collectives in the compiled ternarization of a kernel split over ``tensor`` along its
    output channels: per tensor (Δ and α over every element: all-reduces) and per channel
    (each shard's own channels: none)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from tern_jax import Rule
    from tern_jax.sharding import make_mesh
    from tern_jax.train import ShardingConfig

    mesh = make_mesh(ShardingConfig(data=1, tensor=8))
    sharding = NamedSharding(mesh, P(None, "tensor"))
    w = jax.device_put(jax.random.normal(jax.random.key(0), (64, 128)), sharding)
    out = {}
    for name, rule in (("per_tensor", Rule(".*")), ("per_channel", Rule(".*", axis=-1))):
        fn = jax.jit(rule.apply, out_shardings=sharding)
        hlo = fn.lower(w).compile().as_text()
        out[name] = {op: hlo.count(f" {op}(") + hlo.count(f" {op}-start(")
                     for op in ("all-reduce", "all-gather", "all-to-all",
                                "collective-permute")}
        single = np.asarray(rule.apply(jax.device_put(w, jax.devices()[0])))
        got = np.asarray(fn(w))
        out[name]["codes_equal"] = bool(np.array_equal(np.sign(got), np.sign(single)))
        out[name]["rel"] = float(np.max(np.abs(got - single)) / np.max(np.abs(single)))
    return out


def print_comparisons(lm: dict, cnn: dict, steps: int = 2) -> None:
    """The JSON the test reads: both models' comparisons and the HLO check."""
    print(json.dumps({"lm": compare_meshes(lm, steps, tuple(MESHES)),
                      "cnn": compare_meshes(cnn, steps), "hlo": local_scales_hlo()}))


#: The digits run of the checkpoint tests (dotted paths over the quickstart): 2 epochs of
#: 8 steps, a checkpoint after each.
DIGITS = {"data.train_subset": 128, "data.test_subset": 32, "data.batch_size": 16,
          "data.eval_batch_size": 16, "schedule.epochs": 2, "checkpointing.every": 1,
          "checkpointing.keep": 2, "model.kwargs": {"width": 8}, "progress": False}


def cut_after_epoch_1(source, target) -> None:
    """A copy of the run folder ``source`` whose last checkpoint is epoch 1's (as if the run
    had stopped there; resuming trains epoch 2 again)."""
    import shutil
    from pathlib import Path

    shutil.copytree(source, target)
    shutil.rmtree(Path(target) / "checkpoints" / "2")


def checkpoint_runs(root: str) -> None:
    """Digits trained under 8-way FSDP (``root/fsdp``); a copy cut after epoch 1 resumed on
    another mesh of the 8 devices (data 2 x fsdp 4: ``root/mesh``); a copy left for the
    test to resume on one device (``root/one``); a resume whose rules cannot split the
    checkpoint's arrays, refused (its message printed)."""
    from pathlib import Path

    from tern_jax.train import override, quickstart_config, train_and_evaluate

    root = Path(root)
    quiet = {"log": lambda *_: None}
    config = override(quickstart_config(), {**DIGITS, "sharding.fsdp": 8})
    train_and_evaluate(config, root / "fsdp", **quiet)
    cut_after_epoch_1(root / "fsdp", root / "mesh")
    cut_after_epoch_1(root / "fsdp", root / "one")
    cut_after_epoch_1(root / "fsdp", root / "refused")
    train_and_evaluate(override(config, {"sharding.data": 2, "sharding.fsdp": 4}),
                       root / "mesh", resume=True, **quiet)
    bad = override(config, {"sharding.rules": (("stem_conv/kernel", (None, None, "fsdp", None)),
                                               (".*", None))})
    try:
        train_and_evaluate(bad, root / "refused", resume=True, **quiet)
        print(json.dumps({"refused": None}))
    except ValueError as e:
        print(json.dumps({"refused": str(e)}))


def fsdp_job(root: str, process_id: int, num_processes: int, coordinator: str) -> None:
    """One process of a job of several training the digits run under 8-way FSDP
    (``root/two``), then resuming ``root/cut`` (a copy cut after epoch 1) on the same mesh:
    parameters split across the processes are saved, restored and checked."""
    from pathlib import Path

    from tern_jax.train import distributed, override, quickstart_config, train_and_evaluate

    root = Path(root)
    distributed.initialize(coordinator, num_processes, process_id, timeout=60)
    config = override(quickstart_config(), {**DIGITS, "sharding.fsdp": 8})
    with distributed.failures_end_the_job():
        train_and_evaluate(config, root / "two", log=lambda *_: None)
        train_and_evaluate(config, root / "cut", resume=True, log=lambda *_: None)
