"""Training jobs the multi-process tests start: N processes x D CPU devices each.

Every function runs in a fresh interpreter started by :func:`launch`, which sets the
device count (``--xla_force_host_platform_device_count``) before JAX starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent


def env(devices: int) -> dict:
    """The environment of a process with ``devices`` CPU devices (the tests' XLA flags kept)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS=flags.strip())


def launch(call: str, devices: int, log: Path) -> subprocess.Popen:
    """Starts ``call`` (Python source using this module) with ``devices`` CPU devices."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
            f"from helpers.multihost import *; {call}")
    out = open(log, "w")  # noqa: SIM115 - closed when the process is reaped by the OS
    return subprocess.Popen([sys.executable, "-c", code], env=env(devices), stdout=out,
                            stderr=subprocess.STDOUT)


def launch_cli(args: list[str], devices: int, log: Path) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "tern_jax", *args], env=env(devices),
                            stdout=out, stderr=subprocess.STDOUT)


def write_cifar_folder(root: Path) -> Path:
    """A tiny CIFAR-10 folder (130 train, 38 test images) with a learnable signal."""
    import numpy as np

    from helpers.cifar import write_cifar_batches

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 168)
    images = rng.integers(0, 256, (168, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = (labels[:, None, None] * 25).astype(np.uint8)
    write_cifar_batches(root / "cifar-10-batches-py", images, labels, per_batch=26)
    return root


#: :func:`digits_config`'s changes of the quickstart, by dotted path.
DIGITS = {"data.train_subset": 256, "data.test_subset": 64, "data.batch_size": 32,
          "data.eval_batch_size": 32, "schedule.epochs": 2, "checkpointing.every": 1,
          "progress": False}


def digits_config(changes: dict | None = None):
    from tern_jax.train import override, quickstart_config

    return override(quickstart_config(), {**DIGITS, **(changes or {})})


def cifar_config(data_dir):
    """The CIFAR folder streamed through grain (each process reads its share), 2 epochs, a
    checkpoint every epoch."""
    return digits_config({"name": "cifar_stream", "data.dataset": "cifar10",
                          "data.data_dir": str(data_dir), "data.stream": True,
                          "data.eval_batch_size": 16, "data.train_subset": None,
                          "data.test_subset": None})


def _kill_after_saving(epoch: int) -> None:
    """Every process kills itself (SIGKILL) once the checkpoint of ``epoch`` is written."""
    import signal

    from tern_jax.train import run_folder

    save = run_folder.RunFolder.save

    def save_then_die(self, manager, saved_epoch, state):
        save(self, manager, saved_epoch, state)
        if saved_epoch == epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    run_folder.RunFolder.save = save_then_die


def _sigterm_during(epoch: int) -> None:
    """This process sends itself SIGTERM while it trains ``epoch`` (1-based)."""
    import signal

    from tern_jax.train import Trainer

    train_epoch = Trainer.train_epoch

    def train_then_signal(self, state, index, progress=None):
        if index + 1 == epoch:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_epoch(self, state, index, progress)

    Trainer.train_epoch = train_then_signal


def cli_job(args: list[str], sigterm_during_epoch: int | None = None) -> None:
    """``tern-jax ARGS`` in this process (optionally SIGTERM during an epoch); exits with
    the command line's status."""
    from tern_jax import cli

    if sigterm_during_epoch is not None:
        _sigterm_during(sigterm_during_epoch)
    sys.exit(cli.main(args))


def digits_args(workdir, *more: str) -> list[str]:
    """``tern-jax train`` flags for :func:`digits_config` (checkpoints only at the end)."""
    flags = {**DIGITS, "checkpointing.every": 0, "progress": "false"}
    sets = [a for k, v in flags.items() for a in ("--set", f"{k}={v}")]
    return ["train", "--config", "quickstart", "--workdir", str(workdir), *sets, *more]


def train_job(root: str, process_id: int = 0, num_processes: int = 1,
              coordinator: str | None = None, runs: tuple[str, ...] = ("cifar", "digits"),
              resume: bool = False, kill_after_epoch: int | None = None) -> None:
    """One process of a job: trains ``runs`` in ``root`` in turn (``cifar``: the streamed
    CIFAR folder beside ``root``, ``digits``: device-resident digits); with
    ``kill_after_epoch`` every process kills itself once that epoch's checkpoint is saved."""
    from tern_jax.train import distributed, train_and_evaluate

    root = Path(root)
    configs = {"cifar": cifar_config(root.parent / "data"), "digits": digits_config()}
    if num_processes > 1:
        distributed.initialize(coordinator, num_processes, process_id, timeout=60)
    if kill_after_epoch is not None:
        _kill_after_saving(kill_after_epoch)
    with distributed.failures_end_the_job():
        for name in runs:
            train_and_evaluate(configs[name], root / name, resume=resume)


def join(coordinator: str, num_processes: int, process_id: int, timeout: float,
         batch_size: int | None = None) -> None:
    """Joins a job (and with ``batch_size`` builds a digits trainer); prints the outcome."""
    from tern_jax.train import distributed

    try:
        distributed.initialize(coordinator, num_processes, process_id, timeout=timeout)
        if batch_size is not None:
            from tern_jax.train import Trainer

            with distributed.failures_end_the_job():
                Trainer(digits_config({"data.batch_size": batch_size}))
    except Exception as e:  # noqa: BLE001 - the test reads the message
        print(f"error: {type(e).__name__}: {e}", flush=True)
        distributed.exit_after_failure(2)
    print("joined", flush=True)
