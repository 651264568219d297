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


def fsdp_spec(shape, mesh, *, model_axis: bool = True) -> P:
    """A simple FSDP layout for tests: the first dimension after the model axis that the
    ``fsdp`` axis divides is split over it (rank >= 2 weights only); the rest replicated."""
    lead = 1 if model_axis else 0
    if len(shape) - lead < 2:
        return P()
    n = mesh.shape["fsdp"]
    for d in range(lead, len(shape)):
        if shape[d] % n == 0:
            return P(*([None] * d), "fsdp")
    return P()


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
    if tp:
        cases += [
            ("fsdp_x_tensor", (32, 24), P("fsdp", "tensor"), {}, False),
            ("per_channel_on_tensor", (32, 24), P("fsdp", "tensor"), {"axis": -1}, False),
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
    got = jax.jit(functools.partial(run, modes=("codes", "packed")))(sharded, probes, scales)
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


def train_fsdp(mesh, variants, mode, steps: int = 3, model_axis="vmap"):
    """``steps`` FSDP steps of the tiny transformer: losses (steps, M), final params, the
    compiled step's HLO text."""
    from tern_jax.gather import GatherPlan
    from tern_jax.train.step import train_step

    plain = tiny_stack(variants, model_axis=model_axis)
    state = plain.init()
    shardings = jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, mesh)), state)
    per_model = jax.tree.map(lambda a: fsdp_spec(a.shape[1:], mesh, model_axis=False),
                             state.params)
    plan = GatherPlan.from_specs(mesh, per_model, mode)
    stack = tiny_stack(variants, gather=plan, model_axis=model_axis)
    state = jax.device_put(state, shardings)
    rng = np.random.default_rng(0)
    m = stack.num_models
    batch_sharding = NamedSharding(mesh, P(None, ("data", "fsdp")))
    batches = [jax.device_put({"tokens": rng.integers(0, 256, (m, 16, 17)).astype(np.int32)},
                              {"tokens": batch_sharding}) for _ in range(steps)]
    step_fn = jax.jit(functools.partial(train_step, stack), out_shardings=(shardings, None))
    compiled = step_fn.lower(state, batches[0], jnp.int32(0)).compile()
    losses = []
    for s, batch in enumerate(batches):
        state, metrics = compiled(state, batch, jnp.int32(s))
        losses.append(np.asarray(metrics["loss"]))
    return np.stack(losses), jax.tree.map(np.asarray, state.params), compiled.as_text()


def check_training(mesh, variants, modes=("weights", "codes", "packed"), model_axis="vmap"):
    """Per mode: losses, max |weight difference| to the ``weights`` run, all-gather bytes."""
    from tern_jax.gather import all_gathers, gather_bytes_by_dtype

    runs = {mode: train_fsdp(mesh, variants, mode, model_axis=model_axis) for mode in modes}
    base_losses, base_params, _ = runs[modes[0]]
    out = {}
    for mode, (losses, params, hlo) in runs.items():
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                             base_params, params))
        gathers = all_gathers(hlo)
        out[mode] = {"losses": losses.tolist(), "weight_diff": max(diffs),
                     "loss_diff": float(np.max(np.abs(losses - base_losses))),
                     "gather_bytes": gather_bytes_by_dtype(gathers),
                     "gathers": len(gathers)}
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
        "training": check_training(fsdp, ("tern",)),
        "training_mixed": check_training(fsdp, ("fp", "tern_pc", "tern_t2"),
                                         modes=("weights", "packed"), model_axis="unroll"),
    }
    print(json.dumps(result))
