"""Shared test set-up: CPU only, quiet logs, deterministic hypothesis profile."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the session and its subprocesses: the trainer tests
# build the same programs several times (train, resume, eval, export), and compiling dominates
# their run time on CPU.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _CACHE = tempfile.mkdtemp(prefix="tern_jax_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE

    def pytest_sessionfinish(session, exitstatus):
        import shutil

        shutil.rmtree(_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# XLA:CPU compiles without LLVM's optimizations and with its older elementwise emitters instead
# of the fusion emitters: together about a third of the compile time, which dominates the
# trainer tests (their tiny programs compile far longer than they run; convolutions and
# matmuls are library calls either way). Subprocesses inherit the flags: helpers add theirs.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("ci")
