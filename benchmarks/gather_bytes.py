"""Bytes the all-gathers of one FSDP training step move: fp32 weights against ternary codes.

Compiles (abstract shapes, nothing allocated) the library's training step
(:func:`tern_jax.train.step.train_step`: forward, backward and Adam update) of a ternary
transformer language model on a simulated CPU mesh, its parameters and optimizer states
placed by the default transformer sharding rules (:data:`tern_jax.sharding.
TRANSFORMER_SHARDING`), once per mode:

* ``weights``: the plain FSDP step, as XLA partitions it;
* ``latent``: each ternary kernel's fp32 latent weights gathered explicitly, once
  (``tern_jax.gather.BASELINE_MODE``): the baseline of FSDP's weight gathers;
* ``codes``: each ternary kernel gathered as int8 codes (``sharding.gather="codes"``);
* ``packed``: as codes packed 4 to a byte (2 bits; 4 bits for ``t_ex > 1``).

It reads every ``all-gather`` of the compiled HLO (result shapes and element types, operand
types from their definitions) and prints, per mode, the bytes each device receives: fp32
gathers shaped like a ternary kernel, int8/uint8 code gathers, and the others (activations,
token ids, per-channel scales). Targets for the ternary kernels against ``latent``: >= 4x
fewer bytes with int8 codes, >= 12x packed (8x for ``t_ex > 1``, whose levels take 4 bits);
the exit status is 1 when one is missed.

    PYTHONPATH=. python benchmarks/gather_bytes.py [--devices 8] [--fsdp 8] [--tensor 1]
        [--d-model 128] [--layers 2] [--heads 4] [--mlp-ratio 4] [--vocab 256]
        [--seq-len 64] [--batch 16] [--variant tern,tern_t2]
        [--out experiments/results/scale/gather_bytes.md]
"""

from __future__ import annotations

import argparse
import os
import sys

TARGETS = {"codes": 4.0, "packed": 12.0}


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument("--fsdp", type=int, default=8, help="size of the fsdp mesh axis")
    parser.add_argument("--tensor", type=int, default=1, help="size of the tensor mesh axis")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp-ratio", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="windows per step")
    parser.add_argument("--variant", default="tern,tern_t2",
                        help="comma-separated TRANSFORMER_RULES presets, one table each")
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if args.devices % (args.fsdp * args.tensor):
        parser.error(f"--fsdp {args.fsdp} x --tensor {args.tensor} does not divide --devices "
                     f"{args.devices}")
    return args


def _mib(n: int) -> str:
    return f"{n / 2**20:.3f}"


MODES = ("weights", "latent", "codes", "packed")


