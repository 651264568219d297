"""A small training run for the kill-and-resume test: python killable_run.py WORKDIR [--resume]."""

import dataclasses
import sys

from tern_jax.train import quickstart_config, train_and_evaluate

config = dataclasses.replace(quickstart_config(), train_subset=512, test_subset=128, epochs=5,
                             checkpoint_every=1, progress=False)
train_and_evaluate(config, sys.argv[1], resume="--resume" in sys.argv)
