"""``python -m tern_jax``: the command line (see tern_jax.cli)."""

import sys

from tern_jax.cli import main

sys.exit(main())
