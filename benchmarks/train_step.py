"""Training-step cost of ternarization and residual expansion on CIFAR ResNet-20.

Part 1 times one jitted training step (forward + backward + SGD-momentum update, BatchNorm in
train mode, softmax cross entropy) of CIFAR ResNet-20 at ``--batch`` images for

* full precision,
* ternarized, ``t_ex = 1`` (every kernel, first and last layers included: the paper),
* ``t_ex = 2`` and ``t_ex = 4``, each in two forms: *folded*, ``y = op(x, Σ_k Ŵ_k)`` (what
  ``tern_jax.quantize_params`` returns), and *vmapped*, ``y = Σ_k op(x, Ŵ_k)`` (stacked kernels
  run under ``tern_jax.layers.vmapped_branches``: one ternary op per branch),

and prints each one's ratio to full precision, all measured in this run. Repetitions are
interleaved (round r times every variant before round r+1 starts), so drift in machine load
hits all variants alike; a variant's time is the minimum over ``--rounds`` rounds of the
median of ``--steps`` steps.

Part 2 trains N copies of the network in one program (``jax.vmap`` over a leading model axis
of params, batch_stats, optimizer state and the batch) and compares its images/s with N times
the single-model throughput (the same step with a model axis of one, timed in the same
rounds): ``efficiency = images/s(N models) / (N · images/s(1 model)) = t_1 / t_N``; 1.0 means
the N models cost no more time per step than one.

Targets (GPU): ternarized / full precision <= 1.05 and t_ex=4 folded / full precision <= 1.15.

Steps are timed one jitted call at a time from Python, not inside ``lax.scan``: on CPU, XLA
runs convolutions inside loops about 15x slower than outside.

    PYTHONPATH=. python benchmarks/train_step.py [--batch 128] [--steps N] [--rounds 3]
                                                 [--models 1,2,4] [--multi-variant fp]
                                                 [--model resnet20] [--variants fp,tern,...]

On CPU the defaults are 2 steps and --models 1,2 (a few minutes on an idle 2-core machine).
``--model resnet8 --batch 2 --steps 1 --rounds 1 --variants fp,t2-vmapped --models ''`` only
checks that it runs (the test suite's smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

#: Ratio-to-full-precision targets on GPU, by variant key.
TARGETS = {"tern": 1.05, "t4-folded": 1.15}


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    t_ex: int | None  # None: full precision
    stacked: bool = False


VARIANTS = (
    Variant("fp", "full precision", None),
    Variant("tern", "ternarized t_ex=1", 1),
    Variant("t2-folded", "t_ex=2 folded", 2),
    Variant("t2-vmapped", "t_ex=2 vmapped", 2, stacked=True),
    Variant("t4-folded", "t_ex=4 folded", 4),
    Variant("t4-vmapped", "t_ex=4 vmapped", 4, stacked=True),
)


def _parse_models(text: str) -> list[int]:
    try:
        models = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--models takes integers like 1,2,4; got {text!r}"
        ) from None
    if models and models[0] < 1:
        raise argparse.ArgumentTypeError(f"--models takes positive integers; got {text!r}")
    return models


def _parse_variants(text: str) -> list[str]:
    keys = [v.key for v in VARIANTS]
    chosen = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in keys]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--variants takes keys of {', '.join(keys)}; got {', '.join(unknown)}")
    return [k for k in keys if k == "fp" or k in chosen]  # in table order, fp first


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="resnet20", choices=CIFAR_RESNETS,
                        help="the CIFAR ResNet timed (default: resnet20, the paper's)")
    parser.add_argument("--batch", type=int, default=128, help="images per model and step")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per round (default: 2 on CPU, 50 else)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (min taken)")
    parser.add_argument(
        "--models",
        type=_parse_models,
        default=None,
        help="numbers of models vmapped in one program (default: 1,2,4; 1,2 on CPU; '' skips)",
    )
    parser.add_argument(
        "--variants",
        type=_parse_variants,
        default=[v.key for v in VARIANTS],
        help=f"comma-separated variants timed (default: all of {','.join(v.key for v in VARIANTS)};"
        " full precision is always timed, the reference)",
    )
    parser.add_argument(
        "--multi-variant",
        default="fp",
        choices=[v.key for v in VARIANTS],
        help="which variant the N vmapped models train (default: full precision)",
    )
    return parser.parse_args(argv)


PRESET = {None: "fp", 1: "tern", 2: "tern_t2", 4: "tern_t4"}
#: The CIFAR ResNets of :mod:`tern_jax.models` (depth 6n + 2).
CIFAR_RESNETS = ("resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def build_stack(task: Any, tx: Any, variant: Variant, models: int = 1) -> Any:
    """The library's own model stack for ``models`` copies of ``variant`` (seeds 0..N-1).

    The timed function is :func:`tern_jax.train.step.train_step` itself, the step every run
    trains with: ``loss = mean_i CE(softmax(f(x_i; Q(W))), y_i)`` with ``Q`` the identity (full
    precision) or the variant's rules, the gradient reaching the latent ``W`` through the
    straight-through estimator; stacked variants run under ``vmapped_branches``.
    """
    from tern_jax.train import ModelStack, Slot

    slots = tuple(Slot(PRESET[variant.t_ex], seed) for seed in range(models))
    return ModelStack(task, slots, tx, "vmap",
                      branches="vmapped" if variant.stacked else "folded")


class Timed:
    """A jitted train step and its carried state; :meth:`run` records the median step time."""

    def __init__(self, name: str, stack: Any, batch: Any, images: int):
        import functools

        import jax

        from tern_jax.train.step import train_step

        self.name, self.batch, self.images = name, batch, images
        self.fn = jax.jit(functools.partial(train_step, stack), donate_argnums=0)
        self.state = stack.init()
        self.step = jax.numpy.int32(0)
        self.times: list[float] = []  # one median per round

    def compile(self) -> float:
        import jax

        start = time.perf_counter()
        self.state, metrics = self.fn(self.state, self.batch, self.step)  # compile + first step
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start

    def run(self, steps: int) -> None:
        import jax

        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.state, metrics = self.fn(self.state, self.batch, self.step)
            jax.block_until_ready((self.state, metrics))
            times.append(time.perf_counter() - start)
        self.times.append(statistics.median(times))

    @property
    def seconds(self) -> float:
        return min(self.times)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    import flax
    import jax
    import jax.numpy as jnp
    import optax

    from tern_jax.models import get_model

    backend = jax.default_backend()
    # CPU defaults keep a run to a few minutes: a batch-128 ResNet-20 step takes about a second
    # there, and XLA:CPU runs the N-model (grouped) convolutions slowly.
    steps = args.steps if args.steps is not None else (2 if backend == "cpu" else 50)
    if args.models is None:
        args.models = [1, 2] if backend == "cpu" else [1, 2, 4]
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} ({backend}, {jax.device_count()} device(s)); "
        f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}; "
        f"python {sys.version.split()[0]}"
    )
    print(
        f"CIFAR {args.model}, batch {args.batch}, {steps} timed steps x {args.rounds} rounds "
        "(min over rounds of the median step)"
    )

    from tern_jax.train import ImageClassification

    task = ImageClassification(get_model(args.model, 10), 10, (32, 32, 3))
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    n_max = max([1, *args.models])
    k_x, k_y = jax.random.split(jax.random.key(0))
    images = jax.random.normal(k_x, (n_max, args.batch, 32, 32, 3), jnp.float32)
    labels = jax.random.randint(k_y, (n_max, args.batch), 0, 10)
    batch = lambda n: {"image": images[:n], "label": labels[:n]}  # noqa: E731

    timed: dict[str, Timed] = {}
    variants = [v for v in VARIANTS if v.key in args.variants]
    multi = next(v for v in VARIANTS if v.key == args.multi_variant)
    for v in variants + ([multi] if args.models and multi not in variants else []):
        timed[v.key] = Timed(v.label, build_stack(task, tx, v), batch(1), args.batch)
    for n in args.models:
        timed[f"x{n}"] = Timed(f"{n} x {multi.label}, vmapped", build_stack(task, tx, multi, n),
                               batch(n), n * args.batch)

    for t in timed.values():
        print(f"  compiled + first step {t.name:<32} {t.compile():7.1f} s", flush=True)
    for r in range(args.rounds):
        start = time.perf_counter()
        for t in timed.values():
            t.run(steps)
        print(f"  round {r + 1}/{args.rounds}: {time.perf_counter() - start:.1f} s", flush=True)

    fp = timed["fp"].seconds
    on_gpu = backend == "gpu"
    print()
    print(f"Training step, batch {args.batch} ({device.device_kind})")
    print(f"{'variant':<22}{'ms/step':>10}{'images/s':>11}{'x full prec.':>14}  target (GPU)")
    for v in variants:
        t = timed[v.key]
        ratio = t.seconds / fp
        target = ""
        if v.key in TARGETS:
            verdict = ("met" if ratio <= TARGETS[v.key] else "MISSED") if on_gpu else "n/a here"
            target = f"<= {TARGETS[v.key]:.2f} ({verdict})"
        print(
            f"{v.label:<22}{t.seconds * 1e3:10.2f}{t.images / t.seconds:11.0f}"
            f"{ratio:14.3f}  {target}"
        )
    for t_ex in (2, 4):
        if f"t{t_ex}-vmapped" in timed and f"t{t_ex}-folded" in timed:
            ratio = timed[f"t{t_ex}-vmapped"].seconds / timed[f"t{t_ex}-folded"].seconds
            print(f"  t_ex={t_ex}: vmapped / folded = {ratio:.3f}")

    if args.models:
        single = timed[multi.key]
        single_ips = single.images / single.seconds
        print()
        print(f"N models vmapped in one program ({multi.label}, batch {args.batch} per model)")
        print(
            f"{'N':>3}{'ms/step':>10}{'images/s':>11}{'N x single':>12}{'efficiency':>12}"
            f"{'speedup vs N runs':>19}"
        )
        print(f"{'1*':>3}{single.seconds * 1e3:10.2f}{single_ips:11.0f}{single_ips:12.0f}")
        for n in args.models:
            t = timed[f"x{n}"]
            ips = t.images / t.seconds
            print(
                f"{n:>3}{t.seconds * 1e3:10.2f}{ips:11.0f}{n * single_ips:12.0f}"
                f"{ips / (n * single_ips):12.3f}{n * single.seconds / t.seconds:19.2f}"
            )
        print("  1*: the single-model step (a model axis of one)")
        print("  efficiency = images/s / (N x single); speedup vs N runs = N * t_single / t_N")


if __name__ == "__main__":
    main()
