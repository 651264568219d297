"""``train_and_evaluate(config, workdir)``: the training loop of one run, and nothing else.

It builds the inputs and the model stack, restores or initializes the state, runs the jitted
steps of :mod:`tern_jax.train.step` epoch by epoch, evaluates, logs metrics and saves
checkpoints into the run folder. Recipes with several stages are composed on top of it
(:mod:`tern_jax.train.stages`); this loop knows nothing of them.

Parallelism is JAX's SPMD over a ``data`` x ``fsdp`` x ``tensor`` mesh (``config.sharding``,
:mod:`tern_jax.sharding`): the batch is split over ``data`` x ``fsdp``; the parameters,
BatchNorm statistics and optimizer states lie where the sharding rules put them (by default
everything is replicated over a ``data`` axis of every device: plain data parallelism), the
jitted steps keep them there, and XLA inserts the collectives (the gradient all-reduce,
FSDP's gathers). BatchNorm statistics are over the global batch, so losses equal a one-device
run's within float tolerance.

A run is resumed only as itself: :func:`check_same_run` refuses a config that would change
the epochs already run. SIGTERM (a scheduler's preemption notice) stops every process at the
end of the epoch in progress, after saving its checkpoint (:class:`Preempted`); resuming
then continues to the uninterrupted run's metrics.

This file is slightly longer than the project's ~350-line guide: the rule of what a resume
may change sits with the loop whose run it protects.
"""

from __future__ import annotations

import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tern_jax import sharding as sharding_lib
from tern_jax.data.inputs import constrain_batch
from tern_jax.train import distributed, lock, warm_start
from tern_jax.train import metrics as metrics_lib
from tern_jax.train import step as step_lib
from tern_jax.train.config import Config, differences
from tern_jax.train.families import Resolved, resolve
from tern_jax.train.run_folder import RunFolder
from tern_jax.train.stack import ModelStack, TrainState
from tern_jax.train.task import Inputs

__all__ = ["SAFE_TO_CHANGE", "Preempted", "TrainingDiverged", "Trainer", "check_same_run",
           "train_and_evaluate"]

#: Fields a resumed run may change: they leave the epochs already run and their records as
#: they were (the progress bar; how often to save and how many to keep; the evaluation
#: batch, which only pads the test set differently; the path of the same data; the mesh and
#: the sharding rules, which move the same arrays to other devices: a checkpoint is restored
#: onto the new mesh; what FSDP gathers, which leaves the results as they are).
#: ``epochs``: see :func:`check_same_run`.
SAFE_TO_CHANGE = frozenset({"progress", "checkpointing.every", "checkpointing.keep",
                            "data.eval_batch_size", "data.data_dir", "sharding.data",
                            "sharding.fsdp", "sharding.tensor", "sharding.rules",
                            "sharding.model_axis", "sharding.gather"})
