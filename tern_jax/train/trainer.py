"""One trainer for every experiment: several models vmapped in one program, SPMD over devices.

All models of a run share one architecture and are stacked on a leading *model axis*: each
has its own variant (full precision or a rule preset), seed, parameters, BatchNorm statistics
and optimizer state. One jitted step trains all of them (``jax.vmap`` over the model axis), so
a table row (full precision and ternarized, several seeds) is one GPU program instead of
processes time-slicing a card. Models with the same seed see the same batches and the same
augmentation, so their differences are the variants' alone.

Data parallelism is JAX's SPMD: the batch axis is sharded over a 1-D device mesh (all local
devices, all hosts after ``jax.distributed.initialize()``), parameters are replicated, and
XLA inserts the gradient all-reduce; BatchNorm statistics are over the global batch, so the
losses equal a one-device run's within float tolerance.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tern_jax.rules import path_to_str, quantize_params
from tern_jax.train import metrics as metrics_lib
from tern_jax.train.config import Config, variant_rules

__all__ = ["TrainState", "TrainingDiverged", "Trainer", "train_and_evaluate"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; raised with the epoch, step and model."""


@struct.dataclass
class TrainState:
    """Stacked over the model axis: every leaf has a leading dimension of ``num_models``."""

    params: Any
    batch_stats: Any
    opt_state: Any


def make_schedule(config: Config, steps_per_epoch: int):
    """The learning-rate schedule in optimizer steps (milestones are in epochs)."""
    lr = config.learning_rate
    total = config.epochs * steps_per_epoch
    if config.schedule == "multistep":
        boundaries = {}
        for epoch, factor in config.milestones:
            step = int(epoch * steps_per_epoch)
            boundaries[step] = boundaries.get(step, 1.0) * factor
        schedule = optax.piecewise_constant_schedule(lr, boundaries)
    elif config.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, max(total - config.warmup_epochs
                                                       * steps_per_epoch, 1))
    else:
        schedule = optax.constant_schedule(lr)
    if config.warmup_epochs:
        warm = config.warmup_epochs * steps_per_epoch
        schedule = optax.join_schedules(
            [optax.linear_schedule(lr / warm, lr, warm), schedule], [warm]
        )
    return schedule


def make_optimizer(config: Config, schedule) -> optax.GradientTransformation:
    """SGD with Nesterov momentum or Adam, with L2 weight decay added to the gradient."""
    decay = optax.add_decayed_weights(config.weight_decay)
    if config.optimizer == "sgd":
        return optax.chain(decay, optax.sgd(schedule, config.momentum, config.nesterov))
    return optax.chain(decay, optax.adam(schedule))


def _kernel_zero_fraction(tree) -> jax.Array:
    zeros, total = jnp.float32(0), 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if path_to_str(path).endswith("kernel") and leaf.ndim >= 2:
            zeros = zeros + jnp.sum(leaf == 0)
            total += leaf.size
    return zeros / max(total, 1)


@dataclasses.dataclass
class Data:
    """A dataset ready for training: arrays on device (or a host stream for ImageNet)."""

    train_images: Any
    train_labels: Any
    test_images: Any
    test_labels: Any
    num_classes: int
    mean: tuple
    std: tuple
    image_shape: tuple
    num_train: int = 0
    # host streams (ImageNet, or config.stream): epoch -> iterator of (images, labels)
    train_stream: Any = None
    test_stream: Any = None

    @property
    def streamed(self) -> bool:
        return self.train_stream is not None


def _array_stream(images, labels, batch_size, *, shuffle_seed=None, drop_remainder=True):
    """Host batches from arrays (the streaming path, used for tests and small data)."""
    order = np.arange(len(labels))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(labels))
    stop = len(labels) // batch_size * batch_size if drop_remainder else len(labels)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx].astype(np.int32)


