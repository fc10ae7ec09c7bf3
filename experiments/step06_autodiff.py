"""Step 6 — automatic differentiation and neural networks with ``jax.grad`` (book step 6).

Four small programs from the book, with JAX in place of PyTorch's autograd:

1. the gradient of y = 3x² at x = 5 (dy/dx = 6x = 30);
2. gradient descent on the Rosenbrock function y = 100 (x1 − x0²)² + (x0 − 1)² from (0, 2), lr 0.001,
   10,000 steps in ``lax.scan`` (the book ends at (0.99448, 0.98896); the minimum is (1, 1)); the
   positions every 1,000 steps are ``rosenbrock_every_1000``; notebook 06 prints them from a loop whose
   first update counts the gradient twice (:func:`book_loop_descent`, ``rosenbrock_book_loop_every_1000``);
3. linear regression y = Wx + b on y = 5 + 2x + U(0, 1) noise by gradient descent on the mean squared
   error (lr 0.1, 100 steps), next to the closed-form least-squares fit;
4. an MLP 1-10-1 with a sigmoid hidden layer fitting y = sin(2πx) + U(0, 1) noise (full-batch SGD via
   optax, lr 0.2, 10,000 steps; the book's loss ends near 0.08).

And ``vision.py``: the image dataset's size, first image (``vision_first_image.png``), its label and
shape and one batch's shape (``vision_*``; the embedded ``mnist-5k``, where the book downloads MNIST).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import nn, training
from experiments import _book, _quick
from experiments._cli import check_config, cli
from experiments._outputs import StepOutput
from experiments._plots import plt

ROSENBROCK_START = (0.0, 2.0)
QUICK = _quick.QUICK["step06_autodiff"]
ACTIVATIONS_MAX = 100_000_000  # num_points × mlp_hidden hidden activations (and their gradients)
STATIC = (  # run_all's settings, all static: one compilation per combination
    "rosenbrock_lr",
    "rosenbrock_iters",
    "linreg_lr",
    "linreg_iters",
    "mlp_lr",
    "mlp_iters",
    "mlp_hidden",
    "num_points",
)


@dataclass(frozen=True)
class Config:
    out: str = "outputs/step06_autodiff"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    rosenbrock_lr: float = 0.001
    rosenbrock_iters: int = 10_000
    linreg_lr: float = 0.1
    linreg_iters: int = 100
    mlp_lr: float = 0.2
    mlp_iters: int = 10_000
    mlp_hidden: int = 10
    num_points: int = 100

    SUMMARY = ("grad_3x2_at_5", "rosenbrock_final", "linreg_W", "linreg_b", "mlp_final_loss")
    HELP = {
        "rosenbrock_lr": "gradient-descent step size on the Rosenbrock function",
        "rosenbrock_iters": "gradient-descent steps on the Rosenbrock function (book: 10,000)",
        "linreg_lr": "learning rate of the linear regression",
        "linreg_iters": "gradient-descent steps of the linear regression (book: 100)",
        "mlp_lr": "SGD learning rate of the MLP",
        "mlp_iters": "full-batch SGD steps of the MLP (book: 10,000)",
        "mlp_hidden": "hidden units of the 1-H-1 sigmoid MLP",
        "num_points": "points in the regression data sets (x ~ U(0, 1))",
    }
    LIMITS = {
        "rosenbrock_iters": (10_000_000, "the whole descent path is kept for the figure"),
        "linreg_iters": (10_000_000, "the whole descent path is kept for the loss curve"),
        "mlp_iters": (10_000_000, "every step's loss is kept for the loss curve"),
        "mlp_hidden": (100_000, "the hidden layer's activations are held for every point"),
        "num_points": (1_000_000, "the data sets are held in memory and drawn as scatter plots"),
    }


# ------------------------------------------------------------------------------ the four programs


def square_times_three(x):
    """y = 3x²."""
    return 3.0 * x**2


def rosenbrock(p):
    """y = 100 (x1 − x0²)² + (x0 − 1)² for p = (x0, x1); minimum 0 at (1, 1)."""
    x0, x1 = p[..., 0], p[..., 1]
    return 100.0 * (x1 - x0**2) ** 2 + (x0 - 1.0) ** 2


def gradient_descent(f, p0, *, lr: float, iters: int):
    """p ← p − lr ∇f(p), ``iters`` times; returns the path of shape ``(iters + 1, *p0.shape)``."""
    grad = jax.grad(f)

    def step(p, _):
        p_next = jax.tree.map(lambda a, g: a - lr * g, p, grad(p))
        return p_next, p_next

    _, path = jax.lax.scan(step, p0, length=iters)
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), p0, path)


def book_loop_descent(f, p0, *, lr: float, iters: int):
    """Gradient descent as the book's notebook 06 runs it: its cell prints ∇f(p0) before the loop and
    never zeroes it, so PyTorch accumulates it into the first update, p1 = p0 − lr · 2∇f(p0); the other
    ``iters − 1`` updates are plain. Returns the path ``(iters + 1, *p0.shape)`` like
    :func:`gradient_descent`, whose positions the notebook prints every 1,000 steps."""
    p1 = jax.tree.map(lambda a, g: a - lr * (g + g), p0, jax.grad(f)(p0))
    path = gradient_descent(f, p1, lr=lr, iters=iters - 1)
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), p0, path)


def linreg_loss(params, x, y):
    """Mean squared error of y ≈ x W + b."""
    return jnp.mean((nn.dense(x, params["W"], params["b"]) - y) ** 2)


def init_mlp(key, *, hidden: int):
    """PyTorch's ``nn.Linear`` default init (the book's): weights and biases ~ U(−1/√fan_in, 1/√fan_in)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    lim2 = 1.0 / np.sqrt(hidden)
    return {
        "l1": {"w": jax.random.uniform(k1, (1, hidden), minval=-1.0, maxval=1.0),
               "b": jax.random.uniform(k2, (hidden,), minval=-1.0, maxval=1.0)},
        "l2": {"w": jax.random.uniform(k3, (hidden, 1), minval=-lim2, maxval=lim2),
               "b": jax.random.uniform(k4, (1,), minval=-lim2, maxval=lim2)},
    }  # fmt: skip


