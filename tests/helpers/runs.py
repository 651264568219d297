"""Small training runs the tests start in subprocesses (fake devices, or to be killed).

Each function is importable; a test runs one in a fresh interpreter with
``python -c "from helpers.runs import f; f(...)"`` (see :func:`command`).
"""

from __future__ import annotations

import dataclasses
import sys


def command(call: str) -> list[str]:
    """The argv that runs ``call`` (Python source) with ``tests/`` on the path."""
    from pathlib import Path

    tests = Path(__file__).resolve().parent.parent
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tests)!r}); "
            f"from helpers.runs import *; {call}"]


def small_config(**changes):
    from tern_jax.train import quickstart_config

    base = dataclasses.replace(quickstart_config(), train_subset=256, test_subset=64,
                               batch_size=32, progress=False, seeds=(0,))
    return dataclasses.replace(base, **changes)


def short_run(*, train_subset=256, test_subset=96, epochs=2, **changes):
    """The quickstart's digits run cut short: ``train_subset``/``test_subset`` examples,
    ``epochs`` epochs of batches of 32, a checkpoint every epoch, no progress bar; ``changes``
    replace any other field."""
    from tern_jax.train import quickstart_config

    fields = {"train_subset": train_subset, "test_subset": test_subset, "epochs": epochs,
              "batch_size": 32, "progress": False, "checkpoint_every": 1}
    return dataclasses.replace(quickstart_config(), **(fields | changes))


def copy_run(folder, tmp_path):
    """A copy of the run folder ``folder`` in ``tmp_path`` (same name), to damage or extend
    without touching a run other tests share."""
    import shutil
    from pathlib import Path

    target = Path(tmp_path) / Path(folder).name
    shutil.copytree(folder, target)
    return target


def data_parallel_losses(devices, steps: int = 4):
    """Per-step losses (steps, models) and test accuracy of a run sharded over ``devices``."""
    import numpy as np

    from tern_jax.train import Trainer

    trainer = Trainer(small_config(), devices=devices)
    state = trainer.init_state()
    idx, keys = trainer.inputs.epoch_plan(0)
    out = []
    for s in range(steps):
        state, metrics = trainer.step_at(state, trainer.inputs.arrays, idx[s], keys[s],
                                         np.int32(s))
        out.append(np.asarray(metrics["loss"]))
    return np.stack(out), trainer.evaluate(state)["test_acc"]


def compare_data_parallel() -> None:
    """Prints the losses of one device and of all (8 fake) devices as JSON."""
    import json

    import jax

    single, acc1 = data_parallel_losses(jax.devices()[:1])
    sharded, acc8 = data_parallel_losses(jax.devices())
    print(json.dumps({"devices": len(jax.devices()), "single": single.tolist(),
                      "sharded": sharded.tolist(), "acc1": acc1.tolist(),
                      "acc8": acc8.tolist()}))


def killable_run(workdir: str, resume: bool = False) -> None:
    """A 5-epoch run checkpointing every epoch, for the kill-and-resume test."""
    from tern_jax.train import quickstart_config, train_and_evaluate

    config = dataclasses.replace(quickstart_config(), train_subset=512, test_subset=128,
                                 epochs=5, checkpoint_every=1, progress=False)
    train_and_evaluate(config, workdir, resume=resume, log=lambda *_: None)
