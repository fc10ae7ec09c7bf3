"""experiments.step06_autodiff: the book's numbers, its helpers vs closed forms, outputs and bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _book, step06_autodiff
from tests.helpers import ATOL_BOOK_ROSENBROCK_F32, ATOL_F32, RTOL_F32

# The book's printed Rosenbrock end point has 5 decimals; float32 descent over 10,000 steps
# lands within a few 1e-5 of it.
TOL_BOOK_ROSENBROCK = 1e-4
# 10,000 float32 gradient-descent steps on a least-squares problem accumulate rounding ~1e-5 relative.
TOL_GD_CONVERGED = 1e-4


def test_quick_run_matches_the_book(tmp_path):
    m = step06_autodiff.main(replace(step06_autodiff.Config(), out=str(tmp_path), quick=True))
    assert m["grad_3x2_at_5"] == 30.0
    np.testing.assert_array_equal(m["rosenbrock_grad_at_start"], [-2.0, 400.0])  # (-2(1-x0) ..., 200(x1-x0²))
    np.testing.assert_allclose(m["rosenbrock_final"], [0.99448, 0.98896], atol=TOL_BOOK_ROSENBROCK)
    assert m["rosenbrock_iters"] == 10_000
    # notebook 06 prints (x0, x1) every 1,000 steps from a loop that counts the gradient it printed
    # before the loop into the first update: book_loop_descent reproduces it
    book = np.array(_book.PRINTED["step06_rosenbrock_every_1000"])
    np.testing.assert_allclose(
        m["rosenbrock_book_loop_every_1000"], book, atol=ATOL_BOOK_ROSENBROCK_F32, rtol=0
    )
    plain = np.array(m["rosenbrock_every_1000"])  # plain descent: x1 = 1.6 after one step, not 1.2
    assert plain.shape == (11, 2) and np.abs(plain[1] - book[1]).max() > 1e-3
    np.testing.assert_allclose(plain[-1], book[-1], atol=TOL_BOOK_ROSENBROCK)
    # vision.py on the embedded mnist-5k (sorted by class; the book downloads MNIST: 60000, label 5)
    assert m["vision_image_shape"] == list(_book.PRINTED["step06_vision_shape"][1:])  # HW (book: CHW)
    assert m["vision_batch_shape"] == [32, 28, 28, 1]  # the book's (32, 1, 28, 28), channels last
    assert (m["vision_size"], m["vision_first_label"]) == (4000, 0)
    # linear regression: 100 steps get close to, but not onto, the least-squares line
    assert abs(m["linreg_W"] - 2.0) < 0.5 and abs(m["linreg_b"] - 5.5) < 0.3
    assert abs(m["linreg_W_lstsq"] - 2.0) < 0.3 and abs(m["linreg_b_lstsq"] - 5.5) < 0.2
    hist = m["linreg_loss_history"]
    assert len(hist) == 101 and hist[0] > 10 * hist[-1]
    assert m["linreg_final_loss"] == pytest.approx(hist[-1], rel=RTOL_F32)
    assert 1 / 12 * 0.8 < m["linreg_final_loss"] < 0.15  # noise variance of U(0, 1) is 1/12
    # MLP: the book's loss ends near 0.08 (the variance of the U(0,1) noise is 0.083)
    assert 0.06 < m["mlp_final_loss"] < 0.1
    assert m["mlp_iters"] == 10_000 and m["mlp_loss_history"][0] > m["mlp_final_loss"]
    files = sorted(p.name for p in tmp_path.iterdir() if p.name != ".outputs.json")  # the outputs manifest
    assert files == [
        "config.json",
        "linear_regression.png",
        "metrics.json",
        "mlp_fit.png",
        "rosenbrock_path.png",
        "vision_first_image.png",
    ]
    assert json.loads((tmp_path / "metrics.json").read_text())["grad_3x2_at_5"] == 30.0


def test_seed_changes_data_not_rosenbrock(tmp_path):
    small = replace(step06_autodiff.Config(), quick=True, plots=False, rosenbrock_iters=50, mlp_iters=50)
    base = step06_autodiff.main(replace(small, out=str(tmp_path / "a")))
    other = step06_autodiff.main(replace(small, out=str(tmp_path / "b"), seed=1))
    assert base["rosenbrock_final"] == other["rosenbrock_final"]
    assert base["linreg_W_lstsq"] != other["linreg_W_lstsq"]
    assert not list((tmp_path / "a").glob("*.png"))  # --no-plots


def test_gradient_descent_converges_to_least_squares():
    key_x, key_n = jax.random.split(jax.random.key(3))
    x = jax.random.uniform(key_x, (50, 1))
    y = 5.0 + 2.0 * x + jax.random.uniform(key_n, (50, 1))
    p0 = {"W": jnp.zeros((1, 1)), "b": jnp.zeros((1,))}
    path = jax.jit(step06_autodiff.gradient_descent, static_argnames=("f", "lr", "iters"))(
        lambda p: step06_autodiff.linreg_loss(p, x, y), p0, lr=0.5, iters=3000
    )
    assert path["W"].shape == (3001, 1, 1)
    np.testing.assert_array_equal(path["W"][0], p0["W"])  # the path starts at p0
    design = np.hstack([np.asarray(x, np.float64), np.ones((50, 1))])
    (w, b), *_ = np.linalg.lstsq(design, np.asarray(y, np.float64)[:, 0], rcond=None)
    np.testing.assert_allclose([path["W"][-1, 0, 0], path["b"][-1, 0]], [w, b], rtol=TOL_GD_CONVERGED)


def test_one_descent_step_and_rosenbrock_gradient_closed_form():
    p = jnp.array([0.3, -0.7])
    x0, x1 = 0.3, -0.7
    exact = [-400 * x0 * (x1 - x0**2) - 2 * (1 - x0), 200 * (x1 - x0**2)]
    np.testing.assert_allclose(jax.grad(step06_autodiff.rosenbrock)(p), exact, rtol=RTOL_F32, atol=ATOL_F32)
    path = step06_autodiff.gradient_descent(step06_autodiff.rosenbrock, p, lr=0.01, iters=1)
    np.testing.assert_allclose(
        path[1], np.asarray(p) - 0.01 * np.asarray(exact), rtol=RTOL_F32, atol=ATOL_F32
    )


def test_mlp_init_matches_torch_default_ranges(key):
    params = step06_autodiff.init_mlp(key, hidden=10)
    assert params["l1"]["w"].shape == (1, 10) and params["l2"]["w"].shape == (10, 1)
    assert float(jnp.abs(params["l1"]["w"]).max()) <= 1.0
    assert float(jnp.abs(params["l2"]["w"]).max()) <= 1 / np.sqrt(10)
    assert step06_autodiff.mlp(params, jnp.zeros((4, 1))).shape == (4, 1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"rosenbrock_iters": 0}, "--rosenbrock-iters must be >= 1"),
        ({"mlp_lr": -0.1}, "--mlp-lr must be a positive number"),
        ({"linreg_lr": float("nan")}, "--linreg-lr must be a finite number"),
        ({"num_points": 1}, "--num-points must be >= 2"),
    ],
)
def test_bad_config_raises_before_any_output(tmp_path, change, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        step06_autodiff.main(replace(step06_autodiff.Config(), out=str(out), quick=True, **change))
    assert not out.exists() and not list(tmp_path.iterdir())