#: Paths a resumed run may change when what they name stays the same: the tokenizer (its
#: hash is held against the run folder's copy, :meth:`RunFolder.check_tokenizer`).
SAME_CONTENT = frozenset({"data.tokenizer"})


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; raised with the epoch, step and model."""


class Preempted(RuntimeError):
    """SIGTERM stopped the run at an epoch's end, after saving that epoch's checkpoint.

    Every process of a job stops at the same epoch; ``resume=True`` (``--resume``) continues
    the run. The command line exits with status 143 (128 + SIGTERM).
    """


class Trainer:
    """The compiled pieces of one run: inputs, model stack, jitted steps, epoch and eval.

    Built by :func:`train_and_evaluate` from the config's resolved names (``resolved``:
    :func:`tern_jax.train.families.resolve`, done here when not given): the family builds the
    task, the dataset its inputs (or ``inputs`` given). Tests and notebooks may build one to
    drive epochs themselves. Every jitted function here is a :mod:`tern_jax.train.step`
    function; none looks anything up by name.
    """

    def __init__(self, config: Config, inputs: Inputs | None = None, *,
                 devices=None, resolved: Resolved | None = None):
        devices = devices if devices is not None else jax.devices()
        self.mesh = sharding_lib.make_mesh(config.sharding, devices)
        batch_size = config.data.batch_size
        axes = sharding_lib.batch_axes(self.mesh, config.sharding.model_axis)
        shards = math.prod(self.mesh.shape[a] for a in axes)
        if batch_size % shards:
            over = ("" if shards == len(devices)
                    else f" the batch is split over ({' x '.join(axes)})")
            raise ValueError(f"data.batch_size {batch_size} is not divisible by the {shards} "
                             f"devices{over}; use a multiple of {shards}")
        self.config = config
        self.resolved = resolved if resolved is not None else resolve(config)
        task = self.resolved.task(config)
        self.inputs = inputs if inputs is not None else self.resolved.dataset.inputs(
            config, task, self.mesh)
        if batch_size > self.inputs.num_train:
            raise ValueError(f"data.batch_size {batch_size} exceeds the "
                             f"{self.inputs.num_train} training examples")
        self.steps_per_epoch = self.inputs.steps_per_epoch
        self.stack = ModelStack.from_config(config, task, self.resolved.family,
                                            self.steps_per_epoch)
        _check_outputs(task, config)
        self.schedule = self.stack.schedule
        self.replicated = NamedSharding(self.mesh, P())
        self.state_sharding = self._state_sharding()
        # sharding.gather: ternary kernels split over fsdp gathered as codes (tern_jax.gather)
        self.stack = self.stack.with_gather(self.mesh, self.state_sharding.params,
                                            config.sharding.gather)
        self.train_step = jax.jit(self._streamed_step, donate_argnums=0)
        self.step_at = jax.jit(self._step_at, donate_argnums=0)
        self.run_chunk = jax.jit(self._run_chunk, donate_argnums=0)
        self.eval_step = jax.jit(self._replicated(step_lib.eval_step))
        self.zero_fractions = jax.jit(self._replicated(step_lib.zero_fractions))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stack.slots]

    def _state_sharding(self) -> TrainState:
        """Where each leaf of the state lies: by the config's sharding rules (or the model
        family's), the model axis unsplit or over ``sharding.model_axis``."""
        sharding = self.config.sharding
        given = sharding.rules is not None
        rules = sharding.rules if given else (self.resolved.family.sharding or ())
        abstract = self.stack.abstract_state()
        specs = sharding_lib.state_specs(
            abstract.params, abstract.model_state, abstract.opt_state, rules, self.mesh,
            tx=self.stack.tx, model_axis=sharding.model_axis, stacked=True, strict=given,
            unused="warn" if given else "ignore")
        return TrainState(*(sharding_lib.named(self.mesh, s) for s in specs))

    def _constrain(self, state: TrainState) -> TrainState:
        """``state`` kept on :attr:`state_sharding` inside a jitted step (1 device: as is)."""
        if self.mesh.size == 1:
            return state
        return jax.lax.with_sharding_constraint(state, self.state_sharding)

    def _constrain_batch(self, batch):
        """A training batch ``(M, B, ...)`` with its model axis over ``sharding.model_axis``
        (the inputs split only its examples)."""
        model_axis = self.config.sharding.model_axis
        if model_axis is None or self.mesh.size == 1:
            return batch
        spec = sharding_lib.batch_spec(self.mesh, 1, model_axis)
        return jax.lax.with_sharding_constraint(batch, NamedSharding(self.mesh, spec))

    def _train_step(self, state, batch, step):
        state, metrics = step_lib.train_step(self.stack, self._constrain(state),
                                             self._constrain_batch(batch), step)
        return self._constrain(state), self._replicate(metrics)

    def _replicate(self, values):
        """Per-model results replicated, so every process reads them whole."""
        if self.mesh.size == 1:
            return values
        return jax.lax.with_sharding_constraint(values, self.replicated)

    def _replicated(self, fn):
        """``fn(stack, state, ...)`` on the state as placed, its results replicated."""
        stack = self.stack

        def run(state, *args):
            return self._replicate(fn(stack, self._constrain(state), *args))

        return run

    # -- the jitted functions (each a step.train_step on a batch from the inputs) -----------
    def _step_at(self, state, arrays, idx, keys, step):
        """One step on the device-resident batch of indices ``idx`` (M, B), keys (M,)."""
        batch = self.inputs.batch_at(arrays, idx, keys)
        return self._train_step(state, batch, step)

    def _run_chunk(self, state, arrays, idx, keys, steps):
        """``idx.shape[0]`` steps as one ``lax.scan``; idx (K, M, B), keys (K, M), steps (K,)."""
        def body(state, inputs):
            return self._step_at(state, arrays, *inputs)

        return jax.lax.scan(body, state, (idx, keys, steps))

    def _streamed_step(self, state, batch, step):
        """One step on a host batch that every model sees, broadcast over the model axis (or
        one that holds every model's rows already: inputs with ``per_model``)."""
        m = self.stack.num_models
        if not getattr(self.inputs, "per_model", False):
            batch = jax.tree.map(lambda a: jnp.broadcast_to(a, (m,) + a.shape), batch)
        batch = constrain_batch(batch, self.mesh)
        return self._train_step(state, batch, step)

    # -- state --------------------------------------------------------------------------------
    def place(self, state: TrainState) -> TrainState:
        """``state`` on the mesh as the compiled steps expect it (:attr:`state_sharding`:
        replicated, or sharded by the rules)."""
        return jax.device_put(state, self.state_sharding)

    def init_state(self) -> TrainState:
        """Fresh models, each leaf created where it lies (a sharded leaf is never whole on
        one device; the random draws do not depend on the sharding)."""
        if self.mesh.size == 1:
            return self.place(self.stack.init())
        init = jax.jit(self.stack._init, out_shardings=self.state_sharding)
        return init(jnp.asarray(self.stack.seeds))

    def abstract_state(self) -> TrainState:
        abstract = self.stack.abstract_state()
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, self.state_sharding)

    # -- epochs -------------------------------------------------------------------------------
    def chunks(self):
        """Step ranges run per compiled call: ``scan_steps``, or by default the whole epoch as
        one ``lax.scan`` on GPU/TPU and single steps on CPU, where XLA runs convolutions inside
        loops about 15x slower than outside them (measured here with jax 0.10)."""
        k = self.config.scan_steps
        if not k:
            k = 1 if jax.default_backend() == "cpu" else self.steps_per_epoch
        return [(s, min(s + k, self.steps_per_epoch)) for s in range(0, self.steps_per_epoch, k)]

    def _check_finite(self, loss, epoch, first_step, state):
        if not np.all(np.isfinite(loss)):
            step, model = map(int, np.argwhere(~np.isfinite(loss))[0])
            raise TrainingDiverged(
                f"loss became {loss[step, model]} at epoch {epoch + 1}, step "
                f"{first_step + step + 1} of {self.steps_per_epoch} for model "
                f"{self.stack.slots[model]}; {_bad_parameters(state.params, model)}; lower the "
                "learning rate or check the data. The last checkpoint is left untouched.")

    def _progress(self, progress, steps, loss):
        if progress is not None:
            progress.update(steps)
            index = self.stack.variant_index
            progress.set_postfix_str(
                " ".join(f"{v}:{np.mean(loss[-1][index == i]):.3f}"
                         for i, v in enumerate(self.stack.variants)), refresh=False)

    def train_epoch(self, state, epoch: int, progress=None):
        """One epoch; returns ``(state, per-model mean train loss, mean train accuracy)``."""
        first = epoch * self.steps_per_epoch
        losses, accs = [], []
        if self.inputs.streamed:
            runs = self._streamed_epoch(state, epoch)
        else:
            runs = self._device_epoch(state, epoch, first)
        for start, stop, new_state, metrics in runs:
            state = new_state
            loss = np.asarray(metrics["loss"]).reshape(stop - start, -1)
            self._check_finite(loss, epoch, start, state)
            losses.append(loss)
            accs.append(np.asarray(metrics["accuracy"]).reshape(stop - start, -1))
            self._progress(progress, stop - start, loss)
        if not losses:
            raise ValueError("the training stream yielded no batch; check the data")
        return state, np.concatenate(losses).mean(0), np.concatenate(accs).mean(0)

    def _device_epoch(self, state, epoch, first):
        idx, keys = self.inputs.epoch_plan(epoch)
        arrays = self.inputs.arrays
        for start, stop in self.chunks():
            if stop - start == 1:
                state, metrics = self.step_at(state, arrays, idx[start], keys[start],
                                              jnp.int32(first + start))
            else:
                steps = jnp.arange(first + start, first + stop, dtype=jnp.int32)
                state, metrics = self.run_chunk(state, arrays, idx[start:stop],
                                                keys[start:stop], steps)
            yield start, stop, state, metrics

    def _streamed_epoch(self, state, epoch):
        first = epoch * self.steps_per_epoch
        for step, batch in enumerate(self.inputs.train_batches(epoch)):
            if step >= self.steps_per_epoch:
                break
            state, metrics = self.train_step(state, batch, jnp.int32(first + step))
            yield step, step + 1, state, metrics

    def evaluate(self, state) -> dict:
        """Test loss, accuracy and fraction of zero ternarized weights, per model."""
        totals = None
        # a Python loop over batches: XLA:CPU runs convolutions slowly inside loops
        for batch, mask in self.inputs.test_batches():
            sums = self.eval_step(state, batch, mask)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if totals is None:
            raise ValueError("the test set yielded no batch; check the data")
        count = np.asarray(totals["count"])
        out = {"test_loss": np.asarray(totals["loss"]) / count,
               "test_acc": np.asarray(totals["correct"]) / count,
               "zero_fraction": np.asarray(self.zero_fractions(state))}
        if "bytes" in totals:  # a loss in bits over the bytes the scored tokens cover
            out["test_bits_per_byte"] = np.asarray(totals["loss"]) / np.asarray(totals["bytes"])
        return out


