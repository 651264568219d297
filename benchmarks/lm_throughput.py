"""Training throughput of a ternary language model: against its fp twin, PyTorch, and 8 devices.

In one run, on this machine, with interleaved repetitions (round r times every contender
before round r+1; a contender's time is the minimum over ``--rounds`` of the median of
``--steps`` steps), it times one training step (forward, backward, Adam) of:

* tern_jax, ``tern``: the library's :func:`tern_jax.train.step.train_step` of a LLaMA-like
  transformer (gated MLP, rotary positions, RMSNorm) whose every weight matrix (embedding and
  head too) is ternarized in the step (``Δ = 0.05·max|W|``, straight-through gradient);
* tern_jax, ``fp``: the same step of its full-precision twin;
* PyTorch, ``BitLinear``: a plain transcription of the same model in PyTorch (eager), every
  ``nn.Linear`` a BitLinear with the same ternarization (``Δ = 0.05·max|W|``, ``α`` the mean of
  the kept magnitudes, the STE gate ``[|W| < 1]``), the embedding ternarized alike, same
  shapes, ``torch.optim.Adam``; and its full-precision twin. Skipped, with a message, when torch
  is not installed;
* tern_jax ``tern`` on 8 simulated CPU devices (a subprocess with
  ``--xla_force_host_platform_device_count=8``): 1 x 8 data parallelism (parameters
  replicated) against 8-way FSDP (parameters and Adam states sharded by
  :data:`tern_jax.sharding.TRANSFORMER_SHARDING`), the same global batch. Skipped, with a
  message, when the library has no :mod:`tern_jax.sharding`.

Target: tern_jax ternary / fp step time <= 1.05.

    PYTHONPATH=. python benchmarks/lm_throughput.py                  # small (seconds)
    PYTHONPATH=. python benchmarks/lm_throughput.py --real --json OUT  # the ~20M model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TARGET = 1.05
#: (d_model, layers, heads, seq_len, batch): the smoke size and the ~20M-parameter model.
SMALL = (64, 2, 2, 32, 8)
REAL = (512, 6, 8, 256, 8)
MLP_RATIO = 3


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true",
                        help=f"the ~20M-parameter model (d_model, layers, heads, seq_len, batch "
                             f"= {REAL}); default {SMALL}")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (min taken)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-devices", action="store_true", help="leave the 8-device run out")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class Timed:
    """One contender: ``step()`` runs (and waits for) one training step."""

    def __init__(self, name, step):
        self.name, self.step, self.times = name, step, []
        start = time.perf_counter()
        step()  # compiles (jax) or warms up (torch)
        self.first = time.perf_counter() - start

    def run(self, steps: int) -> None:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        self.times.append(statistics.median(times))

    @property
    def seconds(self) -> float:
        return min(self.times)


# -- tern_jax -----------------------------------------------------------------------------

def _config(size):
    from tern_jax.models.transformer import TransformerConfig

    d, layers, heads, seq, _ = size
    return TransformerConfig(vocab_size=256, max_len=seq, d_model=d, num_heads=heads,
                             num_layers=layers, mlp_ratio=MLP_RATIO, mlp="swiglu")


def _stack(size, variant):
    import optax

    from tern_jax.presets import TRANSFORMER_RULES
    from tern_jax.train import ModelStack, Slot
    from tern_jax.train.language_model import LanguageModel

    config = _config(size)
    return ModelStack(LanguageModel(config, config.max_len), (Slot(variant, 0),),
                      optax.adam(1e-3), "vmap", presets=TRANSFORMER_RULES)


def _tokens(size):
    import numpy as np

    _, _, _, seq, batch = size
    return np.random.default_rng(0).integers(0, 256, (batch, seq + 1)).astype(np.int32)


def jax_step(size, variant, shardings=None):
    """A step function of the library's train step for ``variant`` (state carried)."""
    import functools

    import jax
    import jax.numpy as jnp

    from tern_jax.train.step import train_step

    stack = _stack(size, variant)
    batch = {"tokens": jnp.asarray(_tokens(size))[None]}  # model axis of one
    kwargs = {}
    state = stack.init()
    if shardings is not None:
        state_sh, batch_sh, replicated = shardings(stack, state)
        state = jax.device_put(state, state_sh)
        batch = jax.device_put(batch, batch_sh)
        kwargs = {"in_shardings": (state_sh, batch_sh, replicated),
                  "out_shardings": (state_sh, replicated)}
    fn = jax.jit(functools.partial(train_step, stack), donate_argnums=0, **kwargs)
    carried = {"state": state, "step": jnp.int32(0)}

    def step():
        carried["state"], metrics = fn(carried["state"], batch, carried["step"])
        jax.block_until_ready((carried["state"], metrics))

    params = sum(x.size for x in jax.tree.leaves(state.params))
    return step, int(params)