def mlp(params, x):
    """1-H-1 network: Linear → sigmoid → Linear."""
    h = jax.nn.sigmoid(nn.dense(x, params["l1"]["w"], params["l1"]["b"]))
    return nn.dense(h, params["l2"]["w"], params["l2"]["b"])


def mlp_loss(params, x, y):
    return jnp.mean((mlp(params, x) - y) ** 2)


def fit_sgd(loss_fn, params, x, y, *, lr: float, iters: int):
    """Full-batch ``optax.sgd(lr)`` for ``iters`` steps; returns (params, loss history).

    Each update is the project's one optimizer step (``dlx_jax.training.make_train_step``); the
    ``iters`` updates on the same full batch run inside this step's single compiled function as a
    ``lax.scan`` (the book's 10,000 iterations, not epochs over mini-batches: no shuffling, no
    checkpoints, so ``training.fit`` has nothing to add here).
    """
    optimizer = optax.sgd(lr)
    step = training.make_train_step(lambda key, p, batch: loss_fn(p, *batch), optimizer)
    key = jax.random.key(0)  # unused: the loss is deterministic

    def body(state, _):
        state, metrics = step(key, state, (x, y))
        return state, metrics["loss"]

    state, losses = jax.lax.scan(body, training.init_state(params, optimizer), length=iters)
    return state.params, losses


# ------------------------------------------------------------------------------ main


