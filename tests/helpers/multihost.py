"""Training jobs the multi-process tests start: N processes x D CPU devices each.

Every function runs in a fresh interpreter started by :func:`launch`, which sets the
device count (``--xla_force_host_platform_device_count``) before JAX starts.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent


def env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


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


def digits_config():
    from tern_jax.train import quickstart_config

    return dataclasses.replace(quickstart_config(), train_subset=256, test_subset=64,
                               batch_size=32, eval_batch_size=32, epochs=2, checkpoint_every=1,
                               progress=False)


def cifar_config(data_dir):
    """The CIFAR folder streamed through grain (each process reads its share)."""
    return dataclasses.replace(digits_config(), name="cifar_stream", dataset="cifar10",
                               data_dir=str(data_dir), stream=True, epochs=2, eval_batch_size=16,
                               train_subset=None, test_subset=None, checkpoint_every=0)


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


def train_job(root: str, process_id: int = 0, num_processes: int = 1,
              coordinator: str | None = None, cifar: bool = True, resume: bool = False,
              kill_after_epoch: int | None = None) -> None:
    """Trains the CIFAR stream (optional), then digits, in ``root``; one process of a job."""
    from tern_jax.train import distributed, train_and_evaluate

    root = Path(root)
    if num_processes > 1:
        distributed.initialize(coordinator, num_processes, process_id, timeout=60)
    with distributed.failures_end_the_job():
        if cifar:
            train_and_evaluate(cifar_config(root.parent / "data"), root / "cifar")
        if kill_after_epoch is not None:
            _kill_after_saving(kill_after_epoch)
        train_and_evaluate(digits_config(), root / "digits", resume=resume)


def join(coordinator: str, num_processes: int, process_id: int, timeout: float,
         batch_size: int | None = None) -> None:
    """Joins a job (and with ``batch_size`` builds a digits trainer); prints the outcome."""
    from tern_jax.train import distributed

    try:
        distributed.initialize(coordinator, num_processes, process_id, timeout=timeout)
        if batch_size is not None:
            from tern_jax.train import Trainer

            with distributed.failures_end_the_job():
                Trainer(dataclasses.replace(digits_config(), batch_size=batch_size))
    except Exception as e:  # noqa: BLE001 - the test reads the message
        print(f"error: {type(e).__name__}: {e}", flush=True)
        distributed.exit_after_failure(2)
    print("joined", flush=True)