def load_data(config: Config) -> Data:
    """Loads ``config.dataset``: CIFAR-10/digits in memory, ImageNet as host streams."""
    if config.dataset.lower().startswith("imagenet"):
        from tern_jax.data import imagenet

        size = 224

        def train_stream(epoch):
            return imagenet.imagenet_batches(
                "train", config.batch_size, data_dir=config.data_dir, train=True,
                seed=1000 * epoch + config.seeds[0], num_epochs=1, dtype=np.uint8)

        def test_stream():
            return imagenet.imagenet_batches(
                "validation", config.eval_batch_size, data_dir=config.data_dir, train=False,
                num_epochs=1, dtype=np.uint8)

        num_train = config.train_subset or imagenet.IMAGENET_TRAIN_SIZE
        return Data(None, None, None, None, imagenet.IMAGENET_NUM_CLASSES,
                    tuple(imagenet.IMAGENET_MEAN), tuple(imagenet.IMAGENET_STD),
                    (size, size, 3), num_train, train_stream, test_stream)

    from tern_jax.data import load_dataset, subset

    ds = load_dataset(config.dataset, config.data_dir)
    if config.train_subset or config.test_subset:
        ds = subset(ds, config.train_subset, config.test_subset, seed=0)
    data = Data(ds.train_images, ds.train_labels, ds.test_images, ds.test_labels,
                ds.num_classes, tuple(ds.mean), tuple(ds.std), tuple(ds.train_images.shape[1:]),
                len(ds.train_labels))
    if config.stream:
        data.train_stream = lambda epoch: _array_stream(
            ds.train_images, ds.train_labels, config.batch_size, shuffle_seed=epoch)
        data.test_stream = lambda: _array_stream(
            ds.test_images, ds.test_labels, config.eval_batch_size, drop_remainder=False)
    return data


