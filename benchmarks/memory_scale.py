"""Memory per device of the ternary train step at 125M-7B parameters, compiled without hardware.

Lowers and compiles, from abstract shapes only (``jax.ShapeDtypeStruct`` with shardings:
nothing is allocated), the library's own training step
(:func:`tern_jax.train.step.train_step`: the weights ternarized by the ``tern`` rules, forward,
backward and an Adam update, the state donated) of LLaMA-shaped transformers (gated MLP,
rotary positions, RMSNorm, a 32000-token vocabulary, untied head, 2048-token windows, one
window per device) on simulated CPU meshes (``--xla_force_host_platform_device_count``, set
before jax is imported: one subprocess per device count), for three layouts:

* ``dp``: data parallelism, every parameter and Adam state replicated (``data`` = devices);
* ``fsdp``: fully sharded (``fsdp`` = devices);
* ``fsdp_tp``: ``fsdp`` x ``tensor`` (``tensor`` = 4: Megatron's split of heads and MLP).

Parameters and Adam states are placed by the transformer's default sharding rules
(:data:`tern_jax.sharding.TRANSFORMER_SHARDING`, through :func:`tern_jax.sharding.state_specs`)
and the batch is split over ``data`` x ``fsdp``. XLA's ``compiled.memory_analysis()`` gives,
per device, the bytes of the arguments (parameters, Adam states, batch), the outputs, the
outputs aliased to (donated) arguments, and the temporaries (activations, gradients,
ternarized weights, gathered weights); the peak is taken as ``arguments + outputs - aliased +
temporaries``. These are XLA:CPU's buffer assignments: a GPU or TPU compiler fuses and
schedules differently, so read them as estimates of what fits, within some tens of percent.

    PYTHONPATH=. python benchmarks/memory_scale.py                     # the full table
    PYTHONPATH=. python benchmarks/memory_scale.py --sizes tiny --devices 8 --ablation tiny \\
        --out /tmp/scale                                               # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30
#: LLaMA-shaped sizes (gated MLP of 3·d_model, multi-head attention, 32000 tokens); ``tiny``
#: is for the smoke test.
COMMON = {"vocab_size": 32000, "mlp": "swiglu", "mlp_ratio": 3}
SIZES = {
    "tiny": {"d_model": 64, "num_layers": 2, "num_heads": 4, "vocab_size": 512},
    "125m": {"d_model": 768, "num_layers": 12, "num_heads": 12},
    "350m": {"d_model": 1024, "num_layers": 24, "num_heads": 16},
    "1.3b": {"d_model": 2048, "num_layers": 24, "num_heads": 32},
    "7b": {"d_model": 4096, "num_layers": 32, "num_heads": 32},
}
STRATEGIES = ("dp", "fsdp", "fsdp_tp")
TENSOR = 4  # the tensor-parallel axis of fsdp_tp
DEVICE_MEMORY = {"16 GiB": 16 * GIB, "80 GiB": 80 * GIB}


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="125m,350m,1.3b,7b", help=f"of {', '.join(SIZES)}")
    parser.add_argument("--devices", default="8,64,256", help="simulated device counts")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seq_len", type=int, default=2048, help="tokens per window")
    parser.add_argument("--ablation", default="1.3b",
                        help="size compiled with and without scan_layers and remat (fsdp on the "
                             "smallest device count); empty: none")
    parser.add_argument("--variant", default="tern", help="a TRANSFORMER_RULES preset")
    parser.add_argument("--out", default="experiments/results/scale",
                        help="folder for memory.md and memory.json")
    parser.add_argument("--append", action="store_true",
                        help="add to (and replace rows of) the memory.json already in --out")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _mesh_sizes(strategy: str, n: int) -> dict:
    return {"dp": {"data": n, "fsdp": 1, "tensor": 1},
            "fsdp": {"data": 1, "fsdp": n, "tensor": 1},
            "fsdp_tp": {"data": 1, "fsdp": n // TENSOR, "tensor": TENSOR}}[strategy]


def _specs(stack, abstract, mesh):
    """Specs of the state by the library's rules (tern_jax.sharding), and where they came from."""
    from tern_jax import sharding

    specs = sharding.state_specs(abstract.params, abstract.model_state, abstract.opt_state,
                                 sharding.TRANSFORMER_SHARDING, mesh, tx=stack.tx,
                                 stacked=True, strict=False, unused="ignore")
    return specs, "tern_jax.sharding.TRANSFORMER_SHARDING"