def _check_outputs(task, config: Config) -> None:
    """The model gives the logits its task needs (one per class or token), checked on shapes
    alone before a run writes anything; a task that declares no ``example_batch`` is not."""
    if not hasattr(task, "example_batch"):
        return
    try:
        variables = jax.eval_shape(task.init, jax.random.key(0))
        outputs, _ = jax.eval_shape(
            lambda v: task.apply(v["params"], v["model_state"], task.example_batch(),
                                 train=False), variables)
    except Exception as e:  # noqa: BLE001 - the user's model: say what it failed on
        from tern_jax._imports import where_it_failed

        raise ValueError(
            f"model {config.model.name!r} cannot be initialized and run on one example of "
            f"dataset {config.data.dataset!r} ({where_it_failed(e)}); it must have parameters "
            "and return one array of logits per example") from e
    if not hasattr(outputs, "shape") or not outputs.shape:
        raise ValueError(f"model {config.model.name!r} returns {type(outputs).__name__}, not "
                         "an array of logits per example")
    if outputs.shape[-1] != task.num_outputs:
        raise ValueError(
            f"model {config.model.name!r} gives {outputs.shape[-1]} outputs per example, but "
            f"its task needs {task.num_outputs} (one per class or token of dataset "
            f"{config.data.dataset!r}); build the model with the num_classes it is given")


