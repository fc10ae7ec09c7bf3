"""Shared pytest fixtures. Tests run on CPU with float32 by default; use the ``x64`` fixture
for float64 checks (it scopes ``jax.enable_x64`` to one test)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")
# Many tests compile the same programs (the quick UNet, the CNN epoch, the samplers) in new closures;
# XLA's persistent compilation cache, fresh for each test process and removed at its exit (the
# steps' subprocesses inherit it), compiles each once. A cached executable is the one a fresh
# compilation gives, so the numbers are the same; only compile time is saved.
_XLA_CACHE = tempfile.mkdtemp(prefix="dlx-jax-tests-xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Enable float64 in JAX for the duration of one test."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def key():
    """A fixed PRNG key; tests split it, never reuse it."""
    return jax.random.key(0)
