"""Cost of ternarization in a training step: quantize_params + forward/backward vs full precision.

Prints the median step time of a small CNN's jitted loss-and-gradient with and without
``tern_jax.quantize_params`` (the paper's rule, t_ex=1), both measured in this run, and their
ratio. Target: at most 1.10 on CPU.

    python benchmarks/quantize_overhead.py [--batch 64] [--steps 30] [--t_ex 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import linen as nn

import tern_jax


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i, ch in enumerate((32, 64, 128)):
            x = nn.Conv(ch, (3, 3), strides=1 if i == 0 else 2, use_bias=False,
                        name=f"conv{i}")(x)
            x = nn.relu(x)
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


def _median_time(fn, params, steps):
    out = fn(params)
    jax.block_until_ready(out)  # compile outside the timing
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(params))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--t_ex", type=int, default=1)
    args = parser.parse_args(argv)

    model = SmallCNN()
    x = jax.random.normal(jax.random.key(0), (args.batch, 32, 32, 3))
    y = jax.random.randint(jax.random.key(1), (args.batch,), 0, 10)
    params = model.init(jax.random.key(2), x[:1])["params"]
    rules = [tern_jax.Rule(r".*/kernel", t_ex=args.t_ex)]

    def loss(p, quantize):
        if quantize:
            p = tern_jax.quantize_params(p, rules)
        logits = model.apply({"params": p}, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    full = jax.jit(jax.value_and_grad(lambda p: loss(p, False)))
    tern = jax.jit(jax.value_and_grad(lambda p: loss(p, True)))
    # interleave the two measurements so drift in machine load hits both alike
    t_full, t_tern = [], []
    for _ in range(3):
        t_full.append(_median_time(full, params, args.steps))
        t_tern.append(_median_time(tern, params, args.steps))
    full_s, tern_s = min(t_full), min(t_tern)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {args.batch}, "
          f"t_ex {args.t_ex}")
    print(f"full precision step: {full_s * 1e3:8.2f} ms")
    print(f"ternarized step:     {tern_s * 1e3:8.2f} ms")
    print(f"ratio ternarized/full precision: {tern_s / full_s:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
