"""The 8-device check of code gathers (``tern_jax.gather``), run in one subprocess.

``tests/test_gather.py`` starts :func:`print_checks` with
``--xla_force_host_platform_device_count=8`` and asserts on the JSON it prints: the gathered
quantizer against :func:`tern_jax.ternarize` (values, codes, gradients, shardings), and short
FSDP training runs of a tiny transformer gathering weights, int8 codes and packed codes
(losses, weights, and the all-gather bytes of each compiled step).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def quantizer_cases(mesh):
    """(name, shape, spec, quantizer kwargs, stacked) of the quantizer checks."""
    tp = mesh.shape["tensor"] > 1
    cases = [
        ("paper", (32, 24), P("fsdp"), {}, False),
        ("paper_dim1", (24, 32), P(None, "fsdp"), {}, False),
        ("t_ex2", (32, 24), P("fsdp"), {"t_ex": 2}, False),
        ("t_ex2_stacked", (32, 24), P("fsdp"), {"thresholds": (0.05, 0.1)}, True),
        ("t_ex3", (32, 24), P("fsdp"), {"t_ex": 3}, False),
        ("per_channel", (32, 24), P("fsdp"), {"axis": -1}, False),
        ("per_channel_gathered", (24, 32), P(None, "fsdp"), {"axis": -1}, False),
        ("attention_heads", (16, 4, 8), P("fsdp"), {"axis": (1, 2)}, False),
        ("twn", (32, 24), P("fsdp"), {"method": "twn"}, False),
        ("absmean", (32, 24), P("fsdp"), {"method": "absmean"}, False),
        ("warmup", (32, 24), P("fsdp"), {"threshold_scale": 0.5}, False),
    ]
    if tp:  # the layouts with a tensor axis, and a few of the others beside them
        cases = [c for c in cases if c[0] in ("paper", "t_ex2", "per_channel", "twn")]
        cases += [
            ("fsdp_x_tensor", (32, 24), P("fsdp", "tensor"), {}, False),
            ("per_channel_on_tensor", (32, 24), P("fsdp", "tensor"), {"axis": -1}, False),
            ("fsdp_and_tensor_on_one_dim", (32, 24), P(None, ("fsdp", "tensor")),
             {"axis": -1}, False),
        ]
    return cases


def check_quantizer(mesh) -> dict:
    """Per case and mode: max |difference| of values and of gradients against
    ``tern_jax.ternarize`` on one device, codes equal, and the gradient's sharding the
    weight's. Every case and mode in one compiled program (one compile per mesh)."""
    from tern_jax import core
    from tern_jax.gather import gathered_ternarize

    cases = quantizer_cases(mesh)
    key = jax.random.key(0)
    weights, probes, scales, sharded = {}, {}, {}, {}
    for name, shape, spec, kwargs, stacked in cases:
        key, k1, k2 = jax.random.split(key, 3)
        w = (jax.random.normal(k1, shape) * 0.3).at[0, 0].set(1.5)  # one |W| >= 1: STE gate
        weights[name] = w
        sharded[name] = jax.device_put(w, NamedSharding(mesh, spec))
        probes[name] = jax.random.normal(k2, (2, *shape) if stacked else shape)
        scales[name] = jnp.float32(kwargs.get("threshold_scale", 1.0))

    def value_and_grad(fn, w, probe, scale):
        out, vjp = jax.vjp(lambda w: fn(w, threshold_scale=scale), w)
        return out, vjp(probe)[0]

    def run(ws, probes, scales, modes):
        out = {}
        for name, _, spec, kwargs, stacked in cases:
            q = {k: v for k, v in kwargs.items() if k != "threshold_scale"}
            for mode in modes:
                if mode == "one_device":
                    fn = functools.partial(core.expand if stacked else core.ternarize, **q)
                else:
                    fn = functools.partial(gathered_ternarize, mesh=mesh, spec=spec, mode=mode,
                                           stacked=stacked, **q)
                out[f"{name}/{mode}"] = value_and_grad(fn, ws[name], probes[name],
                                                       scales[name])
        return out

    one = jax.devices()[0]
    ref = jax.jit(functools.partial(run, modes=("one_device",)))(
        *jax.device_put((weights, probes, scales), one))
    got = jax.jit(functools.partial(run, modes=("codes", "packed", "latent")))(
        sharded, probes, scales)
    out = {}
    for key_name, (value, grad) in got.items():
        name = key_name.split("/")[0]
        ref_value, ref_grad = (np.asarray(a) for a in ref[f"{name}/one_device"])
        value_np = np.asarray(value)
        out[key_name] = {
            "value_diff": float(np.max(np.abs(ref_value - value_np))),
            "value_scale": float(np.max(np.abs(ref_value))),
            "same_codes": bool(np.array_equal(np.sign(ref_value), np.sign(value_np))),
            "grad_diff": float(np.max(np.abs(ref_grad - np.asarray(grad)))),
            "grad_sharded_like_w": grad.sharding.is_equivalent_to(sharded[name].sharding,
                                                                  grad.ndim),
        }
    return out