def measure(job: dict) -> dict:
    """Compiles one configuration in this process; its figures as a dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from tern_jax.models.transformer import TransformerConfig
    from tern_jax.presets import TRANSFORMER_RULES
    from tern_jax.train import ModelStack, Slot
    from tern_jax.train.language_model import LanguageModel
    from tern_jax.train.stack import TrainState
    from tern_jax.train.step import train_step

    n, seq = job["devices"], job["seq_len"]
    sizes = _mesh_sizes(job["strategy"], n)
    config = TransformerConfig(**{**COMMON, **SIZES[job["size"]], "max_len": seq,
                                  "scan_layers": job["scan"], "remat": job["remat"]})
    stack = ModelStack(LanguageModel(config, seq), (Slot(job["variant"], 0),), optax.adam(1e-4),
                       "vmap", presets=TRANSFORMER_RULES)
    devices = np.array(jax.devices()[:n]).reshape(sizes["data"], sizes["fsdp"], sizes["tensor"])
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    abstract = stack.abstract_state()
    (p_specs, s_specs, o_specs), source = _specs(stack, abstract, mesh)
    named = lambda specs: jax.tree.map(lambda s: NamedSharding(mesh, s), specs,  # noqa: E731
                                       is_leaf=lambda x: isinstance(x, P))
    shardings = TrainState(named(p_specs), named(s_specs), named(o_specs))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
    batch_sharding = NamedSharding(mesh, P(None, ("data", "fsdp")))
    batch = {"tokens": jax.ShapeDtypeStruct((1, n, seq + 1), jnp.int32,
                                            sharding=batch_sharding)}
    replicated = NamedSharding(mesh, P())
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract.params))
    fn = jax.jit(lambda s, b, t: train_step(stack, s, b, t),
                 in_shardings=(shardings, {"tokens": batch_sharding}, replicated),
                 out_shardings=(shardings, replicated), donate_argnums=0)
    start = time.perf_counter()
    lowered = fn.lower(state, batch, step)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    m = compiled.memory_analysis()
    figures = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
               ("argument", "output", "alias", "temp", "generated_code")}
    peak = figures["argument"] + figures["output"] - figures["alias"] + figures["temp"]
    return {**job, "mesh": sizes, "params": params, "lower_s": lowered_at - start,
            "compile_s": done - lowered_at, **figures, "peak": peak, "specs": source,
            "tokens_per_step": n * seq}


def _child(spec: str) -> None:
    for job in json.loads(spec):
        try:
            row = measure(job)
        except Exception as e:  # noqa: BLE001 - one failed shape is a row saying why
            row = {**job, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print("ROW " + json.dumps(row), flush=True)


def _run_child(n: int, jobs: list[dict]) -> list[dict]:
    flags = os.environ.get("XLA_FLAGS", "")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n}".strip()}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(jobs)], env=env,
                          capture_output=True, text=True)
    rows = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode != 0 or len(rows) != len(jobs):
        tail = done.stderr.strip().splitlines()[-3:]
        why = " | ".join(tail) or f"exit {done.returncode}"
        seen = {tuple(r[k] for k in _KEY) for r in rows}
        rows += [{**j, "error": f"the compiling process died: {why}"} for j in jobs
                 if tuple(j[k] for k in _KEY) not in seen]
    return [{**r, "xla_flags": flags} for r in rows]


def _gib(x: int) -> str:
    return f"{x / GIB:.2f}"


def _fits(peak: int) -> str:
    return " / ".join("yes" if peak <= limit else "no" for limit in DEVICE_MEMORY.values())


def _table(rows: list[dict], with_flags: bool = False) -> list[str]:
    head = ["size", "params", "devices", "layout", "mesh (data x fsdp x tensor)"]
    if with_flags:
        head += ["scan_layers", "remat"]
    head += ["arguments GiB", "outputs GiB", "aliased GiB", "temporaries GiB", "peak GiB",
             "fits 16 / 80 GiB", "compile s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        params = r.get("params")
        cells = [r["size"], "-" if params is None else f"{params / 1e6:,.0f}M"
                 if params >= 1e7 else f"{params / 1e6:.2f}M",
                 str(r["devices"]), r["strategy"]]
        mesh = _mesh_sizes(r["strategy"], r["devices"])
        cells.append(f"{mesh['data']} x {mesh['fsdp']} x {mesh['tensor']}")
        if with_flags:
            cells += [str(r["scan"]), str(r["remat"])]
        if "error" in r:
            cells += ["not compiled: " + r["error"].replace("|", "/")] + [""] * 6
        else:
            cells += [_gib(r["argument"]), _gib(r["output"]), _gib(r["alias"]), _gib(r["temp"]),
                      _gib(r["peak"]), _fits(r["peak"]),
                      f"{r['lower_s'] + r['compile_s']:.1f}" + (
                          " (O0)" if "optimization_level=0" in r.get("xla_flags", "") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.child is not None:
        _child(args.child)
        return 0
    sizes = [s for s in args.sizes.split(",") if s]
    counts = [int(n) for n in args.devices.split(",") if n]
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = ([s for s in sizes if s not in SIZES] + [s for s in strategies
                                                       if s not in STRATEGIES])
    if unknown or args.ablation and args.ablation not in SIZES:
        raise SystemExit(f"unknown size or layout {unknown or args.ablation}; sizes: "
                         f"{', '.join(SIZES)}; layouts: {', '.join(STRATEGIES)}")
    if any(n % TENSOR for n in counts):
        raise SystemExit(f"device counts must be multiples of {TENSOR} (the tensor axis)")
    base = {"seq_len": args.seq_len, "variant": args.variant}
    rows, ablation = [], []
    for n in counts:
        jobs = [{**base, "size": s, "devices": n, "strategy": st, "scan": True, "remat": True}
                for s in sizes for st in strategies]
        if args.ablation and n == min(counts):
            jobs += [{**base, "size": args.ablation, "devices": n, "strategy": "fsdp",
                      "scan": scan, "remat": remat, "ablation": True}
                     for scan in (False, True) for remat in (False, True)
                     if not (scan and remat and args.ablation in sizes
                             and "fsdp" in strategies)]
        start = time.perf_counter()
        found = _run_child(n, jobs)
        print(f"{n} devices: {len(jobs)} compiles in {time.perf_counter() - start:.0f} s",
              flush=True)
        rows += [r for r in found if not r.get("ablation")]
        ablation += [r for r in found if r.get("ablation")]
    if args.ablation and args.ablation in sizes and "fsdp" in strategies:
        ablation += [{**r, "ablation": True} for r in rows if r["size"] == args.ablation
                     and r["devices"] == min(counts) and r["strategy"] == "fsdp"]
    flags = os.environ.get("XLA_FLAGS", "").strip()
    command = " ".join(["PYTHONPATH=.", *([f"XLA_FLAGS={flags!r}"] if flags else []),
                        "python benchmarks/memory_scale.py",
                        *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    previous = {"rows": [], "ablation": [], "commands": []}
    if args.append and (out / "memory.json").is_file():
        previous = json.loads((out / "memory.json").read_text())
    figures = {"rows": _merge(previous["rows"], rows),
               "ablation": _merge(previous["ablation"], ablation),
               "commands": [c for c in previous["commands"] if c != command] + [command]}
    lines = _document(figures, args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.md").write_text("\n".join(lines))
    (out / "memory.json").write_text(json.dumps(figures, indent=1))
    print("\n".join(lines))
    return 0


_KEY = ("size", "devices", "strategy", "scan", "remat", "seq_len", "variant")


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows with ``new`` ones added (a new row replaces an old one of the same key),
    in table order: size, devices, layout, scan_layers, remat."""
    rows = {tuple(r[k] for k in _KEY): r for r in old + new}
    order = list(SIZES)
    return sorted(rows.values(), key=lambda r: (order.index(r["size"]), r["devices"],
                                                STRATEGIES.index(r["strategy"]), r["scan"],
                                                r["remat"]))