class Trainer:
    """Builds the model stack, the jitted steps and runs epochs; see :func:`train_and_evaluate`."""

    def __init__(self, config: Config, data: Data, *, devices=None):
        from tern_jax.models import get_model

        self.config = config
        self.data = data
        self.num_models = len(config.variants) * len(config.seeds)
        self.names = config.model_names
        self.variant_index = np.array(
            [i for i in range(len(config.variants)) for _ in config.seeds], np.int32)
        self.seeds = np.array([s for _ in config.variants for s in config.seeds], np.int32)
        self.rule_sets = [variant_rules(v) for v in config.variants]
        self.teacher_index = None
        if config.distill_weight:
            fp = config.variants.index("fp")
            self.teacher_index = np.array(
                [fp * len(config.seeds) + (i % len(config.seeds)) for i in range(self.num_models)],
                np.int32)
        self.model = get_model(config.model, data.num_classes,
                               dtype=jnp.dtype(config.compute_dtype))
        devices = devices if devices is not None else jax.devices()
        self.mesh = Mesh(np.array(devices), ("data",))
        if config.batch_size % len(devices):
            raise ValueError(
                f"batch_size {config.batch_size} is not divisible by the {len(devices)} devices; "
                f"use a multiple of {len(devices)}"
            )
        n_train = data.num_train
        if config.batch_size > n_train:
            raise ValueError(
                f"batch_size {config.batch_size} exceeds the {n_train} training images")
        self.steps_per_epoch = n_train // config.batch_size
        self.schedule = make_schedule(config, self.steps_per_epoch)
        self.tx = make_optimizer(config, self.schedule)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharded = NamedSharding(self.mesh, P(None, "data"))
        self._build_steps()

    # -- model pieces -------------------------------------------------------------------
    def over_models(self, fn, in_axes=0):
        """``fn`` mapped over the model axis: ``jax.vmap``, or on CPU by default an unrolled
        loop stacked afterwards (XLA:CPU runs the grouped convolutions that a vmap over
        per-model kernels becomes ~4x slower per model than separate ones; measured here)."""
        mode = self.config.model_axis
        if mode == "auto":
            mode = "unroll" if jax.default_backend() == "cpu" else "vmap"
        if mode == "vmap" or self.num_models == 1:
            return jax.vmap(fn, in_axes=in_axes)
        axes = in_axes if isinstance(in_axes, tuple) else None

        def unrolled(*args):
            outs = []
            for i in range(self.num_models):
                picked = [a if (axes is not None and axes[j] is None)
                          else jax.tree.map(lambda leaf, i=i: leaf[i], a)
                          for j, a in enumerate(args)]
                outs.append(fn(*picked))
            return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

        return unrolled

    def quantize(self, params, variant, threshold_scale=None):
        """Params as the forward pass sees them: latent (``fp``) or ternarized per variant."""
        fns = [functools.partial(_apply_rules, rules=r, threshold_scale=threshold_scale)
               for r in self.rule_sets]
        if len(fns) == 1:
            return fns[0](params)
        return jax.lax.switch(variant, fns, params)

    def init_state(self) -> TrainState:
        shape = (1,) + self.data.image_shape

        def init_one(seed):
            variables = self.model.init(jax.random.key(seed), jnp.zeros(shape), train=False)
            params = variables["params"]
            return TrainState(params, variables.get("batch_stats", {}), self.tx.init(params))

        state = jax.jit(jax.vmap(init_one))(jnp.asarray(self.seeds))
        return jax.device_put(state, self.replicated)

    def _normalize(self, x):
        from tern_jax.data.augment import normalize

        if jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return normalize(x, self.data.mean, self.data.std)

    def _build_steps(self):
        config = self.config
        model = self.model
        variant_index = jnp.asarray(self.variant_index)
        teacher_index = None if self.teacher_index is None else jnp.asarray(self.teacher_index)
        is_student = jnp.asarray(
            [config.variants[v] != "fp" for v in self.variant_index], jnp.float32)
        num_classes = self.data.num_classes
        multi_device = self.mesh.size > 1

        warmup_steps = config.threshold_warmup * self.steps_per_epoch

        def threshold_scale(step):
            """The threshold warm-up factor at a global step; ``None`` (no warm-up) keeps the
            compiled step identical to one without the feature."""
            if warmup_steps <= 0:
                return None
            start = config.threshold_warmup_start
            ramp = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
            return start + (1.0 - start) * ramp

        def forward_train(params, batch_stats, x, variant, tscale):
            q = self.quantize(params, variant, tscale)
            logits, updates = model.apply({"params": q, "batch_stats": batch_stats}, x,
                                          train=True, mutable=["batch_stats"])
            return logits.astype(jnp.float32), updates["batch_stats"]

        def train_step(state: TrainState, x, y, step):
            """x: (M, B, ...) uint8 or float, y: (M, B) int, step: the global step (int)."""
            if multi_device:
                x = jax.lax.with_sharding_constraint(x, self.batch_sharded)
                y = jax.lax.with_sharding_constraint(y, self.batch_sharded)
            x = self._normalize(x)
            targets = optax.smooth_labels(jax.nn.one_hot(y, num_classes),
                                          config.label_smoothing)

            def loss_all(params):
                logits, new_stats = self.over_models(
                    functools.partial(forward_train, tscale=threshold_scale(step)))(
                    params, state.batch_stats, x, variant_index)
                ce = jnp.mean(optax.softmax_cross_entropy(logits, targets), axis=-1)
                loss = ce
                if teacher_index is not None:
                    t = config.distill_temperature
                    teacher = jax.lax.stop_gradient(logits[teacher_index]) / t
                    kl = jnp.mean(jnp.sum(jax.nn.softmax(teacher) * (
                        jax.nn.log_softmax(teacher) - jax.nn.log_softmax(logits / t)), -1), -1)
                    loss = ce + config.distill_weight * (t * t) * kl * is_student
                return jnp.sum(loss), (ce, logits, new_stats)

            grads, (ce, logits, new_stats) = jax.grad(loss_all, has_aux=True)(state.params)
            updates, opt_state = jax.vmap(self.tx.update)(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            accuracy = jnp.mean(jnp.argmax(logits, -1) == y, axis=-1)
            return TrainState(params, new_stats, opt_state), (ce, accuracy)

        def augment(keys, images):
            from tern_jax.data.augment import random_crop_flip

            if not config.augment:
                return images
            return jax.vmap(random_crop_flip)(keys, images)

        def step_at(state, images, labels, step_idx, step_keys, step):
            """One step on the batches ``images[step_idx]`` (M, B) with per-model keys (M,)."""
            x = augment(step_keys, images[step_idx])
            return train_step(state, x, labels[step_idx], step)

        def run_chunk(state, images, labels, idx, keys, steps):
            """Scans ``idx.shape[0]`` steps; idx (K, M, B), keys (K, M), steps (K,)."""
            def body(state, inputs):
                return step_at(state, images, labels, *inputs)

            return jax.lax.scan(body, state, (idx, keys, steps))

        self._run_chunk = jax.jit(run_chunk, donate_argnums=0)
        self._step_at = jax.jit(step_at, donate_argnums=0)
        self._train_step = jax.jit(train_step, donate_argnums=0)

        def epoch_plan(epoch):
            """Batch indices (steps, M, B) and augmentation keys (steps, M) per model seed."""
            from tern_jax.data.augment import epoch_permutation

            n = self.data.num_train

            def per_model(seed):
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), 7)
                k_perm, k_aug = jax.random.split(key)
                idx = epoch_permutation(k_perm, n, config.batch_size)
                return idx, jax.random.split(k_aug, idx.shape[0])

            idx, keys = jax.vmap(per_model)(jnp.asarray(self.seeds))
            return jnp.swapaxes(idx, 0, 1), jnp.swapaxes(keys, 0, 1)

        self._epoch_plan = jax.jit(epoch_plan)

        def evaluate_batch(state, x, y, m):
            """One test batch: summed loss and correct count per model."""
            def forward_eval(params, batch_stats, x, variant):
                q = self.quantize(params, variant)
                return model.apply({"params": q, "batch_stats": batch_stats}, x,
                                   train=False).astype(jnp.float32)

            logits = self.over_models(forward_eval, in_axes=(0, 0, None, 0))(
                state.params, state.batch_stats, self._normalize(x), variant_index)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[None])
            return (jnp.sum(ce * m, axis=-1),
                    jnp.sum((jnp.argmax(logits, -1) == y[None]) * m, axis=-1))

        self._evaluate_batch = jax.jit(evaluate_batch)
        self._zero_fraction = jax.jit(jax.vmap(
            lambda p, v: _kernel_zero_fraction(self.quantize(p, v))))
        self._variant_index = variant_index

    # -- data on device -----------------------------------------------------------------
    def put_data(self):
        """Moves the training and test sets to device memory (once; not for streams)."""
        d = self.data
        if d.streamed:
            return
        self.train_images = jax.device_put(np.asarray(d.train_images), self.replicated)
        self.train_labels = jax.device_put(np.asarray(d.train_labels, np.int32), self.replicated)
        e = self.config.eval_batch_size
        n = len(d.test_labels)
        e = min(e, n)
        nb = math.ceil(n / e)
        pad = nb * e - n
        images = np.concatenate([d.test_images, np.zeros((pad,) + d.test_images.shape[1:],
                                                         d.test_images.dtype)])
        labels = np.concatenate([d.test_labels, np.zeros(pad, d.test_labels.dtype)])
        mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
        self.test_batches = jax.device_put(
            (images.reshape((nb, e) + images.shape[1:]), labels.reshape(nb, e).astype(np.int32),
             mask.reshape(nb, e)), self.replicated)
        self.num_test = n

    def _test_batches(self):
        if self.data.streamed:
            for images, labels in self.data.test_stream():
                n = len(labels)
                e = self.config.eval_batch_size
                if n < e:  # pad the last batch to the compiled shape
                    images = np.concatenate([images, np.zeros((e - n,) + images.shape[1:],
                                                              images.dtype)])
                    labels = np.concatenate([labels, np.zeros(e - n, labels.dtype)])
                mask = (np.arange(e) < n).astype(np.float32)
                yield images, labels, mask
        else:
            images, labels, mask = self.test_batches
            for b in range(images.shape[0]):
                yield images[b], labels[b], mask[b]

    def evaluate(self, state) -> dict:
        """Test loss, accuracy and fraction of zero kernel weights per model."""
        loss = correct = 0.0
        count = 0.0
        # a Python loop over batches: XLA:CPU runs convolutions slowly inside loops
        for x, y, m in self._test_batches():
            batch_loss, batch_correct = self._evaluate_batch(state, x, y, m)
            loss, correct, count = loss + batch_loss, correct + batch_correct, count + m.sum()
        zero_fraction = self._zero_fraction(state.params, self._variant_index)
        count = float(count)
        return {
            "test_loss": np.asarray(loss) / count,
            "test_acc": np.asarray(correct) / count,
            "zero_fraction": np.asarray(zero_fraction),
        }

    def chunks(self):
        """Step ranges run per compiled call: ``scan_steps``, or by default the whole epoch as
        one ``lax.scan`` on GPU/TPU and single steps on CPU, where XLA runs convolutions inside
        loops about 15x slower than outside them (measured here with jax 0.10)."""
        k = self.config.scan_steps
        if not k:
            k = 1 if jax.default_backend() == "cpu" else self.steps_per_epoch
        return [(s, min(s + k, self.steps_per_epoch)) for s in range(0, self.steps_per_epoch, k)]

    def _check_finite(self, loss, epoch, first_step):
        if not np.all(np.isfinite(loss)):
            step, model = map(int, np.argwhere(~np.isfinite(loss))[0])
            raise TrainingDiverged(
                f"loss became {loss[step, model]} at epoch {epoch + 1}, step "
                f"{first_step + step + 1} of {self.steps_per_epoch} for model "
                f"{self.names[model]}; lower the learning rate or check the data. "
                "The last checkpoint is left untouched."
            )

    def _progress(self, progress, steps, loss):
        if progress is not None:
            progress.update(steps)
            progress.set_postfix_str(
                " ".join(f"{v}:{np.mean(loss[-1][self.variant_index == i]):.3f}"
                         for i, v in enumerate(self.config.variants)), refresh=False)

    def train_epoch_stream(self, state, epoch: int, progress=None):
        """One epoch from host batches; every model sees the same batch."""
        from tern_jax.data.imagenet import prefetch_to_device

        losses, accs = [], []
        batches = prefetch_to_device(self.data.train_stream(epoch), size=2)
        for step, (x, y) in enumerate(batches):
            if step >= self.steps_per_epoch:
                break
            x = jnp.broadcast_to(x, (self.num_models,) + x.shape)
            y = jnp.broadcast_to(y, (self.num_models,) + y.shape)
            global_step = jnp.int32(epoch * self.steps_per_epoch + step)
            state, (loss, acc) = self._train_step(state, x, y, global_step)
            loss = np.asarray(loss)[None]
            self._check_finite(loss, epoch, step)
            losses.append(loss)
            accs.append(np.asarray(acc)[None])
            self._progress(progress, 1, loss)
        if not losses:
            raise ValueError("the training stream yielded no batch; check the data")
        return state, np.concatenate(losses).mean(0), np.concatenate(accs).mean(0)

    def train_epoch(self, state, epoch: int, progress=None):
        """One epoch; returns (state, per-model mean train loss, accuracy)."""
        if self.data.streamed:
            return self.train_epoch_stream(state, epoch, progress)
        idx, keys = self._epoch_plan(epoch)
        first = epoch * self.steps_per_epoch
        losses, accs = [], []
        for start, stop in self.chunks():
            if stop - start == 1:
                state, (loss, acc) = self._step_at(state, self.train_images, self.train_labels,
                                                   idx[start], keys[start],
                                                   jnp.int32(first + start))
                loss, acc = np.asarray(loss)[None], np.asarray(acc)[None]
            else:
                steps = jnp.arange(first + start, first + stop, dtype=jnp.int32)
                state, (loss, acc) = self._run_chunk(state, self.train_images, self.train_labels,
                                                     idx[start:stop], keys[start:stop], steps)
            loss = np.asarray(loss)
            self._check_finite(loss, epoch, start)
            losses.append(loss)
            accs.append(np.asarray(acc))
            self._progress(progress, stop - start, loss)
        return state, np.concatenate(losses).mean(0), np.concatenate(accs).mean(0)


