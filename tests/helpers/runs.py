"""Small training runs the tests start in subprocesses (fake devices, or to be killed).

Each function is importable; a test runs one in a fresh interpreter with
``python -c "from helpers.runs import f; f(...)"`` (see :func:`command`).
"""

from __future__ import annotations

import sys


def command(call: str) -> list[str]:
    """The argv that runs ``call`` (Python source) with ``tests/`` on the path."""
    from pathlib import Path

    tests = Path(__file__).resolve().parent.parent
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tests)!r}); "
            f"from helpers.runs import *; {call}"]


def small_config(changes: dict | None = None):
    """The quickstart's digits run on 256 training and 64 test digits, batches of 32, one seed,
    no progress bar; ``changes`` (dotted paths, ``{"schedule.epochs": 1}``) replace the rest."""
    from tern_jax.train import override, quickstart_config

    base = override(quickstart_config(), {"data.train_subset": 256, "data.test_subset": 64,
                                          "data.batch_size": 32, "progress": False,
                                          "seeds": (0,)})
    return override(base, changes or {})


def lm_config(text_file, changes: dict | None = None):
    """A tiny byte-level language-model run on ``text_file``: fp and tern, one seed, two epochs
    of four steps of 8 windows of 16 bytes, a checkpoint every epoch; ``changes`` (dotted
    paths) replace the rest. Tests that train it share one compiled program per session."""
    from tern_jax.train import Config, override

    config = Config(
        name="lm_test", seeds=(0,),
        model={"name": "transformer_tiny", "variants": ("fp", "tern")},
        data={"dataset": "text", "text_path": str(text_file), "steps_per_epoch": 4,
              "batch_size": 8, "seq_len": 16, "augment": False, "test_subset": 16,
              "eval_batch_size": 8},
        optimizer={"name": "adam", "learning_rate": 3e-3, "weight_decay": 0.0},
        schedule={"epochs": 2, "name": "constant"}, checkpointing={"every": 1},
        progress=False)
    return override(config, changes or {})


def copy_run(folder, tmp_path):
    """A copy of the run folder ``folder`` in ``tmp_path`` (same name), to damage or extend
    without touching a run other tests share."""
    import shutil
    from pathlib import Path

    target = Path(tmp_path) / Path(folder).name
    shutil.copytree(folder, target)
    return target


def data_parallel_losses(changes: dict, devices=None, steps: int = 4):
    """Per-step losses (steps, models) and test accuracy of the quickstart with ``changes``
    (dotted paths) sharded over ``devices`` (default: all)."""
    import numpy as np

    from tern_jax.train import Trainer, override, quickstart_config

    trainer = Trainer(override(quickstart_config(), changes), devices=devices)
    state = trainer.init_state()
    idx, keys = trainer.inputs.epoch_plan(0)
    out = []
    for s in range(steps):
        state, metrics = trainer.step_at(state, trainer.inputs.arrays, idx[s], keys[s],
                                         np.int32(s))
        out.append(np.asarray(metrics["loss"]))
    return np.stack(out), trainer.evaluate(state)["test_acc"]


def print_data_parallel(changes: dict) -> None:
    """Prints, as JSON, the device count and :func:`data_parallel_losses` over every device."""
    import json

    import jax

    losses, acc = data_parallel_losses(changes)
    print(json.dumps({"devices": len(jax.devices()), "losses": losses.tolist(),
                      "acc": acc.tolist()}))


def killed_run(workdir: str, changes: dict, kill_at_step: int) -> None:
    """The quickstart with ``changes`` (dotted paths) in ``workdir``; the process SIGKILLs
    itself once training reaches global step ``kill_at_step`` (mid-epoch: what the steps since
    the last checkpoint did is lost, as in a real kill)."""
    import os
    import signal

    from tern_jax.train import Trainer, override, quickstart_config, train_and_evaluate

    device_epoch = Trainer._device_epoch

    def dying_epoch(self, state, epoch, first):
        for start, stop, new_state, metrics in device_epoch(self, state, epoch, first):
            if first + stop >= kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            yield start, stop, new_state, metrics

    Trainer._device_epoch = dying_epoch
    train_and_evaluate(override(quickstart_config(), changes), workdir, log=lambda *_: None)