def _document(figures: dict, args) -> list[str]:
    import jax

    rows, ablation = figures["rows"], figures["ablation"]
    specs = next((r["specs"] for r in rows + ablation if "specs" in r), "-")
    seq = sorted({r["seq_len"] for r in rows + ablation})
    lines = [
        "# Memory per device of the ternary train step (compiled, not run)",
        "",
        f"Ternary (`{args.variant}`) train step of LLaMA-shaped transformers (gated MLP of "
        "3·d_model, multi-head attention, 32000-token vocabulary, untied head): ternarize + "
        "forward + backward + Adam, state donated; "
        f"{'/'.join(map(str, seq))}-token windows, one per device (global batch = devices); "
        f"parameters and Adam states placed by `{specs}`, the batch split over data x fsdp; "
        "scan_layers and remat on unless said. Bytes per device (GiB) from XLA:CPU's "
        "`compiled.memory_analysis()` on simulated devices "
        f"(jax {jax.__version__}); peak = arguments + outputs - aliased + temporaries; "
        "\"fits\" compares the peak with 16 and 80 GiB. Compile seconds (lowering + "
        "compiling) on this machine's CPU (2 cores, shared with other work), each device count "
        "in its own process; (O0): compiled with `--xla_backend_optimization_level=0` (LLVM's "
        "optimizations off: the same buffers, a shorter compile).",
        "",
        *_table(rows),
    ]
    groups = sorted({(r["size"], r["devices"]) for r in ablation},
                    key=lambda g: (list(SIZES).index(g[0]), g[1]))
    for size, n in groups:
        lines += ["", f"## scan_layers and remat ({size}, fsdp, {n} devices)", "",
                  *_table([r for r in ablation if (r["size"], r["devices"]) == (size, n)],
                          with_flags=True)]
    lines += ["", "Rebuilt by (in this order; `--append` adds to the table):", "",
              *(f"    {c}" for c in figures["commands"]), ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