def tiny_stack(variants, gather=None, model_axis="vmap"):
    """A ModelStack of the tiny transformer with Adam, one seed per variant."""
    import optax

    from tern_jax.models.transformer import transformer_config
    from tern_jax.presets import TRANSFORMER_RULES
    from tern_jax.train.config import Slot
    from tern_jax.train.language_model import LanguageModel
    from tern_jax.train.stack import ModelStack

    task = LanguageModel(transformer_config("transformer_tiny", num_layers=1), seq_len=16)
    slots = tuple(Slot(v, 0) for v in variants)
    return ModelStack(task, slots, optax.adam(3e-3), model_axis, presets=TRANSFORMER_RULES,
                      gather=gather)


def train_fsdp(mesh, variants, mode, steps: int = 3, model_axis="vmap", batch: int = 16):
    """``steps`` FSDP steps of the tiny transformer, its parameters and optimizer states
    placed by the default transformer sharding rules: losses (steps, M), final params, the
    compiled step's HLO text."""
    from tern_jax import sharding as sharding_lib
    from tern_jax.gather import GatherPlan
    from tern_jax.train.stack import TrainState
    from tern_jax.train.step import train_step

    plain = tiny_stack(variants, model_axis=model_axis)
    state = plain.init()
    specs = sharding_lib.state_specs(
        state.params, state.model_state, state.opt_state, sharding_lib.TRANSFORMER_SHARDING,
        mesh, tx=plain.tx, stacked=True, strict=False, unused="ignore")
    shardings = TrainState(*(sharding_lib.named(mesh, s) for s in specs))
    plan = GatherPlan.from_stacked(mesh, specs[0], mode)
    stack = tiny_stack(variants, gather=plan, model_axis=model_axis)
    state = jax.device_put(state, shardings)
    rng = np.random.default_rng(0)
    m = stack.num_models
    batch_sharding = NamedSharding(mesh, sharding_lib.batch_spec(mesh, 1))
    batches = [jax.device_put({"tokens": rng.integers(0, 256, (m, batch, 17)).astype(np.int32)},
                              {"tokens": batch_sharding}) for _ in range(steps)]
    step_fn = jax.jit(functools.partial(train_step, stack), out_shardings=(shardings, None))
    compiled = step_fn.lower(state, batches[0], jnp.int32(0)).compile()
    losses = []
    for s, batch in enumerate(batches):
        state, metrics = compiled(state, batch, jnp.int32(s))
        losses.append(np.asarray(metrics["loss"]))
    return np.stack(losses), jax.tree.map(np.asarray, state.params), compiled.as_text()


def fp32_kernel_bytes(mesh, variants) -> tuple[int, set]:
    """What gathering each ternary kernel's fp32 weights once moves to each device (received
    bytes, FSDP's weight gathers), and the kernels' shapes (with and without the model axis)."""
    from tern_jax import sharding as sharding_lib
    from tern_jax.presets import TRANSFORMER_RULES
    from tern_jax.rules import match_params

    abstract = tiny_stack(variants).abstract_state().params
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), abstract)
    specs = sharding_lib.param_specs(one, sharding_lib.TRANSFORMER_SHARDING, mesh,
                                     strict=False, unused="ignore")
    flat_specs = dict(zip(
        [m.path for m in match_params(one, (), unused="ignore")[0]],
        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))))
    total, shapes = 0, set()
    for variant in variants:
        for m in match_params(one, TRANSFORMER_RULES[variant], unused="ignore")[0]:
            if not m.quantized:
                continue
            shapes |= {tuple(m.leaf.shape), (1, *m.leaf.shape)}
            parts = mesh.shape["fsdp"] if "fsdp" in str(flat_specs[m.path]) else 1
            total += 4 * int(np.prod(m.leaf.shape)) * (parts - 1) // parts
    return total, shapes


