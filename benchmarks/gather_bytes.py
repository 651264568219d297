"""Bytes the all-gathers of one FSDP training step move: fp32 weights against ternary codes.

Compiles (abstract shapes, nothing allocated) the library's training step
(:func:`tern_jax.train.step.train_step`: forward, backward and Adam update) of a ternary
transformer language model on a simulated CPU mesh, its parameters and optimizer states
split over ``fsdp``, once per ``sharding.gather`` mode:

* ``weights``: XLA gathers the fp32 latent weights (plain FSDP);
* ``codes``: each ternary kernel is gathered as int8 codes (``tern_jax.gather``);
* ``packed``: as codes packed 4 to a byte (2 bits; 4 bits for ``t_ex > 1``).

It reads every ``all-gather`` of the compiled HLO (operand and result shapes and element
types) and prints, per mode, the bytes each device receives: for the ternary kernels (fp32
gathers shaped like a ternary kernel, and every int8/uint8 gather) and in total, with the
ratios to ``weights``. Targets: >= 4x fewer bytes with int8 codes, >= 12x packed.

    PYTHONPATH=. python benchmarks/gather_bytes.py [--devices 8] [--fsdp 8] [--d-model 128]
        [--layers 2] [--heads 4] [--mlp-ratio 4] [--seq-len 64] [--batch 16]
        [--variant tern] [--out experiments/results/scale/gather_bytes.md]
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
    parser.add_argument("--variant", default="tern", help="a TRANSFORMER_RULES preset")
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if args.devices % (args.fsdp * args.tensor):
        parser.error(f"--fsdp {args.fsdp} x --tensor {args.tensor} does not divide --devices "
                     f"{args.devices}")
    return args


def _mib(n: int) -> str:
    return f"{n / 2**20:.3f}"


def measure(args) -> list[dict]:
    """Per mode: the step's all-gathers, split into ternary kernels and the rest."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from tern_jax.gather import GatherPlan, all_gathers, collectives
    from tern_jax.models.transformer import transformer_config
    from tern_jax.presets import TRANSFORMER_RULES
    from tern_jax.rules import match_params
    from tern_jax.train.config import Slot
    from tern_jax.train.language_model import LanguageModel
    from tern_jax.train.stack import ModelStack
    from tern_jax.train.step import train_step

    devices = np.array(jax.devices()[:args.devices])
    data = args.devices // (args.fsdp * args.tensor)
    mesh = Mesh(devices.reshape(data, args.fsdp, args.tensor), ("data", "fsdp", "tensor"))
    config = transformer_config("transformer", vocab_size=args.vocab, d_model=args.d_model,
                                num_layers=args.layers, num_heads=args.heads,
                                mlp_ratio=args.mlp_ratio, max_len=args.seq_len)
    task = LanguageModel(config, seq_len=args.seq_len)

    def stack(plan=None):
        return ModelStack(task, (Slot(args.variant, 0),), optax.adam(1e-3), "vmap",
                          presets=TRANSFORMER_RULES, gather=plan)

    def spec(shape, lead):
        if len(shape) - lead < 2:
            return P()
        for d in range(lead, len(shape)):
            if shape[d] % args.fsdp == 0:
                return P(*([None] * d), "fsdp")
        return P()

    abstract = stack().abstract_state()
    shardings = jax.tree.map(lambda a: NamedSharding(mesh, spec(a.shape, 1)), abstract)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
    one_model = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                             abstract.params)
    matches, _ = match_params(one_model, TRANSFORMER_RULES[args.variant], unused="ignore")
    kernel_shapes = {tuple(m.leaf.shape) for m in matches if m.quantized}
    kernel_shapes |= {(1, *s) for s in kernel_shapes}
    per_model = jax.tree.map(lambda a: spec(a.shape, 0), one_model)
    batch = {"tokens": jax.ShapeDtypeStruct(
        (1, args.batch, args.seq_len + 1), jnp.int32,
        sharding=NamedSharding(mesh, P(None, ("data", "fsdp"))))}
    rows = []
    for mode in ("weights", "codes", "packed"):
        plan = GatherPlan.from_specs(mesh, per_model, mode)
        step = jax.jit(functools.partial(train_step, stack(plan)),
                       out_shardings=(shardings, None))
        hlo = step.lower(state, batch, jnp.int32(0)).compile().as_text()
        kernel = other = n_kernel = n_other = 0
        for g in all_gathers(hlo):
            is_kernel = g.dtype in ("s8", "u8") or (
                g.dtype == "f32" and all(s in kernel_shapes for s in g.result_shapes))
            if is_kernel:
                kernel += g.received_bytes
                n_kernel += 1
            else:
                other += g.received_bytes
                n_other += 1
        reduced = sum(c.result_bytes for op in ("all-reduce", "reduce-scatter")
                      for c in collectives(hlo, op))
        rows.append({"mode": mode, "kernel_bytes": kernel, "kernel_gathers": n_kernel,
                     "other_bytes": other, "other_gathers": n_other, "reduced_bytes": reduced})
    n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(one_model))
    for row in rows:
        row["params"] = n_params
    return rows


def table(rows, args) -> str:
    base = rows[0]
    data = args.devices // args.fsdp // args.tensor
    lines = [
        f"A transformer ({rows[0]['params']:,} parameters: d_model {args.d_model}, "
        f"{args.layers} layers, {args.heads} heads, MLP x{args.mlp_ratio}, vocab {args.vocab}), "
        f"variant `{args.variant}`, one training step (forward, backward, Adam) on "
        f"{args.devices} simulated CPU devices, mesh data {data}"
        f" x fsdp {args.fsdp} x tensor {args.tensor}, batch {args.batch} x {args.seq_len} "
        "tokens. Bytes each device receives in the step's all-gathers (result less its own "
        "shard), read from the compiled HLO; the last column, for comparison, is the size of "
        "the step's all-reduce and reduce-scatter results per device (gradients and the "
        "quantizer's statistics), which gathering codes leaves as it was.",
        "",
        "| gather | ternary kernels: gathers | MiB | x fewer | other gathers | MiB | "
        "all gathers MiB | x fewer | all-reduce, reduce-scatter MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        total = row["kernel_bytes"] + row["other_bytes"]
        base_total = base["kernel_bytes"] + base["other_bytes"]
        ratio = base["kernel_bytes"] / row["kernel_bytes"] if row["kernel_bytes"] else float("inf")
        total_ratio = base_total / total if total else float("inf")
        lines.append(
            f"| `{row['mode']}` | {row['kernel_gathers']} | {_mib(row['kernel_bytes'])} | "
            f"{ratio:.2f} | {row['other_gathers']} | {_mib(row['other_bytes'])} | "
            f"{_mib(total)} | {total_ratio:.2f} | {_mib(row['reduced_bytes'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                               f"{args.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    rows = measure(args)
    text = table(rows, args)
    print(text)
    by_mode = {r["mode"]: r for r in rows}
    failed = []
    for mode, target in TARGETS.items():
        got = by_mode["weights"]["kernel_bytes"] / max(by_mode[mode]["kernel_bytes"], 1)
        if got < target:
            failed.append(f"{mode}: {got:.2f}x < {target}x")
    if args.out:
        command = "PYTHONPATH=. python benchmarks/gather_bytes.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        with open(args.out, "w") as f:
            f.write(f"# All-gather bytes of one FSDP training step\n\n{text}\n\n"
                    f"Made by `{command.strip()}`.\n")
    if failed:
        print("below target: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