def _bad_parameters(params, model: int) -> str:
    """Which of model ``model``'s parameters hold NaN or inf after the step (the first in
    path order named, with its count)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    bad = [(jax.tree_util.keystr(path, simple=True, separator="/"), leaf[model])
           for path, leaf in flat if not bool(jnp.all(jnp.isfinite(leaf[model])))]
    if not bad:
        return "its parameters are still finite (the data or the forward pass gave it)"
    name, leaf = bad[0]
    count = int(jnp.sum(~jnp.isfinite(leaf)))
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return (f"parameters holding NaN/inf after that step: {name} ({count} of {leaf.size} "
            f"values){more}")


def check_same_run(saved: Config, config: Config, done: int, where, *,
                   epochs_fixed: str | None = None) -> None:
    """Refuses to resume, with ``config``, a run that trained ``done`` epochs under ``saved``
    if that would change the epochs already run; the error names each field.

    Fields in :data:`SAFE_TO_CHANGE` may change. ``epochs`` may change where the learning
    rate of every step run so far stays the same and ``done`` epochs still fit: the
    multistep schedule (milestones are in epochs) and the constant rate do not depend on it;
    cosine decays over all the epochs, so its every step would change. ``epochs_fixed``: why
    ``epochs`` may not change at all (a later stage started from this one's last model).
    A run resumed so equals one started with ``config``, so its ``config.json`` may say it.
    """
    changed = []
    for name, (old, new) in differences(saved, config).items():
        why = ""
        if name in SAFE_TO_CHANGE or (name in SAME_CONTENT and None not in (old, new)):
            continue
        if name == "schedule.epochs":
            if epochs_fixed:
                why = f": {epochs_fixed}"
            elif config.schedule.name == "cosine":
                why = ": the cosine schedule spans every epoch, so each step so far would change"
            elif new < done:
                why = f": the run already trained {done}"
            else:
                continue
        changed.append(f"{name} ({old!r} -> {new!r}{why})")
    if changed:
        raise ValueError(
            f"--resume of {where} with a config that changes the run so far: "
            f"{'; '.join(changed)}. Resume with the run's values (its config.json), or start a "
            "new run in another --workdir (--set stages.init_from=RUN starts it from a run's "
            "models)")


def _check_resumable(folder: RunFolder, config: Config, resume: bool) -> int | None:
    """The epoch to resume from (``None``: a fresh run); refuses what would lose work."""
    previous = folder.latest_checkpoint()
    if previous is not None and not resume:
        raise FileExistsError(
            f"{folder.path} already holds a run (checkpoint of epoch {previous}); pass --resume "
            "to continue it or choose another --workdir")
    saved = folder.read_config() if previous is not None else None
    if saved is not None:
        check_same_run(saved, config, previous, folder.path)
    return previous


def _initial_state(trainer: Trainer, folder: RunFolder, config: Config, previous, log,
                   verify: bool):
    """``(start_epoch, state)``: restored, warm-started or fresh (``verify``: check what is
    restored against its integrity records)."""
    if previous is not None:
        manager = folder.manager(config.checkpointing.keep)
        try:
            epoch, state = folder.restore(manager, trainer.abstract_state(), verify=verify)
        finally:
            manager.close()
        if distributed.is_main():  # one process moves files; the others only read
            _set_aside_newer(folder, epoch)
        log(f"resumed from the checkpoint of epoch {epoch} in {folder.path}")
        return epoch, state
    state = trainer.init_state()
    if config.stages.init_from:
        state = warm_start.from_run(trainer.stack, config, config.stages.init_from,
                                    verify=verify)
    if config.stages.pretrained:
        state = warm_start.from_torchvision(trainer.stack, config, config.stages.pretrained,
                                            state)
    return 0, trainer.place(state)


def _set_aside_newer(folder: RunFolder, epoch: int) -> None:
    """Moves damaged checkpoints newer than the restored one out of orbax's way (kept)."""
    for newer in [e for e in folder.checkpoints() if e > epoch]:
        source = folder.checkpoint_dir / str(newer)
        target = folder.checkpoint_dir / f"damaged_{newer}_{int(time.time())}"
        os.replace(source, target)


def _saves(config: Config, epoch: int) -> bool:
    """Whether the end of ``epoch`` (0-based) saves a checkpoint."""
    every = config.checkpointing.every
    return epoch + 1 == config.schedule.epochs or bool(every and (epoch + 1) % every == 0)


def _train_epoch(trainer: Trainer, folder: RunFolder, manager, state, epoch: int, progress,
                 main: bool):
    """One epoch: train, evaluate when due, append its record, save when due; the state."""
    config = trainer.config
    start = time.perf_counter()
    state, train_loss, train_acc = trainer.train_epoch(state, epoch, progress)
    if epoch + 1 == config.schedule.epochs or (epoch + 1) % config.checkpointing.eval_every == 0:
        evaluation = trainer.evaluate(state)
    else:
        nan = np.full(trainer.stack.num_models, np.nan)
        evaluation = {"test_loss": nan, "test_acc": nan, "zero_fraction": nan}
    seconds = time.perf_counter() - start
    record = metrics_lib.epoch_record(
        epoch + 1, float(trainer.schedule((epoch + 1) * trainer.steps_per_epoch - 1)),
        seconds, trainer.stack.slots, train_loss, train_acc, evaluation,
        trainer.resolved.family.loss_name_of(config))
    if main:
        metrics_lib.append(folder.metrics_file, record)
    if progress is not None:
        progress.write(metrics_lib.epoch_line(record))
    if _saves(config, epoch):
        folder.save(manager, epoch + 1, state)
    return state


def train_and_evaluate(config: Config, workdir, *, resume: bool = False, devices=None,
                       log=print, resolved: Resolved | None = None, verify: bool = True) -> dict:
    """Trains every model of ``config`` and evaluates each epoch; returns the final results.

    ``workdir`` receives ``config.json``, ``metrics.jsonl`` (one line per epoch),
    ``checkpoints/`` (orbax; every ``checkpoint_every`` epochs and at the end) and
    ``results.json``. With ``resume=True`` a killed run continues from its last intact
    checkpoint and reproduces the uninterrupted run's metrics (same seeds, same batches);
    a config that would change the epochs already run is refused (:func:`check_same_run`).
    SIGTERM stops the run at the end of the epoch in progress, after saving its checkpoint,
    with :class:`Preempted` (several processes: all at the same epoch). The run holds the
    folder's lock (:mod:`tern_jax.train.lock`): a second run on it is refused with
    :class:`~tern_jax.train.lock.RunLocked`, naming the holder. A start that fails
    (bad data, model or batch size) writes nothing. A config with several stages
    (``finetune_epochs > 0``) is run by :func:`tern_jax.train.run`, which calls this function
    once per stage.
    """
    if config.stages.finetune_epochs:
        raise ValueError(
            f"{config.name} has two stages (stages.finetune_epochs="
            f"{config.stages.finetune_epochs}); run it with tern_jax.train.run(config, "
            "workdir), which trains each stage in its own folder")
    distributed.check_same_config(config)
    folder = RunFolder(workdir)
    main = distributed.is_main()  # several processes: process 0 writes, prints and plots
    folder.check_trainable()  # a file, or a folder of others' files: refused before the lock
    with lock.held(folder.path, main=main, log=log):  # one training run per folder
        return _train(config, folder, resume, devices, distributed.main_log(log), resolved,
                      verify, main)


def _train(config: Config, folder: RunFolder, resume: bool, devices, log, resolved, verify,
           main: bool) -> dict:
    """:func:`train_and_evaluate` in the folder whose lock it holds."""
    folder.check_trainable()
    previous = _check_resumable(folder, config, resume)
    log(f"{config.name}: loading {config.data.dataset} and building the models")
    trainer = Trainer(config, devices=devices, resolved=resolved)
    if previous is not None:  # a resumed run reads the tokenizer it was trained with
        folder.check_tokenizer(config)
    distributed.barrier(f"built {folder.path}")  # a process that failed to start stops all
    start_epoch, state = _initial_state(trainer, folder, config, previous, log, verify)
    if main:
        folder.write_config(config)
        folder.write_tokenizer(config)
        metrics_lib.truncate(folder.metrics_file, start_epoch)

    what = getattr(trainer.inputs, "description", f"{trainer.inputs.num_train:,} training "
                   "examples")
    log(f"{config.name}: {trainer.stack.num_models} model(s) {config.model.name} "
        f"[{', '.join(trainer.names)}] on {what}, "
        f"{trainer.steps_per_epoch} steps/epoch, {config.schedule.epochs} epochs, "
        f"{trainer.mesh.size} device(s) ({jax.devices()[0].device_kind}); the first steps "
        "compile the program")
    progress = None
    if config.progress and main:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.schedule.epochs * trainer.steps_per_epoch,
                        initial=start_epoch * trainer.steps_per_epoch, unit="step",
                        file=sys.stderr, dynamic_ncols=True, mininterval=1.0,
                        disable=None)  # no bar (no \r) when stderr is not a terminal
    manager = folder.manager(config.checkpointing.keep)
    try:
        with distributed.stop_requested() as stop_here:
            for epoch in range(start_epoch, config.schedule.epochs):
                state = _train_epoch(trainer, folder, manager, state, epoch, progress, main)
                if stop_here():  # SIGTERM: every process stops after the same epoch
                    if not _saves(config, epoch):
                        folder.save(manager, epoch + 1, state)
                    raise Preempted(
                        f"SIGTERM stopped {folder.path} after epoch {epoch + 1} of "
                        f"{config.schedule.epochs}, its checkpoint saved; continue with "
                        "--resume")
    finally:
        if progress is not None:
            progress.close()
        manager.close()
    family = trainer.resolved.family
    if main:
        folder.write_results(metrics_lib.final_results(folder.metrics_file, config, family))
    distributed.barrier(f"results {folder.path}")  # the others read what process 0 wrote
    results = metrics_lib.final_results(folder.metrics_file, config, family)
    log(metrics_lib.results_table(results))
    return results