def _check(config: Config) -> None:
    check_config(config)
    for name in ("rosenbrock_iters", "linreg_iters", "mlp_iters", "mlp_hidden"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    for name in ("rosenbrock_lr", "linreg_lr", "mlp_lr"):
        value = getattr(config, name)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if config.num_points < 2:
        raise ValueError(f"--num-points must be >= 2 to fit a line, got {config.num_points}")
    if config.num_points * config.mlp_hidden > ACTIVATIONS_MAX:
        raise ValueError(
            f"--num-points {config.num_points} with --mlp-hidden {config.mlp_hidden} needs "
            f"{config.num_points * config.mlp_hidden:,} hidden activations, more than {ACTIVATIONS_MAX:,}; "
            "pass fewer --num-points or a smaller --mlp-hidden"
        )


def run_all(
    key,
    *,
    rosenbrock_lr: float,
    rosenbrock_iters: int,
    linreg_lr: float,
    linreg_iters: int,
    mlp_lr: float,
    mlp_iters: int,
    mlp_hidden: int,
    num_points: int,
) -> dict:
    """The four programs as one function (jit it once: one compilation instead of dozens)."""
    n = num_points
    key_lin_x, key_lin_noise, key_mlp_x, key_mlp_noise, key_mlp_init = jax.random.split(key, 5)
    res = {}

    # 1. dy/dx of y = 3x² at x = 5
    res["grad_3x2_at_5"] = jax.grad(square_times_three)(jnp.float32(5.0))

    # 2. Rosenbrock
    p0 = jnp.array(ROSENBROCK_START, dtype=jnp.float32)
    res["rosenbrock_grad_at_start"] = jax.grad(rosenbrock)(p0)
    res["rosenbrock_path"] = gradient_descent(rosenbrock, p0, lr=rosenbrock_lr, iters=rosenbrock_iters)
    res["rosenbrock_book_loop"] = book_loop_descent(rosenbrock, p0, lr=rosenbrock_lr, iters=rosenbrock_iters)[
        ::1000
    ]

    # 3. linear regression y = 5 + 2x + U(0, 1), from W = 0, b = 0
    x_lin = jax.random.uniform(key_lin_x, (n, 1))
    y_lin = 5.0 + 2.0 * x_lin + jax.random.uniform(key_lin_noise, (n, 1))
    lin0 = {"W": jnp.zeros((1, 1)), "b": jnp.zeros((1,))}
    lin_path = gradient_descent(
        lambda p: linreg_loss(p, x_lin, y_lin), lin0, lr=linreg_lr, iters=linreg_iters
    )
    res.update(x_lin=x_lin, y_lin=y_lin, lin=jax.tree.map(lambda a: a[-1], lin_path))
    res["lin_losses"] = jax.vmap(linreg_loss, in_axes=(0, None, None))(lin_path, x_lin, y_lin)

    # 4. MLP on sin(2πx) + U(0, 1)
    x_mlp = jax.random.uniform(key_mlp_x, (n, 1))
    y_mlp = jnp.sin(2 * jnp.pi * x_mlp) + jax.random.uniform(key_mlp_noise, (n, 1))
    params0 = init_mlp(key_mlp_init, hidden=mlp_hidden)
    params, mlp_losses = fit_sgd(mlp_loss, params0, x_mlp, y_mlp, lr=mlp_lr, iters=mlp_iters)
    grid = jnp.linspace(0.0, 1.0, 200)[:, None]
    res.update(
        x_mlp=x_mlp,
        y_mlp=y_mlp,
        mlp_losses=mlp_losses,
        mlp_final_loss=mlp_loss(params, x_mlp, y_mlp),
        mlp_grid=grid[:, 0],
        mlp_pred=mlp(params, grid)[:, 0],
    )
    return res


def _compute(config: Config) -> dict:
    """The four programs in one compiled call, as numpy arrays, and the least-squares line."""
    # Quick mode keeps the book's iteration counts (10,000 scan steps of a 100-point problem take
    # milliseconds; compilation dominates) and only coarsens the figures.
    run = jax.jit(run_all, static_argnames=STATIC)
    res = jax.tree.map(
        np.asarray, run(jax.random.key(config.seed), **{k: getattr(config, k) for k in STATIC})
    )
    x_lin, y_lin = res["x_lin"][:, 0].astype(np.float64), res["y_lin"][:, 0].astype(np.float64)
    design = np.stack([x_lin, np.ones_like(x_lin)], axis=1)
    (w_ls, b_ls), *_ = np.linalg.lstsq(design, y_lin, rcond=None)
    res.update(x_lin64=x_lin, y_lin64=y_lin, lstsq=(w_ls, b_ls))
    res["fit"] = (float(res["lin"]["W"][0, 0]), float(res["lin"]["b"][0]))
    return res


def _metrics(config: Config, res: dict) -> dict:
    final = res["rosenbrock_path"][-1]
    lin_losses, mlp_losses = res["lin_losses"], res["mlp_losses"]
    (w, b), (w_ls, b_ls) = res["fit"], res["lstsq"]
    every = max(1, config.mlp_iters // 10)
    return {
        "grad_3x2_at_5": float(res["grad_3x2_at_5"]),
        "rosenbrock_grad_at_start": res["rosenbrock_grad_at_start"],
        "rosenbrock_final": final,
        "rosenbrock_final_value": float(rosenbrock(final.astype(np.float64))),
        "rosenbrock_book_final": [0.99448, 0.98896],
        "rosenbrock_every_1000": res["rosenbrock_path"][::1000],
        "rosenbrock_book_every_1000": _book.PRINTED["step06_rosenbrock_every_1000"],
        "rosenbrock_book_loop_every_1000": res["rosenbrock_book_loop"],
        "rosenbrock_iters": config.rosenbrock_iters,
        "linreg_W": w,
        "linreg_b": b,
        "linreg_final_loss": float(lin_losses[-1]),
        "linreg_W_lstsq": float(w_ls),
        "linreg_b_lstsq": float(b_ls),
        "linreg_loss_history": lin_losses,
        "mlp_final_loss": float(res["mlp_final_loss"]),
        "mlp_iters": config.mlp_iters,
        "mlp_loss_every": every,
        "mlp_loss_history": mlp_losses[::every],
    }


def main(config: Config) -> dict:
    _check(config)
    res = _compute(config)
    vision, first_image = _book.vision_values()
    metrics = {**_metrics(config, res), **vision}
    with StepOutput(config) as out:
        if out.plots:
            _plot_first_image(out, first_image, vision)
            _plot_rosenbrock(out, res["rosenbrock_path"], config)
            _plot_linreg(out, res["x_lin64"], res["y_lin64"], res["fit"], res["lstsq"], res["lin_losses"])
            _plot_mlp(out, res, res["mlp_losses"])
        return out.finish(metrics)


# ------------------------------------------------------------------------------ figures


def _plot_first_image(out, image: np.ndarray, vision: dict) -> None:
    """``vision.py``'s ``plt.imshow(x, cmap='gray')`` of the dataset's first training image."""
    fig, ax = plt.subplots(figsize=(3.5, 3.5))
    ax.imshow(image, cmap="gray")
    ax.set_title(f"{vision['vision_dataset']}[0]: label {vision['vision_first_label']}")
    out.figure(fig, "vision_first_image")


def _plot_rosenbrock(out, path: np.ndarray, config: Config) -> None:
    res = QUICK["contour_grid"] if config.quick else 400
    g0, g1 = np.meshgrid(np.linspace(-2.0, 2.0, res), np.linspace(-1.0, 3.0, res))
    z = 100.0 * (g1 - g0**2) ** 2 + (g0 - 1.0) ** 2
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cs = ax.contour(g0, g1, np.log10(z + 1e-3), levels=np.linspace(-1.0, 3.5, 19), cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10 f(x0, x1)")
    ax.plot(
        path[:, 0],
        path[:, 1],
        "r.-",
        ms=2,
        lw=0.8,
        markevery=max(1, len(path) // 100),
        label=f"gradient descent, lr {config.rosenbrock_lr}, {len(path) - 1} steps",
    )
    ax.plot(*path[0], "ko", label=f"start {tuple(float(v) for v in path[0])}")
    ax.plot(1.0, 1.0, "r*", ms=14, label="minimum (1, 1)")
    ax.plot(*path[-1], "bs", ms=6, label=f"end ({path[-1, 0]:.5f}, {path[-1, 1]:.5f})")
    ax.set(title="Rosenbrock function: gradient descent with jax.grad", xlabel="x0", ylabel="x1")
    ax.legend(loc="upper left", fontsize=8)
    out.figure(fig, "rosenbrock_path")


def _plot_linreg(out, x, y, fit, lstsq, losses) -> None:
    (w, b), (w_ls, b_ls) = fit, lstsq
    grid = np.linspace(0, 1, 50)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax.scatter(x, y, s=12, alpha=0.7, label="data: y = 5 + 2x + U(0, 1)")
    ax.plot(grid, w * grid + b, "r", label=f"gradient descent: y = {w:.3f}x + {b:.3f}")
    ax.plot(
        grid,
        w_ls * grid + b_ls,
        "k--",
        lw=1,
        label=f"least squares: y = {w_ls:.3f}x + {b_ls:.3f}",
    )
    ax.set(title="Linear regression", xlabel="x", ylabel="y")
    ax.legend(fontsize=8)
    ax2.plot(losses)
    ax2.set(
        title="Mean squared error during gradient descent", xlabel="iteration", ylabel="loss", yscale="log"
    )
    out.figure(fig, "linear_regression")


def _plot_mlp(out, res, losses) -> None:
    grid, pred = res["mlp_grid"], res["mlp_pred"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax.scatter(res["x_mlp"][:, 0], res["y_mlp"][:, 0], s=12, alpha=0.7, label="data: sin(2πx) + U(0, 1)")
    ax.plot(grid, pred, "r", label="MLP 1-10-1 (sigmoid)")
    ax.plot(grid, np.sin(2 * np.pi * grid) + 0.5, "k--", lw=1, label="sin(2πx) + 0.5 (noise mean)")
    ax.set(title="Neural network regression", xlabel="x", ylabel="y")
    ax.legend(fontsize=8)
    ax2.plot(losses)
    ax2.set(
        title="Training loss (full-batch SGD)", xlabel="iteration", ylabel="mean squared error", yscale="log"
    )
    out.figure(fig, "mlp_fit")


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