# -- PyTorch transcription ----------------------------------------------------------------

def torch_step(size, ternary: bool):
    """The same model and step in plain PyTorch (eager), BitLinear layers when ``ternary``."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    d, layers, heads, seq, batch = size
    hd = d // heads

    class Ternarize(torch.autograd.Function):
        """Δ = 0.05·max|W|, α = mean(|W| : |W| ≥ Δ); backward: the STE gate [|W| < 1]."""

        @staticmethod
        def forward(ctx, w):
            ctx.save_for_backward(w)
            a = w.abs()
            keep = (a >= 0.05 * a.max()) & (a > 0)
            alpha = (a * keep).sum() / keep.sum().clamp(min=1)
            return alpha * torch.sign(w) * keep

        @staticmethod
        def backward(ctx, g):
            (w,) = ctx.saved_tensors
            return g * (w.abs() < 1).to(g.dtype)

    def weight(w):
        return Ternarize.apply(w) if ternary else w

    def init(*shape, std=0.02):
        return nn.Parameter(torch.randn(*shape) * std)

    class BitLinear(nn.Module):
        def __init__(self, n_in, n_out, std=0.02):
            super().__init__()
            self.weight = init(n_out, n_in, std=std)

        def forward(self, x):
            return F.linear(x, weight(self.weight))

    def rms(x, scale):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale

    half = hd // 2
    inv = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    angle = torch.arange(seq, dtype=torch.float32)[:, None] * inv
    sin, cos = angle.sin()[None, :, None], angle.cos()[None, :, None]

    def rotary(x):
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            out_std = 0.02 / (2 * layers) ** 0.5
            self.attn_norm, self.mlp_norm = nn.Parameter(torch.ones(d)), nn.Parameter(
                torch.ones(d))
            self.q, self.k, self.v = BitLinear(d, d), BitLinear(d, d), BitLinear(d, d)
            self.o = BitLinear(d, d, out_std)
            self.gate, self.up = BitLinear(d, MLP_RATIO * d), BitLinear(d, MLP_RATIO * d)
            self.down = BitLinear(MLP_RATIO * d, d, out_std)

        def forward(self, x):
            b, t, _ = x.shape
            h = rms(x, self.attn_norm)
            q, k, v = (f(h).view(b, t, heads, hd) for f in (self.q, self.k, self.v))
            q, k = rotary(q), rotary(k)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
            x = x + self.o(y.transpose(1, 2).reshape(b, t, d))
            h = rms(x, self.mlp_norm)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = init(256, d)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.final_norm = nn.Parameter(torch.ones(d))
            self.head = BitLinear(d, 256)

        def forward(self, tokens):
            x = F.embedding(tokens, weight(self.embed))
            for block in self.blocks:
                x = block(x)
            return self.head(rms(x, self.final_norm))

    torch.manual_seed(0)
    model = LM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.from_numpy(_tokens(size)).long()

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in model.parameters())


# -- 8 simulated devices -------------------------------------------------------------------

def _mesh_shardings(layout: str):
    """``shardings(stack, state)`` for the 8 local devices as 1 x 8 DP or 8-way FSDP."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from tern_jax import sharding

    sizes = (8, 1, 1) if layout == "dp" else (1, 8, 1)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(sizes), sharding.MESH_AXES)

    def shardings(stack, state):
        from tern_jax.train.stack import TrainState

        specs = sharding.state_specs(state.params, state.model_state, state.opt_state,
                                     sharding.TRANSFORMER_SHARDING, mesh, tx=stack.tx,
                                     stacked=True, strict=False, unused="ignore")
        named = [jax.tree.map(lambda s: NamedSharding(mesh, s), sp,
                              is_leaf=lambda x: isinstance(x, P)) for sp in specs]
        return (TrainState(*named), {"tokens": NamedSharding(mesh, P(None, ("data", "fsdp")))},
                NamedSharding(mesh, P()))

    return shardings