def _apply_rules(params, rules, threshold_scale=None):
    if rules is None:
        return params
    return quantize_params(params, rules, unused="ignore", threshold_scale=threshold_scale)


# -- checkpoints ------------------------------------------------------------------------
def _manager(workdir: Path, config: Config):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(workdir / "checkpoints", options=options)


def _save(manager, epoch: int, state: TrainState):
    import orbax.checkpoint as ocp

    manager.save(epoch, args=ocp.args.StandardSave(_as_dict(state)))
    manager.wait_until_finished()


def _as_dict(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state}


def _restore(manager, epoch: int, template: TrainState) -> TrainState:
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _as_dict(template))
    restored = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    return TrainState(restored["params"], restored["batch_stats"], restored["opt_state"])


def latest_checkpoint(workdir) -> int | None:
    """The newest completed checkpoint's epoch in ``workdir`` (``None`` if there is none)."""
    directory = Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        return None
    epochs = [int(p.name) for p in directory.iterdir() if p.name.isdigit()
              and (p / "_CHECKPOINT_METADATA").exists()]
    return max(epochs) if epochs else None


def restore_run(workdir, epoch: int | None = None):
    """``(config, trainer, state)`` of a finished or interrupted run, for eval and export.

    A two-stage run (``finetune_epochs > 0``) resolves to its ``finetune/`` stage, which holds
    the ternary models; pass ``WORKDIR/pretrain`` for its full-precision models.
    """
    workdir = Path(workdir).absolute()
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{workdir} holds no run (no config.json); pass a train workdir")
    from tern_jax.train.config import from_json

    config = from_json(config_file.read_text())
    if config.finetune_epochs:
        return restore_run(workdir / STAGES[1], epoch)
    epoch = latest_checkpoint(workdir) if epoch is None else epoch
    if epoch is None:
        raise FileNotFoundError(f"{workdir} has no completed checkpoint yet")
    data = load_data(config)
    trainer = Trainer(config, data)
    manager = _manager(workdir, config)
    state = _restore(manager, epoch, trainer.init_state())
    return config, trainer, state