def measure(args, variant: str) -> list[dict]:
    """Per mode: the step's all-gathers, split into ternary kernels and the rest."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding

    from tern_jax import sharding as sharding_lib
    from tern_jax.gather import GatherPlan, all_gathers, collectives
    from tern_jax.models.transformer import transformer_config
    from tern_jax.presets import TRANSFORMER_RULES
    from tern_jax.rules import match_params
    from tern_jax.train.config import ShardingConfig, Slot
    from tern_jax.train.language_model import LanguageModel
    from tern_jax.train.stack import ModelStack, TrainState
    from tern_jax.train.step import train_step

    mesh = sharding_lib.make_mesh(ShardingConfig(fsdp=args.fsdp, tensor=args.tensor),
                                  jax.devices()[:args.devices])
    config = transformer_config("transformer", vocab_size=args.vocab, d_model=args.d_model,
                                num_layers=args.layers, num_heads=args.heads,
                                mlp_ratio=args.mlp_ratio, max_len=args.seq_len)
    task = LanguageModel(config, seq_len=args.seq_len)

    def stack(plan=None):
        return ModelStack(task, (Slot(variant, 0),), optax.adam(1e-3), "vmap",
                          presets=TRANSFORMER_RULES, gather=plan)

    abstract = stack().abstract_state()
    specs = sharding_lib.state_specs(
        abstract.params, abstract.model_state, abstract.opt_state,
        sharding_lib.TRANSFORMER_SHARDING, mesh, tx=stack().tx, stacked=True, strict=False,
        unused="ignore")
    shardings = TrainState(*(sharding_lib.named(mesh, s) for s in specs))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
    one_model = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                             abstract.params)
    matches, _ = match_params(one_model, TRANSFORMER_RULES[variant], unused="ignore")
    kernel_shapes = {tuple(m.leaf.shape) for m in matches if m.quantized}
    kernel_shapes |= {(1, *s) for s in kernel_shapes}
    batch = {"tokens": jax.ShapeDtypeStruct(
        (1, args.batch, args.seq_len + 1), jnp.int32,
        sharding=NamedSharding(mesh, sharding_lib.batch_spec(mesh, 1)))}
    rows = []
    for mode in MODES:
        plan = None if mode == "weights" else GatherPlan.from_stacked(mesh, specs[0], mode)
        step = jax.jit(functools.partial(train_step, stack(plan)),
                       out_shardings=(shardings, None))
        hlo = step.lower(state, batch, jnp.int32(0)).compile().as_text()
        row = {"mode": mode, "fp32_kernel": 0, "codes": 0, "other": 0,
               "n_fp32_kernel": 0, "n_codes": 0, "n_other": 0}
        for g in all_gathers(hlo):
            if g.dtype in ("s8", "u8"):
                kind = "codes"
            elif g.dtype == "f32" and all(s in kernel_shapes for s in g.result_shapes):
                kind = "fp32_kernel"
            else:
                kind = "other"
            row[kind] += g.received_bytes
            row["n_" + kind] += 1
        row["reduced"] = sum(c.result_bytes for op in ("all-reduce", "reduce-scatter")
                             for c in collectives(hlo, op))
        rows.append(row)
    n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(one_model))
    for row in rows:
        row["params"] = n_params
        row["variant"] = variant
    return rows


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "-"


def table(rows, args) -> str:
    by_mode = {r["mode"]: r for r in rows}
    latent = by_mode["latent"]["fp32_kernel"]
    plain_total = sum(by_mode["weights"][k] for k in ("fp32_kernel", "codes", "other"))
    lines = [
        f"Variant `{rows[0]['variant']}`:",
        "",
        "| gather | fp32 kernel gathers | MiB | code gathers | MiB | other gathers | MiB | "
        "kernels: x fewer than `latent` | all gathers MiB | x fewer than `weights` | "
        "all-reduce, reduce-scatter MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        kernel_bytes = row["fp32_kernel"] + row["codes"]
        total = kernel_bytes + row["other"]
        lines.append(
            f"| `{row['mode']}` | {row['n_fp32_kernel']} | {_mib(row['fp32_kernel'])} | "
            f"{row['n_codes']} | {_mib(row['codes'])} | {row['n_other']} | "
            f"{_mib(row['other'])} | {_ratio(latent, kernel_bytes)} | {_mib(total)} | "
            f"{_ratio(plain_total, total)} | {_mib(row['reduced'])} |")
    return "\n".join(lines)


def header(rows, args) -> str:
    import jax

    data = args.devices // args.fsdp // args.tensor
    return (
        f"A transformer language model of {rows[0]['params']:,} parameters (d_model "
        f"{args.d_model}, {args.layers} layers, {args.heads} heads, MLP x{args.mlp_ratio}, "
        f"vocab {args.vocab}), one training step (forward, backward, Adam) on {args.devices} "
        f"simulated CPU devices (jax {jax.__version__}, XLA:CPU), mesh data {data} x fsdp "
        f"{args.fsdp} x tensor {args.tensor}, "
        f"parameters and Adam states placed by the default transformer sharding rules, batch "
        f"{args.batch} x {args.seq_len} tokens. Figures: bytes each device receives in the "
        "step's all-gathers (result less its own shard), read from the compiled HLO; the "
        "last column, for comparison, is the size of the step's all-reduce and reduce-scatter "
        "results per device (gradients and the quantizer's statistics).\n\n"
        "Modes: `weights`, the plain FSDP step as XLA partitions it (it may gather "
        "activations instead of some weights: the `other` gathers); `latent`, each ternary "
        "kernel's fp32 latent weights gathered explicitly, once, the baseline of FSDP's weight "
        "gathers; `codes`, int8 codes; `packed`, codes packed 4 to a byte (2 to a byte for "
        "`t_ex > 1`). \"Kernels: x fewer\" divides `latent`'s fp32 kernel bytes by the mode's "
        "kernel bytes (fp32 and codes).")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                               f"{args.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    tables, failed, head = [], [], None
    for variant in args.variant.split(","):
        rows = measure(args, variant)
        head = head or header(rows, args)
        tables.append(table(rows, args))
        by_mode = {r["mode"]: r for r in rows}
        from tern_jax.presets import TRANSFORMER_RULES

        t_ex = max(r.t_ex for r in TRANSFORMER_RULES[variant] if r.method is not None)
        for mode, target in TARGETS.items():
            if mode == "packed" and t_ex > 1:
                target = 8.0  # levels of 4 bits: 8x at best
            kernel = by_mode[mode]["fp32_kernel"] + by_mode[mode]["codes"]
            got = by_mode["latent"]["fp32_kernel"] / max(kernel, 1)
            if got < target:
                failed.append(f"{variant} {mode}: {got:.2f}x < {target}x")
    text = head + "\n\n" + "\n\n".join(tables)
    print(text)
    if args.out:
        command = "PYTHONPATH=. python benchmarks/gather_bytes.py " + " ".join(argv)
        with open(args.out, "w") as f:
            f.write(f"# All-gather bytes of one FSDP training step\n\n{text}\n\n"
                    f"Made by `{command.strip()}`.\n")
    if failed:
        print("below target: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
