"""Run in a subprocess with 8 fake CPU devices: 8-way data parallel vs one device."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tern_jax.train import quickstart_config  # noqa: E402
from tern_jax.train.trainer import Trainer, load_data  # noqa: E402


def losses(devices, steps=4):
    config = dataclasses.replace(quickstart_config(), train_subset=256, test_subset=64,
                                 batch_size=32, progress=False, seeds=(0,))
    trainer = Trainer(config, load_data(config), devices=devices)
    trainer.put_data()
    state = trainer.init_state()
    idx, keys = trainer._epoch_plan(0)
    out = []
    for s in range(steps):
        state, (loss, _) = trainer._step_at(state, trainer.train_images, trainer.train_labels,
                                            idx[s], keys[s], np.int32(s))
        out.append(np.asarray(loss))
    return np.stack(out), trainer.evaluate(state)["test_acc"]


assert len(jax.devices()) == 8, jax.devices()
single, acc1 = losses(jax.devices()[:1])
sharded, acc8 = losses(jax.devices())
print("single", single.tolist())
print("sharded", sharded.tolist())
np.testing.assert_allclose(sharded, single, rtol=2e-4, atol=2e-5)
np.testing.assert_allclose(acc8, acc1, atol=1 / 64 + 1e-6)
print("DATA_PARALLEL_OK")
sys.exit(0)