def _init_from(trainer: Trainer, state: TrainState, run_dir: str) -> TrainState:
    """Copies params and BN statistics of another run's models into every model (fine-tune)."""
    source_config, _, source = restore_run(run_dir)
    config = trainer.config
    if source_config.model != config.model:
        raise ValueError(f"init_from run trained {source_config.model}, this run {config.model}")
    names = source_config.model_names
    picks = []
    for seed in trainer.seeds:
        wanted = f"{config.init_variant}/seed{seed}"
        fallback = f"{config.init_variant}/seed{source_config.seeds[0]}"
        if wanted in names:
            picks.append(names.index(wanted))
        elif fallback in names:
            picks.append(names.index(fallback))
        else:
            raise ValueError(f"init_from run has no model of variant {config.init_variant!r}; "
                             f"it has {names}")
    picks = np.array(picks)
    params = jax.tree.map(lambda a: a[picks], source.params)
    stats = jax.tree.map(lambda a: a[picks], source.batch_stats)
    opt_state = jax.jit(jax.vmap(trainer.tx.init))(params)
    return jax.device_put(TrainState(params, stats, opt_state), trainer.replicated)


def _init_pretrained(trainer: Trainer, state: TrainState, path: str) -> TrainState:
    """Every model starts from a torchvision ResNet checkpoint (converted, fc kept if it fits)."""
    from tern_jax.models.convert import load_torchvision_checkpoint

    variables = load_torchvision_checkpoint(path, trainer.config.model)
    stack = lambda tree: jax.tree.map(  # noqa: E731
        lambda a: jnp.broadcast_to(jnp.asarray(a), (trainer.num_models,) + a.shape), tree)
    params, stats = stack(variables["params"]), stack(variables["batch_stats"])
    shapes = jax.tree.map(jnp.shape, state.params)
    if jax.tree.map(jnp.shape, params) != shapes:
        raise ValueError(f"{path} does not fit {trainer.config.model} with "
                         f"{trainer.data.num_classes} classes")
    opt_state = jax.jit(jax.vmap(trainer.tx.init))(params)
    return jax.device_put(TrainState(params, stats, opt_state), trainer.replicated)