def check_training(mesh, variants, modes=("weights", "codes", "packed"), model_axis="vmap",
                   batch: int = 16):
    """Per mode: losses, max |weight difference| to the ``weights`` run, and the step's
    all-gather bytes per device (fp32 ones shaped like a ternary kernel, int8/uint8 codes,
    others), with the fp32 bytes of gathering every ternary kernel once."""
    from tern_jax.gather import all_gathers

    baseline, shapes = fp32_kernel_bytes(mesh, variants)
    runs = {mode: train_fsdp(mesh, variants, mode, model_axis=model_axis, batch=batch)
            for mode in modes}
    base_losses, base_params, _ = runs[modes[0]]
    out = {}
    for mode, (losses, params, hlo) in runs.items():
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                             base_params, params))
        kinds = {"fp32_kernel": 0, "codes": 0, "other": 0}
        for g in all_gathers(hlo):
            if g.dtype in ("s8", "u8"):
                kinds["codes"] += g.received_bytes
            elif g.dtype == "f32" and all(s in shapes for s in g.result_shapes):
                kinds["fp32_kernel"] += g.received_bytes
            else:
                kinds["other"] += g.received_bytes
        out[mode] = {"losses": losses.tolist(), "weight_diff": max(diffs),
                     "loss_diff": float(np.max(np.abs(losses - base_losses))),
                     "gather_bytes": kinds, "fp32_baseline": baseline}
    return out


def check_trainer(steps: int = 2) -> dict:
    """The trainer itself (``sharding.gather`` in the config) on a 2 x 4 FSDP mesh: a
    one-layer tiny transformer (``model.kwargs``), variant ``tern``, ``steps`` steps per mode;
    losses, weights against ``weights``, the compiled step's all-gather bytes."""
    import tempfile
    from pathlib import Path

    from helpers.runs import lm_config
    from tern_jax.gather import all_gathers
    from tern_jax.train import Trainer

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4, 1), ("data", "fsdp", "tensor"))
    baseline, shapes = fp32_kernel_bytes(mesh, ("tern",))
    text = Path(tempfile.mkdtemp()) / "text.txt"
    text.write_text("".join(f"line {i}: {i * i % 97} ternary codes\n" for i in range(2000)))
    out, base = {}, None
    for mode in ("weights", "codes", "packed"):
        config = lm_config(text, {"model.variants": ("tern",), "model.kwargs": {"num_layers": 1},
                                  "data.batch_size": 64, "sharding.fsdp": 4,
                                  "sharding.data": 2, "sharding.gather": mode})
        trainer = Trainer(config)
        state = trainer.init_state()
        idx, keys = trainer.inputs.epoch_plan(0)
        arrays = trainer.inputs.arrays
        compiled = trainer.step_at.lower(state, arrays, idx[0], keys[0],
                                         jnp.int32(0)).compile()
        losses = []
        for s in range(steps):
            state, metrics = compiled(state, arrays, idx[s], keys[s], jnp.int32(s))
            losses.append(np.asarray(metrics["loss"]))
        params = jax.device_get(state.params)
        kinds = {"fp32_kernel": 0, "codes": 0, "other": 0}
        for g in all_gathers(compiled.as_text()):
            kind = "codes" if g.dtype in ("s8", "u8") else (
                "fp32_kernel" if g.dtype == "f32" and all(x in shapes for x in g.result_shapes)
                else "other")
            kinds[kind] += g.received_bytes
        losses = np.stack(losses)
        if base is None:
            base = (losses, params)
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                             base[1], params))
        out[mode] = {"losses": losses.tolist(), "weight_diff": max(diffs),
                     "loss_diff": float(np.max(np.abs(losses - base[0]))),
                     "gather_bytes": kinds, "fp32_baseline": baseline,
                     "planned": trainer.stack.gather is not None}
    return out


def print_checks() -> None:
    """Prints, as JSON, every check of this module on the 8 devices."""
    devices = np.array(jax.devices())
    fsdp = Mesh(devices.reshape(2, 4, 1), ("data", "fsdp", "tensor"))
    fsdp_tp = Mesh(devices.reshape(1, 4, 2), ("data", "fsdp", "tensor"))
    result = {
        "devices": len(devices),
        "quantizer": check_quantizer(fsdp),
        "quantizer_tp": check_quantizer(fsdp_tp),
        "training": check_trainer(),
        "training_mixed": check_training(fsdp_tp, ("fp", "tern_pc", "tern_t2"),
                                         modes=("weights", "packed"), model_axis="unroll"),
    }
    print(json.dumps(result))
