"""Training-step cost of ternarization on the NNX transformer language model.

Times one jitted training step of the library's own :func:`tern_jax.train.step.train_step`
(forward + backward + Adam update of one model, next-byte cross entropy, the weights
ternarized by the variant's rules inside the step) for full precision and every ternary
variant of :data:`tern_jax.presets.TRANSFORMER_RULES`, and prints each one's time, its
training tokens/s and its ratio to full precision, all measured in this run. Repetitions are
interleaved (round r times every variant before round r+1 starts), so drift in machine load
hits all variants alike; a variant's time is the minimum over ``--rounds`` rounds of the
median of ``--steps`` steps.

Target: ternarized (``tern``) / full precision <= 1.05.

    PYTHONPATH=. python benchmarks/lm_train_step.py [--model transformer_small] [--batch 32]
                                                    [--steps 20] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

TARGET = 1.05


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="transformer_small",
                        help="a name of tern_jax.models.TRANSFORMER_CONFIGS")
    parser.add_argument("--batch", type=int, default=32, help="windows per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (min taken)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated presets (default: all of TRANSFORMER_RULES)")
    parser.add_argument("--json", default=None,
                        help="also write the figures to this JSON file (for results tables)")
    return parser.parse_args(argv)


class Timed:
    """A jitted train step of one variant and its carried state."""

    def __init__(self, stack, batch):
        import jax

        from tern_jax.train.step import train_step

        self.fn = jax.jit(functools.partial(train_step, stack), donate_argnums=0)
        self.state = stack.init()
        self.batch = batch
        self.step = jax.numpy.int32(0)
        self.times: list[float] = []

    def _once(self):
        import jax

        self.state, metrics = self.fn(self.state, self.batch, self.step)
        jax.block_until_ready((self.state, metrics))

    def compile(self) -> float:
        start = time.perf_counter()
        self._once()
        return time.perf_counter() - start

    def run(self, steps: int) -> None:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self._once()
            times.append(time.perf_counter() - start)
        self.times.append(statistics.median(times))

    @property
    def seconds(self) -> float:
        return min(self.times)


def main(argv=None) -> int:
    args = _parse_args(argv)
    import flax
    import jax
    import numpy as np
    import optax

    from tern_jax.models.transformer import transformer_config
    from tern_jax.presets import TRANSFORMER_RULES
    from tern_jax.train import ModelStack, Slot
    from tern_jax.train.language_model import LanguageModel

    variants = args.variants.split(",") if args.variants else list(TRANSFORMER_RULES)
    if "fp" not in variants:
        variants.insert(0, "fp")
    config = transformer_config(args.model)
    task = LanguageModel(config, config.max_len)
    tx = optax.adam(1e-3)
    tokens = np.random.default_rng(0).integers(0, 256, (1, args.batch, config.max_len + 1))
    batch = {"tokens": jax.numpy.asarray(tokens, jax.numpy.int32)}  # model axis of one
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); jax "
          f"{jax.__version__}, flax {flax.__version__}; python {sys.version.split()[0]}")
    print(f"{args.model}: d_model {config.d_model}, {config.num_layers} layers, "
          f"{config.num_heads} heads, {args.batch} x {config.max_len} tokens per step; "
          f"{args.steps} timed steps x {args.rounds} rounds (min over rounds of the median)")
    timed = {}
    for name in variants:
        stack = ModelStack(task, (Slot(name, 0),), tx, "vmap", presets=TRANSFORMER_RULES)
        timed[name] = Timed(stack, batch)
        print(f"  compiled {name:8s} in {timed[name].compile():5.1f} s")
    for _ in range(args.rounds):
        for t in timed.values():
            t.run(args.steps)
    base = timed["fp"].seconds
    tokens_per_step = args.batch * config.max_len
    print(f"{'variant':10s} {'ms/step':>8s} {'tokens/s':>9s} {'/ fp':>6s}")
    figures = {}
    for name, t in timed.items():
        ratio = t.seconds / base
        flag = ""
        if name == "tern":
            flag = f"  (target <= {TARGET:.2f}: {'met' if ratio <= TARGET else 'missed'})"
        print(f"{name:10s} {1e3 * t.seconds:8.2f} {tokens_per_step / t.seconds:9.0f} "
              f"{ratio:6.3f}{flag}")
        figures[name] = {"seconds_per_step": t.seconds,
                         "tokens_per_second": tokens_per_step / t.seconds, "ratio_to_fp": ratio}
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).write_text(json.dumps(
            {"model": args.model, "batch": args.batch, "tokens_per_step": tokens_per_step,
             "steps": args.steps, "rounds": args.rounds, "device": jax.devices()[0].device_kind,
             "variants": figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