# -- the run ----------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` beside ``path`` and renames it into place: never a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


#: Sub-folders of a two-stage run: the full-precision start, then the ternary fine-tuning.
STAGES = ("pretrain", "finetune")


def stage_configs(config: Config, workdir) -> tuple[Config, Config]:
    """The two runs of a two-stage config (``finetune_epochs > 0``).

    Stage 1 trains the ``fp`` variant for ``epochs`` epochs with the config's schedule. Stage 2
    starts every other variant from the stage-1 model of its seed and trains
    ``finetune_epochs`` epochs at ``finetune_learning_rate`` with ``finetune_schedule``; with
    ``distill_weight > 0`` the fp model continues alongside as the teacher.
    """
    workdir = Path(workdir).absolute()
    ternary = tuple(v for v in config.variants if v != "fp")
    pretrain = dataclasses.replace(
        config, name=f"{config.name}/{STAGES[0]}", variants=("fp",), finetune_epochs=0,
        distill_weight=0.0, threshold_warmup=0.0)
    finetune = dataclasses.replace(
        config, name=f"{config.name}/{STAGES[1]}",
        variants=(("fp",) + ternary) if config.distill_weight else ternary,
        epochs=config.finetune_epochs, learning_rate=config.finetune_learning_rate,
        schedule=config.finetune_schedule, warmup_epochs=0, finetune_epochs=0,
        init_from=str(workdir / STAGES[0]), init_variant="fp")
    return pretrain, finetune