def _child(spec: str) -> None:
    size, steps, rounds = json.loads(spec)
    timed = [Timed(f"8 devices, {layout}", jax_step(size, "tern", _mesh_shardings(layout))[0])
             for layout in ("dp", "fsdp")]
    for _ in range(rounds):
        for t in timed:
            t.run(steps)
    print("ROWS " + json.dumps({t.name: [t.seconds, t.first] for t in timed}))


def _devices_run(size, steps, rounds):
    """The 8-device timings from a subprocess, or ``(None, why)``."""
    try:
        import tern_jax.sharding  # noqa: F401
    except ImportError:
        return None, "left out: this tern_jax has no tern_jax.sharding (FSDP)"
    flags = os.environ.get("XLA_FLAGS", "")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=8".strip()}
    done = subprocess.run([sys.executable, __file__, "--child",
                           json.dumps([list(size), steps, rounds])], env=env,
                          capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("ROWS "):
            return json.loads(line[5:]), None
    return None, f"the 8-device process failed: {done.stderr.strip().splitlines()[-1:]}"


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.child is not None:
        _child(args.child)
        return 0
    import jax

    size = REAL if args.real else SMALL
    d, layers, heads, seq, batch = size
    tokens = batch * seq
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} CPUs; jax {jax.__version__}")
    contenders = []
    fp_step, params = jax_step(size, "fp")
    contenders.append(Timed("tern_jax fp", fp_step))
    contenders.append(Timed("tern_jax tern", jax_step(size, "tern")[0]))
    print(f"model: d_model {d}, {layers} layers, {heads} heads, gated MLP {MLP_RATIO}x, "
          f"{params:,} parameters; {batch} x {seq} tokens per step; {args.steps} steps x "
          f"{args.rounds} rounds (min over rounds of the median)")
    torch_note = None
    if args.no_torch:
        torch_note = "left out (--no-torch)"
    else:
        try:
            import torch
        except ImportError:
            torch_note = "skipped: PyTorch is not installed (pip install torch)"
        else:
            torch_params = None
            for name, ternary in (("PyTorch fp", False), ("PyTorch BitLinear", True)):
                step, torch_params = torch_step(size, ternary)
                contenders.append(Timed(name, step))
            print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"{torch_params:,} parameters")
    for _ in range(args.rounds):
        for t in contenders:
            t.run(args.steps)
    devices, devices_note = (None, "left out (--no-devices)") if args.no_devices else \
        _devices_run(size, args.steps, args.rounds)
    base = contenders[0].seconds
    print(f"{'contender':26s} {'ms/step':>9s} {'tokens/s':>9s} {'/ tern_jax fp':>13s}")
    figures = {}
    rows = [(t.name, t.seconds) for t in contenders]
    rows += [(name, s) for name, (s, _) in (devices or {}).items()]
    for name, seconds in rows:
        print(f"{name:26s} {1e3 * seconds:9.1f} {tokens / seconds:9.0f} {seconds / base:13.3f}")
        figures[name] = {"seconds_per_step": seconds, "tokens_per_second": tokens / seconds,
                         "ratio_to_jax_fp": seconds / base}
    ratio = figures["tern_jax tern"]["ratio_to_jax_fp"]
    print(f"tern_jax ternary / fp: {ratio:.3f} (target <= {TARGET:.2f}: "
          f"{'met' if ratio <= TARGET else 'missed'})")
    if "PyTorch BitLinear" in figures:
        print(f"tern_jax tern / PyTorch BitLinear: "
              f"{figures['tern_jax tern']['seconds_per_step'] / figures['PyTorch BitLinear']['seconds_per_step']:.3f}")  # noqa: E501
    if devices:
        dp, fsdp = (figures[f"8 devices, {k}"]["seconds_per_step"] for k in ("dp", "fsdp"))
        print(f"8 simulated devices, FSDP / DP: {fsdp / dp:.3f}")
    for note in (torch_note, devices_note):
        if note:
            print(note)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(
            {"size": dict(zip(("d_model", "layers", "heads", "seq_len", "batch"), size)),
             "params": params, "tokens_per_step": tokens, "steps": args.steps,
             "rounds": args.rounds, "contenders": figures,
             "notes": [n for n in (torch_note, devices_note) if n]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
