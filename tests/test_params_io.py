"""dlx_jax.params_io: parameter folders round-trip exactly, are never half-written, refuse another
model's parameters; training re-exports the same functions; model code reads parameters without
importing the training loop."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx_jax import params_io, training


def _leaves_equal(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_params_round_trip_through_the_one_orbax_api(tmp_path):
    params = {"conv": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}, "n": jnp.int32(4)}
    params_io.save_params(tmp_path / "p", params)
    _leaves_equal(params_io.load_params(tmp_path / "p", params), params)
    with pytest.raises(ValueError, match="already exists"):
        params_io.save_params(tmp_path / "p", params)
    params_io.save_params(tmp_path / "p", jax.tree_util.tree_map(lambda a: a * 2, params), overwrite=True)
    assert float(params_io.load_params(tmp_path / "p", params)["conv"]["b"][0]) == 2.0
    with pytest.raises(ValueError, match="another model|do not match"):
        params_io.load_params(tmp_path / "p", {"conv": {"w": jnp.zeros((3, 3)), "b": jnp.ones(3)},
                                               "n": jnp.int32(0)})  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no parameters"):
        params_io.load_params(tmp_path / "missing", params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary folder left beside it


def test_training_re_exports_the_same_functions():
    assert training.save_params is params_io.save_params
    assert training.load_params is params_io.load_params


def test_model_code_reads_parameters_without_importing_the_training_loop():
    code = "import sys, dlx_jax.cnn; print(sorted(m for m in sys.modules if m.startswith('dlx_jax')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "dlx_jax.params_io" in loaded and "dlx_jax.training" not in loaded