def _train_two_stage(config: Config, workdir: Path, *, resume, devices, log) -> dict:
    """Runs both stages in sub-folders of ``workdir``; a finished stage is not rerun on resume.

    ``workdir/results.json`` merges them: ``fp`` from stage 1 (the parent of the ternary
    models), every other variant from stage 2.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.json"
    if config_file.exists() and not resume:
        raise FileExistsError(
            f"{workdir} already holds a run; pass --resume to continue it or choose another "
            "--workdir")
    if config_file.exists():
        from tern_jax.train.config import from_json

        saved = from_json(config_file.read_text())
        started = latest_checkpoint(workdir / STAGES[1])
        if saved.epochs != config.epochs and started is not None:
            raise ValueError(
                f"{workdir}/{STAGES[1]} already fine-tuned {started} epoch(s) from the "
                f"{saved.epochs}-epoch full-precision models; resume with epochs="
                f"{saved.epochs} (finetune_epochs may grow) or start a new --workdir")
    _write_atomic(config_file, config.to_json())
    pretrain, finetune = stage_configs(config, workdir)
    log(f"{config.name}: two stages, {config.epochs} epochs full precision, then "
        f"{config.finetune_epochs} epochs fine-tuning {', '.join(finetune.variants)} from it")
    first = train_and_evaluate(pretrain, workdir / STAGES[0], resume=resume, devices=devices,
                               log=log)
    second = train_and_evaluate(finetune, workdir / STAGES[1], resume=resume, devices=devices,
                                log=log)
    variants = {"fp": first["variants"]["fp"]} if "fp" in config.variants else {}
    variants.update({v: r for v, r in second["variants"].items() if v != "fp"})
    results = {"name": config.name, "model": config.model, "dataset": config.dataset,
               "epochs": first["epochs"] + second["epochs"],
               "stages": {STAGES[0]: first["epochs"], STAGES[1]: second["epochs"]},
               "seeds": list(config.seeds),
               "train_seconds": first["train_seconds"] + second["train_seconds"],
               "variants": variants}
    _write_atomic(workdir / "results.json", json.dumps(results, indent=2))
    log(metrics_lib.results_table(results))
    return results


def train_and_evaluate(config: Config, workdir, *, resume: bool = False, devices=None,
                       log=print) -> dict:
    """Trains every model of ``config`` and evaluates each epoch; returns the final results.

    ``workdir`` receives ``config.json``, ``metrics.jsonl`` (one line per epoch),
    ``checkpoints/`` (orbax; every ``checkpoint_every`` epochs and at the end) and
    ``results.json``. With ``resume=True`` a killed run continues from its last checkpoint and
    reproduces the uninterrupted run's metrics (same seeds, same batches).
    """
    workdir = Path(workdir).absolute()  # orbax requires absolute paths
    if config.finetune_epochs:
        return _train_two_stage(config, workdir, resume=resume, devices=devices, log=log)
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.json"
    start_epoch = 0
    previous = latest_checkpoint(workdir)
    if previous is not None and not resume:
        raise FileExistsError(
            f"{workdir} already holds a run (checkpoint of epoch {previous}); pass --resume to "
            "continue it or choose another --workdir"
        )
    if resume and config_file.exists():
        from tern_jax.train.config import from_json

        saved = from_json(config_file.read_text())
        differ = [f.name for f in dataclasses.fields(Config)
                  if f.name not in ("epochs", "progress")
                  and getattr(saved, f.name) != getattr(config, f.name)]
        if differ:
            raise ValueError(f"--resume with a config that differs from the run's in {differ}; "
                             "resume with the same config")
    data = load_data(config)
    trainer = Trainer(config, data, devices=devices)
    trainer.put_data()
    manager = _manager(workdir, config)
    state = trainer.init_state()
    if config.init_from and previous is None:
        state = _init_from(trainer, state, config.init_from)
    if config.pretrained and previous is None:
        state = _init_pretrained(trainer, state, config.pretrained)
    if resume and previous is not None:
        state = _restore(manager, previous, state)
        start_epoch = previous
        log(f"resumed from the checkpoint of epoch {previous} in {workdir}")
    _write_atomic(config_file, config.to_json())
    metrics_file = workdir / "metrics.jsonl"
    metrics_lib.truncate(metrics_file, start_epoch)

    log(f"{config.name}: {trainer.num_models} model(s) {config.model} "
        f"[{', '.join(trainer.names)}] on {data.num_train} images, "
        f"{trainer.steps_per_epoch} steps/epoch, {config.epochs} epochs, "
        f"{trainer.mesh.size} device(s) ({jax.devices()[0].device_kind})")
    progress = None
    if config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.epochs * trainer.steps_per_epoch,
                        initial=start_epoch * trainer.steps_per_epoch, unit="step",
                        file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    record = None
    try:
        for epoch in range(start_epoch, config.epochs):
            start = time.perf_counter()
            state, train_loss, train_acc = trainer.train_epoch(state, epoch, progress)
            last = epoch + 1 == config.epochs
            if last or (epoch + 1) % max(config.eval_every, 1) == 0:
                evaluation = trainer.evaluate(state)
            else:
                nan = np.full(trainer.num_models, np.nan)
                evaluation = {"test_loss": nan, "test_acc": nan, "zero_fraction": nan}
            seconds = time.perf_counter() - start
            record = metrics_lib.epoch_record(
                epoch + 1, float(trainer.schedule((epoch + 1) * trainer.steps_per_epoch - 1)),
                seconds, trainer.names, train_loss, train_acc, evaluation)
            metrics_lib.append(metrics_file, record)
            if progress is not None:
                progress.write(metrics_lib.epoch_line(record))
            if last or (config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0):
                _save(manager, epoch + 1, state)
    finally:
        if progress is not None:
            progress.close()
        manager.close()
    results = metrics_lib.final_results(metrics_file, config)
    _write_atomic(workdir / "results.json", json.dumps(results, indent=2))
    log(metrics_lib.results_table(results))
    return results
